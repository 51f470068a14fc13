"""``SESSIONEXT_BROADCAST`` in one process: its settings, what a commit
publishes to the outbox, ``models_committed_anywhere`` as the committing
process receives it, and the outbox commands.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import gc
import logging
import re
import sys
import threading
import time
import typing as t
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import FrameType

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import orm

from flask_sessionext import CommittedChange, SessionExt, signals
from flask_sessionext._config.settings import BroadcastSettings, read_settings
from flask_sessionext._features import outbox_listener
from flask_sessionext._features.broadcast import Broadcast
from flask_sessionext._features.outbox import outbox_table, utcnow
from flask_sessionext._features.outbox_listener import OutboxListener
from flask_sessionext._features.outbox_payload import decode, encode, typed_key
from flask_sessionext.signals import before_models_committed, models_committed_anywhere

from models import Base, Item, OtherBase, User

#: The types of the locks of ``threading``.
LOCKS = (type(threading.Lock()), type(threading.RLock()))
#: What a receiver of ``models_committed_anywhere`` got: sequence, local, changes.
Received = tuple[int, bool, list[CommittedChange]]


def make_app(tmp_path: Path, **config: t.Any) -> Flask:
    """A Flask app with an instance folder under ``tmp_path``."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(config)
    return app


def broadcast_settings(
    tmp_path: Path, value: object, **config: t.Any
) -> BroadcastSettings | None:
    """The broadcast settings that ``read_settings`` makes of ``value``."""
    app = make_app(tmp_path, SESSIONEXT_BROADCAST=value, **config)
    return read_settings(app, engine_options={}, session_options={}).broadcast


@pytest.fixture
def broadcast_app(app: Flask) -> Iterator[tuple[Flask, SessionExt]]:
    """The parametrized app with broadcast on, its tables and the outbox."""
    app.config["SESSIONEXT_BROADCAST"] = {"poll_interval": 0.02}
    db = SessionExt(app)
    engines = app.extensions["sessionext"].engines
    Base.metadata.create_all(engines[None])
    OtherBase.metadata.create_all(engines["other"])
    SessionExt.outbox_metadata.create_all(engines[None])
    yield app, db
    Base.metadata.drop_all(engines[None])
    OtherBase.metadata.drop_all(engines["other"])
    SessionExt.outbox_metadata.drop_all(engines[None])
    for engine in engines.values():
        engine.dispose()


def the_listener(app: Flask) -> OutboxListener:
    """The running listener of ``app``'s outbox, once it is up to date."""
    broadcast: Broadcast = app.extensions["sessionext"].feature(Broadcast)
    listener = broadcast.listener
    assert listener is not None
    assert listener.connected.wait(10), "the listener did not connect"
    return listener


@contextmanager
def receiving(app: Flask) -> Iterator[list[Received]]:
    """Collect what ``models_committed_anywhere`` sends to ``app``, once its
    listener is up to date.
    """
    received: list[Received] = []

    def receiver(
        sender: Flask, changes: list[CommittedChange], local: bool, sequence: int
    ) -> None:
        received.append((sequence, local, changes))

    with models_committed_anywhere.connected_to(receiver, app):
        the_listener(app)
        yield received


def outbox_rows(app: Flask) -> list[tuple[int, str]]:
    """The rows of ``app``'s outbox, read on a connection of their own."""
    with app.extensions["sessionext"].engines[None].connect() as conn:
        rows = conn.execute(
            sa.select(outbox_table.c.id, outbox_table.c.payload).order_by(
                outbox_table.c.id
            )
        ).all()
    return [(row.id, row.payload) for row in rows]


