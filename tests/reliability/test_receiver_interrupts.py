"""Receivers of pool and connection signals that raise ``KeyboardInterrupt``,
``SystemExit`` or another ``BaseException``: no connection leaks, the
interrupt still stops the request, and the next request works.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from test_signals import NOT_ON_SQLITE, TRIGGERS

from flask_sessionext import SessionExt, signals
from flask_sessionext.signals import CATALOG

from helpers import checked_out, open_sessions
from models import User


class Halt(BaseException):
    """A ``BaseException`` of the user's own, as ``gevent.Timeout`` is."""


#: Every pool, connection and dialect signal.
NAMES = [name for name, entry in CATALOG.items() if entry.target != "session"]
#: Events that fire only on a new pool: the view disposes of the old one first.
NEW_POOL = {"connect", "first_connect", "do_connect"}
INTERRUPTS = [KeyboardInterrupt, SystemExit, Halt]


def test_every_pool_and_connection_signal_is_covered() -> None:
    """The table covers the 10 pool, 18 connection and 2 dialect signals."""
    assert len(NAMES) == 30
    assert set(NAMES) <= set(TRIGGERS)


@pytest.mark.parametrize("interrupt", INTERRUPTS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("name", NAMES)
def test_interrupt_in_receiver_leaks_no_connection(
    app: Flask,
    db: SessionExt,
    database: str,
    name: str,
    interrupt: type[BaseException],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A receiver raising an interrupt stops its request with that interrupt,
    leaves no connection checked out and no session open, is logged by name
    when the signal reports (the others propagate it as a veto), and the next
    request through ``db.session`` works.
    """
    if database == "sqlite" and name in NOT_ON_SQLITE:
        pytest.skip(NOT_ON_SQLITE[name])
    app.config.update(TESTING=False, SESSIONEXT_RAISE_RECEIVER_ERRORS=False)
    raised: list[str] = []

    def interrupt_once(sender: Flask, **kwargs: t.Any) -> None:
        if not raised:
            raised.append(name)
            raise interrupt("stop right there")

    @app.post("/trigger")
    def trigger() -> str:
        if name in NEW_POOL:
            db.engine.dispose()
        TRIGGERS[name](db)
        return "done"

    @app.post("/users/<user>")
    def add(user: str) -> list[str]:
        db.session.add(User(name=user))
        db.session.commit()
        return list(db.session.scalars(sa.select(User.name).order_by(User.id)))

    engines = app.extensions["sessionext"].engines
    client = app.test_client()
    signal = CATALOG[name].signal
    with caplog.at_level(logging.ERROR), signal.connected_to(interrupt_once, app):
        with pytest.raises(interrupt, match="stop right there"):
            client.post("/trigger")
        assert raised == [name]
        assert {key: checked_out(engine) for key, engine in engines.items()} == {
            key: 0 for key in engines
        }
        assert open_sessions(app, db) == 0
        response = client.post("/users/ada")
    assert response.status_code == 200
    assert response.json is not None
    assert response.json[-1] == "ada"
    assert {key: checked_out(engine) for key, engine in engines.items()} == {
        key: 0 for key in engines
    }
    logged = any(
        "interrupt_once" in record.getMessage() and record.exc_info
        for record in caplog.records
    )
    assert logged is not CATALOG[name].propagates
    gc.collect()  # a DBAPI connection left open warns here, failing this test


@pytest.mark.parametrize("interrupt", INTERRUPTS, ids=lambda e: e.__name__)
@pytest.mark.parametrize(
    "name", ["checkin", "reset", "after_commit", "models_committed", "on_commit"]
)
def test_interrupt_during_a_commit_is_raised_after_it(
    app: Flask,
    db: SessionExt,
    name: str,
    interrupt: type[BaseException],
) -> None:
    """An interrupt raised by a receiver (or an ``on_commit`` callback) while
    ``db.session.commit()`` runs comes out of ``commit()`` once it has
    completed: the row is stored, no connection is checked out, and the next
    request works.
    """
    app.config.update(TESTING=False, SESSIONEXT_RAISE_RECEIVER_ERRORS=False)
    engine = app.extensions["sessionext"].engines[None]
    raised: list[str] = []
    state: dict[str, int] = {}

    def interrupt_once(*args: t.Any, **kwargs: t.Any) -> None:
        if not raised:
            raised.append(name)
            raise interrupt("stop right there")

    @app.post("/users/<user>")
    def add(user: str) -> list[str]:
        db.session.add(User(name=user))
        if name == "on_commit":
            db.on_commit(interrupt_once)
        try:
            db.session.commit()
        except interrupt:
            state["checked out after commit"] = checked_out(engine)
            raise
        return list(db.session.scalars(sa.select(User.name).order_by(User.id)))

    client = app.test_client()
    connected = (
        contextlib.nullcontext()
        if name == "on_commit"
        else signals.namespace[name].connected_to(interrupt_once, app)
    )
    with connected:
        with pytest.raises(interrupt, match="stop right there"):
            client.post("/users/ada")
        response = client.post("/users/lin")
    assert raised == [name]
    assert state == {"checked out after commit": 0}
    assert checked_out(engine) == 0
    assert open_sessions(app, db) == 0
    assert response.status_code == 200
    assert response.json == ["ada", "lin"]
