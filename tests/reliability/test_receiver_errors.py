"""Receivers that raise in every "after" signal, and a view that raises
after flushing: each error is logged, or raised after the session operation
with SESSIONEXT_RAISE_RECEIVER_ERRORS, and the session stays usable, request
after request on one thread.
"""

from __future__ import annotations

import logging
import threading
import typing as t
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import sqlalchemy as sa
from blinker import NamedSignal
from flask import Flask

from flask_sessionext import SessionExt, signals
from flask_sessionext.signals import CATALOG

from helpers import checked_out, open_sessions
from models import User

#: Every signal that reports what already happened: a receiver's exception
#: is logged (and raised after the session operation, when the app says so).
AFTER_SIGNALS: list[NamedSignal] = [
    *(entry.signal for entry in CATALOG.values() if not entry.propagates),
    signals.models_committed,
    signals.session_created,
    signals.session_removed,
]
#: Signals that a request cycle surely sends, so the test cannot pass vacuously.
SURELY_SENT = {
    "after_begin",
    "after_flush",
    "after_commit",
    "rollback",
    "after_cursor_execute",
    "checkin",
    "models_committed",
    "session_created",
    "session_removed",
}


class ReceiverFailed(Exception):
    """What the failing receivers raise."""


def _fail(sender: Flask, **kwargs: t.Any) -> None:
    raise ReceiverFailed("receiver failed")


@contextmanager
def failing_receivers(app: Flask) -> Iterator[Counter[str]]:
    """Connect, for ``app``, a receiver that raises to every "after" signal,
    then one that counts the sends; yields the counts by signal name.
    """
    sent: Counter[str] = Counter()

    def counter(name: str) -> t.Callable[..., None]:
        def count(sender: Flask, **kwargs: t.Any) -> None:
            sent[name] += 1

        return count

    with ExitStack() as stack:
        for signal in AFTER_SIGNALS:
            stack.enter_context(signal.connected_to(_fail, sender=app))
            stack.enter_context(signal.connected_to(counter(signal.name), sender=app))
        yield sent


def add_views(app: Flask, db: SessionExt) -> None:
    """A view that commits, one that reads, one that raises after flushing;
    each says on which thread it ran.
    """

    @app.post("/users/<name>")
    def add(name: str) -> dict[str, t.Any]:
        with db.transaction() as session:
            session.add(User(name=name))
        return {"thread": threading.get_ident()}

    @app.get("/users")
    def names() -> dict[str, t.Any]:
        found = db.session.scalars(sa.select(User.name).order_by(User.id)).all()
        return {"thread": threading.get_ident(), "names": found}

    @app.post("/fail/<name>")
    def fail_after_flush(name: str) -> dict[str, t.Any]:
        db.session.add(User(name=name))
        db.session.flush()
        raise LookupError("the view failed after flushing")


def receiver_logs(caplog: pytest.LogCaptureFixture) -> Counter[str]:
    """How many receiver errors were logged, with their traceback, by signal."""
    logged: Counter[str] = Counter()
    for record in caplog.records:
        if record.getMessage().startswith("Receiver ") and record.exc_info:
            assert isinstance(record.exc_info[1], ReceiverFailed)
            logged[t.cast(str, record.args[1])] += 1  # type: ignore[index]
    return logged


def test_after_signal_errors_are_logged_and_requests_succeed(
    app: Flask, db: SessionExt, caplog: pytest.LogCaptureFixture
) -> None:
    """Without SESSIONEXT_RAISE_RECEIVER_ERRORS, receivers raising in every
    "after" signal change no response: each error is logged with its
    traceback, the other receivers run, and every request on the thread
    works, with no connection or session left behind.
    """
    app.config.update(TESTING=False, SESSIONEXT_RAISE_RECEIVER_ERRORS=False)
    add_views(app, db)
    client = app.test_client()
    with caplog.at_level(logging.ERROR), failing_receivers(app) as sent:
        responses = [
            client.post("/users/a"),
            client.get("/users"),
            client.post("/fail/b"),
            client.post("/users/c"),
            client.get("/users"),
        ]
    assert [r.status_code for r in responses] == [200, 200, 500, 200, 200]
    assert responses[-1].json == {"thread": threading.get_ident(), "names": ["a", "c"]}
    assert set(sent) >= SURELY_SENT
    assert receiver_logs(caplog) == sent
    assert checked_out(app.extensions["sessionext"].engines[None]) == 0
    assert open_sessions(app, db) == 0


def test_after_signal_errors_raised_after_the_operation(
    app: Flask, db: SessionExt, caplog: pytest.LogCaptureFixture
) -> None:
    """With SESSIONEXT_RAISE_RECEIVER_ERRORS, a receiver's error fails the
    request only once the session operation completed (a commit stands), a
    view that raised after flushing leaves nothing behind, and the next
    request on the thread works.
    """
    app.config.update(TESTING=False, SESSIONEXT_RAISE_RECEIVER_ERRORS=True)
    add_views(app, db)
    client = app.test_client()
    engine = app.extensions["sessionext"].engines[None]

    with signals.after_commit.connected_to(_fail, sender=app):
        assert client.post("/users/a").status_code == 500
    assert client.get("/users").json == {
        "thread": threading.get_ident(),
        "names": ["a"],
    }

    with failing_receivers(app), pytest.raises(ReceiverFailed, match="receiver failed"):
        client.post("/fail/b")
    assert checked_out(engine) == 0
    assert open_sessions(app, db) == 0
    assert client.post("/users/c").status_code == 200
    assert client.get("/users").json == {
        "thread": threading.get_ident(),
        "names": ["a", "c"],
    }
    assert checked_out(engine) == 0
    assert open_sessions(app, db) == 0