def wait_for(condition: t.Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# Settings


def test_off_by_default(tmp_path: Path) -> None:
    """Unset, None and False leave broadcast off; the app has no broadcast."""
    assert broadcast_settings(tmp_path, None) is None
    assert broadcast_settings(tmp_path, False) is None
    app = make_app(tmp_path, SESSIONEXT_DATABASE_URI="sqlite://")
    SessionExt(app)
    with pytest.raises(LookupError, match="no feature 'broadcast'"):
        app.extensions["sessionext"].feature(Broadcast)


def test_true_takes_the_defaults(tmp_path: Path) -> None:
    """True turns it on with the documented defaults."""
    assert broadcast_settings(tmp_path, True) == BroadcastSettings(
        channel="sessionext",
        models=None,
        tables=frozenset(),
        bind=None,
        poll_interval=1.0,
        keep=3600.0,
    )


def test_dict_settings(tmp_path: Path) -> None:
    """A dict sets the channel, the published models and tables, the bind,
    the poll interval and how long rows are kept.
    """
    settings = broadcast_settings(
        tmp_path,
        {
            "channel": "shop_1",
            "models": [User, "items"],
            "bind": "other",
            "poll_interval": 0.5,
            "keep": 60,
        },
        SESSIONEXT_BINDS={"other": f"sqlite:///{tmp_path / 'other.sqlite3'}"},
    )
    assert settings == BroadcastSettings(
        channel="shop_1",
        models=frozenset({User}),
        tables=frozenset({"items"}),
        bind="other",
        poll_interval=0.5,
        keep=60.0,
    )


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (
            "yes",
            TypeError,
            r"'SESSIONEXT_BROADCAST' must be True, False, None or a dict",
        ),
        (
            {"chanel": "x"},
            ValueError,
            r"unknown setting 'chanel'; the settings are 'channel'",
        ),
        (
            {"channel": 5},
            TypeError,
            r"'SESSIONEXT_BROADCAST\['channel'\]' must be a str, not int 5",
        ),
        (
            {"channel": "My Channel"},
            ValueError,
            r"lowercase letters, digits or underscores.*'My Channel'",
        ),
        ({"channel": "x" * 64}, ValueError, r"1 to 63 lowercase"),
        (
            {"models": User},
            TypeError,
            r"'SESSIONEXT_BROADCAST\['models'\]' must be None .* or a list",
        ),
        (
            {"models": [object]},
            TypeError,
            r"lists type .*; it takes mapped classes and table names",
        ),
        (
            {"bind": "nope"},
            ValueError,
            r"'SESSIONEXT_BROADCAST\['bind'\]' is 'nope', which is not a configured"
            r" bind; the binds are None",
        ),
        (
            {"poll_interval": 0},
            ValueError,
            r"'SESSIONEXT_BROADCAST\['poll_interval'\]' must be a number of seconds"
            r" greater than 0, not 0",
        ),
        (
            {"poll_interval": "1"},
            TypeError,
            r"poll_interval'\]' must be a number of seconds greater than 0, not '1'",
        ),
        (
            {"keep": -1},
            ValueError,
            r"'SESSIONEXT_BROADCAST\['keep'\]' must be a number of seconds of at"
            r" least 0, not -1",
        ),
    ],
)
def test_bad_settings(
    tmp_path: Path, value: object, error: type[Exception], match: str
) -> None:
    """A bad value fails in init_app, naming the key, the value and what is
    accepted.
    """
    app = make_app(
        tmp_path, SESSIONEXT_DATABASE_URI="sqlite://", SESSIONEXT_BROADCAST=value
    )
    with pytest.raises(error, match=match):
        SessionExt(app)
    assert "sessionext" not in app.extensions


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite+pysqlite:///:memory:",
        "sqlite:///file::memory:?cache=shared&uri=true",
        "sqlite:///file:shared_db?cache=shared&mode=memory&uri=true",
    ],
)
@pytest.mark.parametrize("bind", [None, "other"])
def test_in_memory_outbox_bind_refused(
    tmp_path: Path, url: str, bind: str | None
) -> None:
    """An in-memory SQLite outbox bind, however spelt, fails in init_app,
    naming the setting, the bind and the URL, and saying to use a file.
    """
    file = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI=url if bind is None else file,
        SESSIONEXT_BINDS={"other": url if bind else file},
        SESSIONEXT_BROADCAST={"bind": bind},
    )
    name = "the default bind" if bind is None else "bind 'other'"
    where = (
        "SESSIONEXT_DATABASE_URI" if bind is None else r"SESSIONEXT_BINDS\['other'\]"
    )
    with pytest.raises(
        ValueError,
        match=rf"^'SESSIONEXT_BROADCAST' cannot publish through {name} \('{where}'"
        rf" is '{re.escape(url)}'\): an in-memory SQLite database is one"
        r" process's.*Use a SQLite file such as 'sqlite:///app\.sqlite3'",
    ):
        SessionExt(app)
    assert "sessionext" not in app.extensions


