"""Zero cost without receivers, several apps, receiver errors, register()."""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import threading
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.ctx import AppContext

from flask_sessionext import SessionExt, signals
from flask_sessionext.signals import CATALOG, BridgedEvent

from helpers import checked_out, count_rows
from models import User

Sent = list[tuple[object, dict[str, t.Any]]]


@pytest.fixture
def app(app: Flask) -> Flask:
    """The app of conftest with query recording, which testing turns on,
    off: these tests count the listeners that their receivers install.
    """
    app.config["SESSIONEXT_RECORD_QUERIES"] = False
    return app


def listeners(db: SessionExt, entry: BridgedEvent) -> int:
    """How many listeners of ``entry``'s event the app's targets carry."""
    if entry.target == "session":
        return len(getattr(db.session().dispatch, entry.name))
    engine = db.engine
    target: t.Any = {"engine": engine, "pool": engine.pool, "dialect": engine.dialect}
    return len(getattr(target[entry.target].dispatch, entry.name))


def own_listeners(db: SessionExt, entry: BridgedEvent) -> int:
    """1 when ``entry``'s event carries a listener that the extension installs
    without any receiver: the liveness check's, which PostgreSQL with psycopg
    has on its pool's ``checkout`` and ``checkin``, and the PRAGMAs', which a
    SQLite file has on its pool's ``connect``; else 0.
    """
    engine = db.engine
    checked = engine.dialect.driver == "psycopg" and not engine.pool._pre_ping
    if checked and entry.name in ("checkout", "checkin"):
        return 1
    return int(engine.dialect.name == "sqlite" and entry.name == "connect")


def recorder(sent: Sent) -> t.Callable[..., None]:
    """A receiver that appends ``(sender, kwargs)`` to ``sent``."""

    def receive(sender: object, **kwargs: t.Any) -> None:
        sent.append((sender, kwargs))

    return receive


def test_no_listener_without_receivers(app_ctx: AppContext, db: SessionExt) -> None:
    """An app with no receivers carries no listener of this package but the
    liveness check's pool listeners on PostgreSQL and the PRAGMAs' on a
    SQLite file: its engines have otherwise
    exactly the listeners of a plain engine, and its engine and dialect stay
    on SQLAlchemy's no-event fast path.
    """
    plain = sa.create_engine(db.engine.url)
    targets: dict[str, t.Any] = {
        "engine": plain,
        "pool": plain.pool,
        "dialect": plain.dialect,
    }
    for entry in CATALOG.values():
        expected = 0
        if entry.target != "session":
            expected = len(getattr(targets[entry.target].dispatch, entry.name))
        assert listeners(db, entry) == expected + own_listeners(db, entry), entry.name
    assert db.engine._has_events is False
    assert db.engine.dialect._has_events is False
    plain.dispose()


@pytest.mark.parametrize("entry", CATALOG.values(), ids=list(CATALOG))
def test_connect_installs_exactly_one_listener(
    app: Flask, db: SessionExt, entry: BridgedEvent
) -> None:
    """Receivers install one listener per target, however many connect and
    however they connect (sharing the liveness check's or the PRAGMAs',
    where there is one),
    and the last disconnect removes it.
    """
    with app.app_context():
        before = listeners(db, entry)
        after = before + 1 - own_listeners(db, entry)
    first, second = recorder([]), recorder([])
    with (
        entry.signal.connected_to(first),
        entry.signal.connected_to(second, sender=app),
    ):
        with app.app_context():
            assert listeners(db, entry) == after
        with entry.signal.connected_to(first), app.app_context():  # again
            assert listeners(db, entry) == after
    with app.app_context():
        assert listeners(db, entry) == before
        if entry.target != "session":
            assert db.engine._has_events is False
            assert db.engine.dialect._has_events is False


def test_later_init_app_gets_the_listener(app: Flask) -> None:
    """An app initialised after a receiver connected gets the listener."""
    sent: Sent = []
    with signals.before_cursor_execute.connected_to(recorder(sent)):
        db = SessionExt(app)
        with app.app_context():
            assert listeners(db, CATALOG["before_cursor_execute"]) == 1
            db.session.execute(sa.select(1))
            engine = db.engine
    engine.dispose()
    assert [sender for sender, _ in sent] == [app]