def test_in_memory_bind_without_broadcast(tmp_path: Path) -> None:
    """An in-memory bind that is not the outbox bind is accepted with
    broadcast on.
    """
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI=f"sqlite:///{tmp_path / 'app.sqlite3'}",
        SESSIONEXT_BINDS={"other": "sqlite://"},
        SESSIONEXT_BROADCAST=True,
    )
    db = SessionExt(app)
    with app.app_context():
        assert db.get_engine("other").url.database is None
        db.get_engine("other").dispose()
        db.engine.dispose()


def test_no_listener_while_nobody_receives(tmp_path: Path) -> None:
    """With broadcast on and no receiver, the publishing listeners are
    installed but no listener thread runs; with broadcast off, neither.
    """
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    on = make_app(tmp_path, SESSIONEXT_DATABASE_URI=url, SESSIONEXT_BROADCAST=True)
    off = make_app(tmp_path, SESSIONEXT_DATABASE_URI=url)
    SessionExt(on)
    SessionExt(off)
    runtime_on = on.extensions["sessionext"]
    runtime_off = off.extensions["sessionext"]
    assert runtime_on.listeners.count(runtime_on.session_class) == 4
    assert runtime_off.listeners.count(runtime_off.session_class) == 0
    broadcast = runtime_on.feature(Broadcast)
    assert broadcast.listener is None
    assert not [
        thread
        for thread in threading.enumerate()
        if thread.name.startswith(f"sessionext-broadcast {url}")
    ]


def test_requests_start_no_listener_and_take_no_lock(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """With a receiver of ``models_committed_anywhere`` and its listener
    running, 100 requests and 100 app contexts run, of the broadcast, only
    its process id check, once per app context, and neither start a listener
    nor call a lock or any code of ``threading``.
    """
    app, _ = broadcast_app
    called: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            module = frame.f_globals.get("__name__", "")
            if module.startswith(("flask_sessionext", "threading")):
                called[f"{module}.{frame.f_code.co_name}"] += 1
        elif event == "c_call" and isinstance(getattr(arg, "__self__", None), LOCKS):
            caller = frame.f_globals.get("__name__", "")
            called[f"lock.{getattr(arg, '__name__', arg)} in {caller}"] += 1

    with receiving(app):
        listener = the_listener(app)
        client = app.test_client()
        # Apps and receivers that earlier tests left to the garbage
        # collector go first (their finalizers take their own locks), and a
        # first request's teardown sweeps what they left, once.
        gc.collect()
        client.get("/")
        gc.disable()
        sys.setprofile(profile)
        try:
            for _ in range(100):
                client.get("/")
                with app.app_context():
                    pass
        finally:
            sys.setprofile(None)
            gc.enable()
        assert app.extensions["sessionext"].feature(Broadcast).listener is listener
    assert called["flask_sessionext._features.broadcast._context_pushed"] == 200
    assert [name for name in called if "_features.broadcast" in name] == [
        "flask_sessionext._features.broadcast._context_pushed"
    ]
    assert not [
        name
        for name in called
        if "outbox_listener" in name
        or name.startswith("threading")
        or (name.startswith("lock.") and "flask_sessionext" in name)
        or name.endswith((".refresh", "._receive"))
    ], called


# Publishing and receiving


def test_changes_reach_the_committing_process(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """Each commit arrives once, in order, marked local, with the class, the
    table, the primary key, the operation and the changed columns.
    """
    app, db = broadcast_app
    with receiving(app) as received, app.app_context():
        user = User(name="ada")
        db.session.add(user)
        db.session.commit()
        user.name = "grace"
        user.active = False
        db.session.commit()
        db.session.delete(user)
        db.session.commit()
        wait_for(lambda: len(received) == 3)
    sequences = [sequence for sequence, _, _ in received]
    assert sequences == sorted(sequences)
    assert all(local for _, local, _ in received)
    assert [changes for _, _, changes in received] == [
        [CommittedChange(User, "users", (1,), "insert")],
        [CommittedChange(User, "users", (1,), "update", frozenset({"name", "active"}))],
        [CommittedChange(User, "users", (1,), "delete")],
    ]


def test_rollbacks_publish_nothing(broadcast_app: tuple[Flask, SessionExt]) -> None:
    """A rolled-back transaction and a rolled-back SAVEPOINT leave no outbox
    row; a released SAVEPOINT's changes go with its transaction's commit.
    """
    app, db = broadcast_app
    with app.app_context():
        db.session.add(User(name="gone"))
        db.session.flush()
        db.session.rollback()
        with db.transaction():
            db.session.add(User(name="kept"))
            with pytest.raises(KeyError, match="undo"), db.transaction():
                db.session.add(User(name="undone"))
                db.session.flush()
                raise KeyError("undo")
            with db.transaction():
                db.session.add(User(name="released"))
    rows = outbox_rows(app)
    assert len(rows) == 1
    _, changes = decode(rows[0][1])
    with app.app_context():
        names = {user.name: user.id for user in db.session.scalars(sa.select(User))}
    assert "undone" not in names
    assert sorted(pk for _, _, pk, _, _, _ in changes) == sorted(
        [(names["kept"],), (names["released"],)]
    )
    assert {operation for _, _, _, operation, _, _ in changes} == {"insert"}


def test_net_changes(broadcast_app: tuple[Flask, SessionExt]) -> None:
    """Inserted then updated is an insert; inserted then deleted is nothing,
    so a transaction with nothing left publishes no row.
    """
    app, db = broadcast_app
    with app.app_context():
        user = User(name="a")
        db.session.add(user)
        db.session.flush()
        user.name = "b"
        db.session.flush()
        ghost = User(name="ghost")
        db.session.add(ghost)
        db.session.flush()
        db.session.delete(ghost)
        db.session.commit()
        db.session.add(ghost2 := User(name="ghost2"))
        db.session.flush()
        db.session.delete(ghost2)
        db.session.commit()
    rows = outbox_rows(app)
    assert len(rows) == 1
    _, changes = decode(rows[0][1])
    assert [(table, operation) for _, table, _, operation, _, _ in changes] == [
        ("users", "insert")
    ]


def test_models_setting_filters(app: Flask) -> None:
    """Only the listed models are published."""
    app.config["SESSIONEXT_BROADCAST"] = {"models": [Item]}
    db = SessionExt(app)
    engines = app.extensions["sessionext"].engines
    Base.metadata.create_all(engines[None])
    SessionExt.outbox_metadata.create_all(engines[None])
    try:
        with app.app_context():
            db.session.add(User(name="not published"))
            db.session.commit()
        assert outbox_rows(app) == []
    finally:
        Base.metadata.drop_all(engines[None])
        SessionExt.outbox_metadata.drop_all(engines[None])
        for engine in engines.values():
            engine.dispose()


@pytest.mark.parametrize("database", ["postgresql"])
@pytest.mark.parametrize("paramstyle", ["pyformat", "format"])
def test_publishes_in_either_parameter_style(app: Flask, paramstyle: str) -> None:
    """The PostgreSQL publication, compiled once for the driver, runs with
    named and with positional parameters alike.
    """
    app.config.update(
        SESSIONEXT_BROADCAST=True,
        SESSIONEXT_ENGINE_OPTIONS={"paramstyle": paramstyle},
    )
    db = SessionExt(app)
    engine = app.extensions["sessionext"].engines[None]
    assert engine.dialect.paramstyle == paramstyle
    Base.metadata.create_all(engine)
    SessionExt.outbox_metadata.create_all(engine)
    try:
        with app.app_context():
            db.session.add_all([User(name="ada"), User(name="grace")])
            db.session.commit()
        [(_, payload)] = outbox_rows(app)
        _, changes = decode(payload)
        assert sorted((table, pk, op) for _, table, pk, op, _, _ in changes) == [
            ("users", (1,), "insert"),
            ("users", (2,), "insert"),
        ]
    finally:
        Base.metadata.drop_all(engine)
        SessionExt.outbox_metadata.drop_all(engine)
        for bind in app.extensions["sessionext"].engines.values():
            bind.dispose()


def test_large_transaction_arrives_whole(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """A transaction whose summary is far over PostgreSQL's 8,000-byte
    notification limit arrives whole, as one publication.
    """
    app, db = broadcast_app
    with receiving(app) as received, app.app_context():
        db.session.add_all(User(name=f"user {i}") for i in range(1000))
        db.session.commit()
        wait_for(lambda: len(received) == 1)
    assert len(outbox_rows(app)[0][1]) > 8000
    changes = received[0][2]
    assert len(changes) == 1000
    assert {change.primary_key for change in changes} == {(i,) for i in range(1, 1001)}


def test_receiver_error_is_logged_and_delivery_goes_on(
    broadcast_app: tuple[Flask, SessionExt], caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver's exception is logged on app.logger; the next publications
    still arrive.
    """
    app, db = broadcast_app
    seen: list[int] = []

    def failing(sender: Flask, **kwargs: t.Any) -> None:
        seen.append(kwargs["sequence"])
        raise ValueError("receiver broke")

    with (
        caplog.at_level(logging.ERROR, logger=app.logger.name),
        models_committed_anywhere.connected_to(failing, app),
    ):
        the_listener(app)
        with app.app_context():
            for name in ("a", "b"):
                db.session.add(User(name=name))
                db.session.commit()
        wait_for(lambda: len(seen) == 2)
    assert "models_committed_anywhere" in caplog.text
    assert "ValueError" in caplog.text


def test_missing_outbox_table(
    app: Flask, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the outbox table a commit fails with an error naming the
    command that creates it, and nothing is committed; the listener logs the
    same error once the table has been missing for QUIET_MISSING seconds.
    """
    monkeypatch.setattr(outbox_listener, "QUIET_MISSING", 0.0)
    app.config["SESSIONEXT_BROADCAST"] = {"poll_interval": 0.02}
    db = SessionExt(app)
    engine = app.extensions["sessionext"].engines[None]
    Base.metadata.create_all(engine)
    try:
        with (
            caplog.at_level(logging.WARNING, logger="flask_sessionext.broadcast"),
            models_committed_anywhere.connected_to(lambda sender, **kw: None, app),
        ):
            wait_for(lambda: "create-outbox" in caplog.text)
        assert (
            "'sessionext_outbox' and 'sessionext_outbox_ticks' of"
            " 'SESSIONEXT_BROADCAST' are missing" in caplog.text
        )
        with app.app_context():
            db.session.add(User(name="lost"))
            with pytest.raises(RuntimeError, match=r"flask sessionext create-outbox"):
                db.session.commit()
            db.session.rollback()
            assert db.session.scalars(sa.select(User)).all() == []
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()


def test_sent_kwargs(broadcast_app: tuple[Flask, SessionExt]) -> None:
    """The signal sends exactly the keyword arguments of EXTENSION_KWARGS,
    with the app as sender, inside an app context of it.
    """
    from flask import current_app

    from flask_sessionext.signals import EXTENSION_KWARGS

    app, db = broadcast_app
    calls: list[tuple[object, set[str], object]] = []

    def receiver(sender: Flask, **kwargs: t.Any) -> None:
        calls.append((sender, set(kwargs), current_app._get_current_object()))  # type: ignore[attr-defined]

    with models_committed_anywhere.connected_to(receiver, app):
        the_listener(app)
        with app.app_context():
            db.session.add(User(name="k"))
            db.session.commit()
        wait_for(lambda: len(calls) == 1)
    sender, names, current = calls[0]
    assert sender is app
    assert current is app
    assert names == set(EXTENSION_KWARGS["models_committed_anywhere"])


def test_no_password_in_listener_logs(
    broadcast_app: tuple[Flask, SessionExt], caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, no log line of the listener holds the database password,
    also when it reconnects.
    """
    app, _ = broadcast_app
    url = app.extensions["sessionext"].engines[None].url
    with caplog.at_level(logging.DEBUG), receiving(app):
        listener = the_listener(app)
        if listener.connection is not None:
            listener.connection.close()  # makes it log and reconnect
            wait_for(lambda: "lost its connection" in caplog.text)
        wait_for(listener.connected.is_set)
    assert "Broadcast listener" in caplog.text
    if url.password:
        assert str(url.password) not in caplog.text


# The outbox commands


def test_create_and_prune_outbox_commands(tmp_path: Path) -> None:
    """``create-outbox`` creates the table; ``prune-outbox`` deletes the rows
    older than ``keep``.
    """
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI=f"sqlite:///{tmp_path / 'outbox.sqlite3'}",
        SESSIONEXT_BROADCAST={"keep": 60},
    )
    db = SessionExt(app)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["sessionext", "create-outbox"])
    assert result.exit_code == 0, result.output
    assert (
        "The outbox tables 'sessionext_outbox' and 'sessionext_outbox_ticks'"
        " are ready" in result.output
    )
    engine = app.extensions["sessionext"].engines[None]
    old = utcnow() - timedelta(seconds=120)
    with engine.begin() as conn:
        conn.execute(
            outbox_table.insert(),
            [
                {"channel": "sessionext", "created_at": old, "payload": "{}"},
                {"channel": "sessionext", "created_at": utcnow(), "payload": "{}"},
                {"channel": "other", "created_at": old, "payload": "{}"},
            ],
        )
    result = runner.invoke(args=["sessionext", "prune-outbox"])
    assert result.exit_code == 0, result.output
    assert (
        "Deleted 1 outbox row(s) of channel 'sessionext' older than 60 s."
        in result.output
    )
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(outbox_table)) == 2
    del db
    engine.dispose()


def test_outbox_commands_need_broadcast(tmp_path: Path) -> None:
    """With broadcast off, the outbox commands say how to turn it on."""
    app = make_app(tmp_path, SESSIONEXT_DATABASE_URI="sqlite://")
    SessionExt(app)
    result = app.test_cli_runner().invoke(args=["sessionext", "create-outbox"])
    assert result.exit_code == 1
    assert "'SESSIONEXT_BROADCAST' is off for this app" in result.output


def test_before_models_committed_changes_are_published(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """What a receiver of before_models_committed connected after the app
    started adds to the transaction is published with it.
    """
    app, db = broadcast_app

    def audit(sender: Flask, changes: list[tuple[object, str]]) -> None:
        if not any(getattr(i, "name", "") == "audit" for i, _ in changes):
            db.session.add(User(name="audit"))

    with before_models_committed.connected_to(audit, app), app.app_context():
        db.session.add(User(name="ada"))
        db.session.commit()
    rows = outbox_rows(app)
    assert len(rows) == 1
    _, changes = decode(rows[0][1])
    assert sorted(pk for _, _, pk, _, _, _ in changes) == [(1,), (2,)]


def test_channels_are_apart(broadcast_app: tuple[Flask, SessionExt]) -> None:
    """An app on another channel of the same outbox receives none of this
    channel's publications.
    """
    app, db = broadcast_app
    other = Flask(__name__)
    other.config.update(
        SESSIONEXT_DATABASE_URI=app.config["SESSIONEXT_DATABASE_URI"],
        SESSIONEXT_BROADCAST={"channel": "elsewhere", "poll_interval": 0.02},
    )
    SessionExt(other)
    try:
        with receiving(other) as elsewhere, receiving(app) as here:
            with app.app_context():
                db.session.add(User(name="ada"))
                db.session.commit()
            wait_for(lambda: len(here) == 1)
            time.sleep(0.1)
        assert elsewhere == []
    finally:
        other.extensions["sessionext"].engines[None].dispose()


def test_commit_right_after_connecting_arrives(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """A commit made right after the first receiver connected, before the
    listener has read where to start, still reaches this process.
    """
    app, db = broadcast_app
    received: list[int] = []

    def receiver(sender: Flask, sequence: int, **kwargs: t.Any) -> None:
        received.append(sequence)

    with models_committed_anywhere.connected_to(receiver, app):
        with app.app_context():
            db.session.add(User(name="early"))
            db.session.commit()
        wait_for(lambda: len(received) == 1)
        with app.app_context():
            db.session.add(User(name="late"))
            db.session.commit()
        wait_for(lambda: len(received) == 2)
    assert received == [row_id for row_id, _ in outbox_rows(app)]


def test_publications_arrive_in_commit_order(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """A transaction that published first but commits slowly neither holds
    back the next one on PostgreSQL (no lock) nor is skipped: both arrive,
    in the order they committed. On SQLite, whose writers take turns, the
    second waits for the first.
    """
    app, db = broadcast_app
    committed: list[str] = []

    def hold(sender: Flask, **kwargs: t.Any) -> None:
        if threading.current_thread().name == "slow committer":
            time.sleep(0.5)

    def commit(name: str) -> None:
        with app.app_context():
            db.session.add(User(name=name))
            db.session.commit()
            committed.append(name)

    with receiving(app) as received, signals.commit.connected_to(hold, app):
        slow = threading.Thread(target=commit, args=("first",), name="slow committer")
        slow.start()
        time.sleep(0.2)  # it has published, and waits in its COMMIT
        commit("second")
        slow.join()
        wait_for(lambda: len(received) == 2, timeout=5)
    with app.app_context():
        names = {user.id: user.name for user in db.session.scalars(sa.select(User))}
    delivered = [names[changes[0].primary_key[0]] for _, _, changes in received]
    assert delivered == committed
    dialect = app.extensions["sessionext"].engines[None].dialect.name
    expected = ["second", "first"] if dialect == "postgresql" else ["first", "second"]
    assert committed == expected


def test_same_order_in_every_process(broadcast_app: tuple[Flask, SessionExt]) -> None:
    """Listeners that read at different moments deliver the same
    publications in the same order, while transactions commit concurrently
    out of id order.
    """
    app, db = broadcast_app
    other_app = Flask("other", instance_path=app.instance_path)
    other_app.config.update(app.config)
    other_db = SessionExt(other_app)
    orders: list[list[int]] = [[], []]

    def receiver_for(index: int) -> t.Callable[..., None]:
        def receiver(sender: Flask, sequence: int, **kwargs: t.Any) -> None:
            orders[index].append(sequence)
            if index == 1:
                time.sleep(0.003)  # reads at other moments than the first

        return receiver

    def commit(name: str, delay: float) -> None:
        def hold(sender: Flask, **kwargs: t.Any) -> None:
            time.sleep(delay)

        with app.app_context():
            db.session.add(User(name=name))
            with signals.commit.connected_to(hold, app):
                db.session.commit()

    first, other = receiver_for(0), receiver_for(1)
    with (
        models_committed_anywhere.connected_to(first, app),
        models_committed_anywhere.connected_to(other, other_app),
    ):
        the_listener(app)
        the_listener(other_app)
        threads = [
            threading.Thread(target=commit, args=(f"u{i}", (i * 7 % 5) / 100))
            for i in range(20)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_for(lambda: len(orders[0]) == 20 and len(orders[1]) == 20)
    assert orders[0] == orders[1]
    assert sorted(orders[0]) == [row_id for row_id, _ in outbox_rows(app)]
    for engine in other_app.extensions["sessionext"].engines.values():
        engine.dispose()
    del other_db


# Typed keys


class _KeysBase(orm.DeclarativeBase):
    """The models with primary keys that JSON does not hold."""


class Color(enum.Enum):
    """An Enum primary key's type."""

    RED = "red"
    BLUE = "blue"


class TypedKeys(_KeysBase):
    """One primary key column of each type that JSON does not hold."""

    __tablename__ = "typed_keys"
    uid: orm.Mapped[uuid.UUID] = orm.mapped_column(primary_key=True)
    amount: orm.Mapped[decimal.Decimal] = orm.mapped_column(
        sa.Numeric(10, 2), primary_key=True
    )
    day: orm.Mapped[dt.date] = orm.mapped_column(primary_key=True)
    moment: orm.Mapped[dt.datetime] = orm.mapped_column(primary_key=True)
    raw: orm.Mapped[bytes] = orm.mapped_column(sa.LargeBinary(16), primary_key=True)
    color: orm.Mapped[Color] = orm.mapped_column(primary_key=True)
    note: orm.Mapped[str] = orm.mapped_column(sa.String(20), default="")


class Code(_KeysBase):
    """A model whose primary key an update may change."""

    __tablename__ = "codes"
    code: orm.Mapped[str] = orm.mapped_column(sa.String(10), primary_key=True)


@pytest.fixture
def keys_app(
    broadcast_app: tuple[Flask, SessionExt],
) -> Iterator[tuple[Flask, SessionExt]]:
    """The broadcast app with the tables of the typed-key models."""
    app, db = broadcast_app
    engine = app.extensions["sessionext"].engines[None]
    _KeysBase.metadata.create_all(engine)
    yield app, db
    _KeysBase.metadata.drop_all(engine)


def test_primary_keys_keep_their_types(keys_app: tuple[Flask, SessionExt]) -> None:
    """UUID, Decimal, date, datetime, bytes and Enum primary keys arrive with
    their types, so ``session.get(change.model, change.primary_key)`` finds
    the row and a cache keyed by them is reached.
    """
    app, db = keys_app
    key = (
        uuid.uuid4(),
        decimal.Decimal("12.50"),
        dt.date(2026, 12, 6),
        dt.datetime(2026, 12, 6, 5, 30, 1),
        b"\x00\xff\x10",
        Color.RED,
    )
    with receiving(app) as received, app.app_context():
        uid, amount, day, moment, raw, color = key
        row = TypedKeys(uid=uid, amount=amount, day=day, moment=moment, raw=raw)
        row.color = color
        db.session.add(row)
        db.session.commit()
        wait_for(lambda: len(received) == 1)
        (change,) = received[0][2]
        assert change.model is TypedKeys
        assert change.primary_key == key
        assert [type(value) for value in change.primary_key] == [
            uuid.UUID,
            decimal.Decimal,
            dt.date,
            dt.datetime,
            bytes,
            Color,
        ]
        found = db.session.get(TypedKeys, change.primary_key)
        assert found is not None
        assert found.uid == uid


def test_enum_key_of_an_unmapped_class_is_its_name() -> None:
    """A process that does not map the class gets an Enum key as the
    member's name, a plain string, and the other types as they were.
    """
    pk = (Color.BLUE, dt.date(2026, 1, 2))
    payload = encode("origin", [("x.Gone", "gone", pk, "insert", frozenset(), None)])
    _, ((_, _, decoded, _, _, _),) = decode(payload)
    assert decoded == ("BLUE", dt.date(2026, 1, 2))
    assert type(typed_key(None, decoded)[0]) is str


def test_primary_key_change_carries_both_keys(
    keys_app: tuple[Flask, SessionExt],
) -> None:
    """An update that changes the primary key arrives under the new key with
    the old one in ``previous_primary_key``, so what is kept under the old
    key can go; a key changed twice in one transaction carries the first.
    """
    app, db = keys_app
    with receiving(app) as received, app.app_context():
        row = Code(code="old")
        db.session.add(row)
        db.session.commit()
        row.code = "mid"
        db.session.flush()
        row.code = "new"
        db.session.commit()
        fresh = Code(code="a")
        db.session.add(fresh)
        db.session.flush()
        fresh.code = "b"
        db.session.commit()
        wait_for(lambda: len(received) == 3)
    assert received[1][2] == [
        CommittedChange(
            Code, "codes", ("new",), "update", frozenset({"code"}), ("old",)
        )
    ]
    # Inserted and re-keyed in one transaction: an insert under its last key.
    assert received[2][2] == [CommittedChange(Code, "codes", ("b",), "insert")]


# Pruning


def test_a_process_that_publishes_once_prunes(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """A process's first publication prunes the rows older than ``keep``,
    however few it publishes (a CLI job, a worker restarted early).
    """
    app, db = broadcast_app
    engine = app.extensions["sessionext"].engines[None]
    keep = app.extensions["sessionext"].settings.broadcast.keep
    old = utcnow() - timedelta(seconds=keep + 60)
    with engine.begin() as conn:
        conn.execute(
            outbox_table.insert(),
            {"channel": "sessionext", "created_at": old, "payload": "{}"},
        )
    with app.app_context():
        db.session.add(User(name="ada"))
        db.session.commit()
    payloads = [payload for _, payload in outbox_rows(app)]
    assert payloads != ["{}"]
    assert "{}" not in payloads
    assert len(payloads) == 1


def test_outbox_ids_are_never_reused(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """Once every row was deleted, the next publication still gets an id
    above every id given before (SQLite's AUTOINCREMENT, PostgreSQL's
    sequence), so a listener that read up to an id skips nothing.
    """
    app, db = broadcast_app
    engine = app.extensions["sessionext"].engines[None]
    with app.app_context():
        for name in ("a", "b", "c"):
            db.session.add(User(name=name))
            db.session.commit()
    last = max(row_id for row_id, _ in outbox_rows(app))
    with engine.begin() as conn:
        conn.execute(outbox_table.delete())
    assert outbox_rows(app) == []
    with app.app_context():
        db.session.add(User(name="d"))
        db.session.commit()
    ((row_id, _),) = outbox_rows(app)
    assert row_id > last