def test_two_apps_keep_their_events_apart(tmp_path: Path) -> None:
    """A receiver connected via one app never sees the other app's events,
    and the other app carries no listener for it.
    """
    db = SessionExt()
    apps = []
    for name in ("a", "b"):
        app = Flask(name, instance_path=str(tmp_path / name))
        app.config["SESSIONEXT_DATABASE_URI"] = "sqlite://"
        db.init_app(app)
        apps.append(app)
    a, b = apps
    sent: Sent = []
    with signals.after_cursor_execute.connected_to(recorder(sent), sender=a):
        for app in apps:
            with app.app_context():
                db.session.execute(sa.select(1))
        with b.app_context():
            assert listeners(db, CATALOG["after_cursor_execute"]) == 0
    assert [sender for sender, _ in sent] == [a]


def test_pool_event_on_thread_without_app_context(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """Pool events fired on a thread with no app context are sent by the app."""
    sent: Sent = []
    engine = db.engine
    app = app_ctx.app

    def work() -> None:
        with engine.connect() as conn:
            conn.execute(sa.select(1))

    with signals.checkout.connected_to(recorder(sent), sender=app):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert [sender for sender, _ in sent] == [app]


def test_collected_receiver_listener_goes_at_teardown(
    app: Flask, db: SessionExt
) -> None:
    """A garbage-collected weak receiver's listener is removed at the next
    app-context teardown, not before.
    """
    entry = CATALOG["before_cursor_execute"]
    signals.before_cursor_execute.connect(recorder([]))  # weak, and unreferenced
    gc.collect()
    with app.app_context():
        assert listeners(db, entry) == 1  # no safe point yet
        db.session.execute(sa.select(1))  # sends to nobody
    with app.app_context():
        assert listeners(db, entry) == 0


def test_collected_receiver_listener_goes_at_next_connect(
    app: Flask, db: SessionExt
) -> None:
    """The next connect on any signal also removes such a listener."""
    entry = CATALOG["after_flush"]
    signals.after_flush.connect(recorder([]))
    gc.collect()
    with signals.commit.connected_to(recorder([])), app.app_context():
        assert listeners(db, entry) == 0


def test_disconnect_during_dispatch(app: Flask, db: SessionExt) -> None:
    """A receiver that disconnects itself while its event is dispatched does
    not remove the listener during the dispatch, and it goes afterwards.
    """
    entry = CATALOG["before_cursor_execute"]
    calls: list[str] = []

    def once(sender: Flask, **kwargs: t.Any) -> None:
        calls.append(kwargs["statement"])
        signals.before_cursor_execute.disconnect(once)

    signals.before_cursor_execute.connect(once, sender=app)
    with app.app_context():
        db.session.execute(sa.select(1))
        db.session.execute(sa.select(sa.literal(2)))
    assert len(calls) == 1
    with app.app_context():
        assert listeners(db, entry) == 0


def test_propagating_receiver_vetoes_flush(app_ctx: AppContext, db: SessionExt) -> None:
    """A before_flush receiver that raises aborts the flush; after rollback
    the session is usable.
    """

    def veto(sender: Flask, **kwargs: t.Any) -> None:
        raise PermissionError("read-only today")

    db.session.add(User(name="vetoed"))
    with signals.before_flush.connected_to(veto):
        with pytest.raises(PermissionError, match="read-only today"):
            db.session.flush()
        db.session.rollback()
    db.session.add(User(name="kept"))
    db.session.commit()
    assert db.session.scalars(sa.select(User.name)).all() == ["kept"]


def test_checkout_disconnection_error_makes_the_pool_retry(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """A checkout receiver raising DisconnectionError makes the pool retry
    with a new connection.
    """
    seen: list[object] = []

    def ping(sender: Flask, dbapi_connection: object, **kwargs: t.Any) -> None:
        seen.append(dbapi_connection)
        if len(seen) == 1:
            raise sa.exc.DisconnectionError("stale")

    with db.engine.connect():  # a pooled connection to go stale
        pass
    with signals.checkout.connected_to(ping, sender=app_ctx.app):
        assert db.session.execute(sa.select(1)).scalar() == 1
    assert len(seen) == 2
    assert seen[0] is not seen[1]


def _raise(sender: Flask, **kwargs: t.Any) -> None:
    raise LookupError("receiver failed")


def test_reporting_receiver_error_is_logged(
    app_ctx: AppContext, db: SessionExt, caplog: pytest.LogCaptureFixture
) -> None:
    """Without SESSIONEXT_RAISE_RECEIVER_ERRORS an after_commit receiver's
    error is logged with its traceback, the other receivers run, and the
    commit stands.
    """
    app_ctx.app.config["SESSIONEXT_RAISE_RECEIVER_ERRORS"] = False
    sent: Sent = []
    db.session.add(User(name="a"))
    with (
        signals.after_commit.connected_to(_raise),
        signals.after_commit.connected_to(recorder(sent)),
        caplog.at_level(logging.ERROR),
    ):
        db.session.commit()
    assert len(sent) == 1
    assert count_rows(db.engine, "users") == 1
    (log,) = [r for r in caplog.records if "after_commit" in r.getMessage()]
    assert "test_bridge._raise" in log.getMessage()
    assert log.exc_info is not None
    assert isinstance(log.exc_info[1], LookupError)


def test_reporting_receiver_error_raised_after_operation(
    app: Flask, db: SessionExt, caplog: pytest.LogCaptureFixture
) -> None:
    """With SESSIONEXT_RAISE_RECEIVER_ERRORS (app.testing) the first error is
    raised once the commit completed: the data is committed, the session is
    usable, and no connection leaks.
    """
    sent: Sent = []
    with app.app_context():
        db.session.add(User(name="a"))
        with (
            signals.after_commit.connected_to(_raise),
            signals.after_commit.connected_to(recorder(sent)),
            pytest.raises(LookupError, match="receiver failed"),
        ):
            db.session.commit()
        assert len(sent) == 1
        assert not db.session().in_transaction()
        assert db.session.scalars(sa.select(User.name)).all() == ["a"]
        engine = db.engine
    assert checked_out(engine) == 0
    assert any("after_commit" in r.getMessage() for r in caplog.records)


def test_checkin_receiver_error_leaks_no_connection(app: Flask, db: SessionExt) -> None:
    """A checkin receiver that raises does not leave the connection checked
    out; the error comes after the session's close completed.
    """
    with app.app_context():
        engine = db.engine
        db.session.execute(sa.select(1))
        with (
            signals.checkin.connected_to(_raise, sender=app),
            pytest.raises(LookupError, match="receiver failed"),
        ):
            db.session.close()
        assert checked_out(engine) == 0
        assert db.session.execute(sa.select(1)).scalar() == 1
    assert checked_out(engine) == 0


def test_receiver_error_outside_session_operation_only_logged(
    app_ctx: AppContext, db: SessionExt, caplog: pytest.LogCaptureFixture
) -> None:
    """An error of a reporting receiver outside any session operation is
    logged only, whatever the setting.
    """
    with signals.after_execute.connected_to(_raise), db.engine.connect() as conn:
        assert conn.execute(sa.select(1)).scalar() == 1
    assert any("after_execute" in r.getMessage() for r in caplog.records)


def test_raise_setting_read_when_the_error_happens(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """SESSIONEXT_RAISE_RECEIVER_ERRORS is read at each error."""
    config = app_ctx.app.config
    with signals.after_begin.connected_to(_raise):
        config["SESSIONEXT_RAISE_RECEIVER_ERRORS"] = False
        db.session.execute(sa.select(1))
        db.session.rollback()
        config["SESSIONEXT_RAISE_RECEIVER_ERRORS"] = True
        with pytest.raises(LookupError, match="receiver failed"):
            db.session.execute(sa.select(1))


def test_async_receivers(app_ctx: AppContext, db: SessionExt) -> None:
    """``async def`` receivers run, as for Flask's own signals."""
    names: list[str] = []

    async def before(sender: Flask, **kwargs: t.Any) -> None:
        names.append("before_flush")

    async def after(sender: Flask, **kwargs: t.Any) -> None:
        names.append("after_commit")

    db.session.add(User(name="a"))
    with (
        signals.before_flush.connected_to(before),
        signals.after_commit.connected_to(after),
    ):
        db.session.commit()
    assert names == ["before_flush", "after_commit"]


def test_no_session_wrapper_without_reporting_signals(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """The Session class defers receiver errors to the end of its operations
    only while a reporting signal is in use, and its methods never change.
    """
    session_class = type(db.session())
    methods = {name for name in dir(session_class) if not name.startswith("_")}
    commit = session_class.commit
    assert "commit" not in session_class._sessionext_deferring
    with signals.after_commit.connected_to(_raise):
        assert "commit" in session_class._sessionext_deferring
        assert session_class.commit is commit
    assert "commit" not in session_class._sessionext_deferring
    assert {name for name in dir(session_class) if not name.startswith("_")} == methods


class FlushLog:
    """An old-style session extension: methods named after events."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Flask]] = []

    def before_flush(self, sender: Flask, session: t.Any, **kwargs: t.Any) -> None:
        self.calls.append(("before_flush", sender))

    def after_commit(self, sender: Flask, session: t.Any) -> None:
        self.calls.append(("after_commit", sender))

    def describe(self) -> str:
        return "not a signal name, not like one"


def test_register(app_ctx: AppContext, db: SessionExt) -> None:
    """register() connects the signal-named methods, with strong references,
    and its handle disconnects exactly those.
    """
    app = app_ctx.app
    before = set(signals.after_commit.receivers)
    log = FlushLog()
    handle = db.register(log, app=app)
    keep = recorder([])
    signals.before_flush.connect(keep)
    gc.collect()
    db.session.add(User(name="a"))
    db.session.commit()
    assert log.calls == [("before_flush", app), ("after_commit", app)]
    handle.disconnect()
    assert list(signals.before_flush.receivers_for(app)) == [keep]
    assert set(signals.after_commit.receivers) == before
    signals.before_flush.disconnect(keep)


def test_register_for_every_app(app_ctx: AppContext, db: SessionExt) -> None:
    """register() without an app receives every app's sends."""
    before = set(signals.before_flush.receivers)
    log = FlushLog()
    handle = db.register(log)
    db.session.add(User(name="a"))
    db.session.commit()
    handle.disconnect()
    assert [name for name, _ in log.calls] == ["before_flush", "after_commit"]
    assert set(signals.before_flush.receivers) == before


def test_register_misspelt_method(app_ctx: AppContext, db: SessionExt) -> None:
    """A misspelt signal name is a ValueError naming both, and nothing stays
    connected.
    """

    class Typo(FlushLog):
        def before_flsuh(self, sender: Flask, **kwargs: t.Any) -> None:
            raise AssertionError("never called")

    before = (set(signals.before_flush.receivers), set(signals.after_commit.receivers))
    with pytest.raises(ValueError, match=r"Typo\.before_flsuh\(\).*'before_flush'"):
        db.register(Typo())
    after = (set(signals.before_flush.receivers), set(signals.after_commit.receivers))
    assert after == before


def test_register_without_signal_methods(app_ctx: AppContext, db: SessionExt) -> None:
    """An object with no signal-named method is a TypeError listing the names."""

    class Nothing:
        def describe(self) -> str:
            return "nothing"

    with pytest.raises(
        TypeError, match=r"Nothing has no public method .* after_commit"
    ):
        db.register(Nothing())


def test_cli_signals(app: Flask, db: SessionExt) -> None:
    """``flask sessionext signals`` lists every signal, its event and receivers."""
    with signals.before_flush.connected_to(_raise, sender=app):
        result = app.test_cli_runner().invoke(args=["sessionext", "signals"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 1 + len(signals.namespace)
    (line,) = [line for line in lines if line.startswith("before_flush ")]
    assert "SessionEvents.before_flush" in line
    assert "test_bridge._raise" in line
    assert any(line.startswith("models_committed ") for line in lines)


def test_docs_catalog_table() -> None:
    """The signals page shows the catalog table that the catalog makes, and
    README.rst keeps no copy of it that could drift.
    """
    root = Path(__file__).parents[1]
    sys.path.insert(0, str(root / "docs" / "_ext"))
    try:
        sessionext_docs = importlib.import_module("sessionext_docs")
    finally:
        sys.path.remove(str(root / "docs" / "_ext"))
    table: str = sessionext_docs.catalog_rst()
    assert ".. sessionext-catalog::" in (root / "docs" / "signals.rst").read_text()
    assert table.splitlines()[1] not in (root / "README.rst").read_text()
