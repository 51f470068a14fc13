"""Async sessions in Flask ``async def`` views, on SQLite (aiosqlite) and
PostgreSQL (psycopg): the session of each app context, its teardown, the
pool, bind keys, the helpers and the rollback block.
"""

from __future__ import annotations

import asyncio
import inspect
import textwrap
import threading
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import AsyncAdaptedQueuePool
from werkzeug.exceptions import NotFound

from flask_sessionext import SessionExt, signals
from flask_sessionext._config.binds import BindSettings
from flask_sessionext._engines.async_engines import (
    ThreadedAsyncPool,
    ThreadedNullPool,
    async_options,
)
from flask_sessionext.testing import capture_signal, rollback

from helpers import count_rows, run_python
from models import Entry, Item, User


@pytest.fixture
def adb(app: Flask, db: SessionExt) -> Iterator[SessionExt]:
    """The extension of ``db``, its async engines disposed after the test."""
    yield db
    engines = list(app.extensions["sessionext"].async_state.engines.values())

    async def dispose() -> None:
        for engine in engines:
            await engine.dispose()

    asyncio.run(dispose())


def async_engine(app: Flask, key: str | None = None) -> AsyncEngine:
    """The async engine of ``app``'s bind ``key``."""
    engine: AsyncEngine = app.extensions["sessionext"].async_state.engines[key]
    return engine


def checked_out(app: Flask) -> int:
    """How many connections of ``app``'s async engines are checked out."""
    return sum(
        t.cast(t.Any, engine.sync_engine.pool).checkedout()
        for engine in app.extensions["sessionext"].async_state.engines.values()
    )


def add_user_views(app: Flask, db: SessionExt) -> None:
    """Create, read, rename and delete users in ``async def`` views."""

    @app.post("/users/<name>")
    async def create(name: str) -> dict[str, int]:
        user = User(name=name)
        db.async_session.add(user)
        await db.async_session.commit()
        return {"id": user.id}

    @app.get("/users/<int:ident>")
    async def read(ident: int) -> dict[str, str]:
        user = await db.async_get_or_404(User, ident)
        return {"name": user.name}

    @app.put("/users/<int:ident>/<name>")
    async def rename(ident: int, name: str) -> dict[str, str]:
        async with db.async_transaction() as session:
            user = await session.get_one(User, ident)
            user.name = name
        return {"name": user.name}

    @app.delete("/users/<int:ident>")
    async def delete(ident: int) -> dict[str, bool]:
        user = await db.async_get_or_404(User, ident)
        await db.async_session.delete(user)
        await db.async_session.commit()
        return {"deleted": True}


def test_crud_in_async_views(app: Flask, adb: SessionExt) -> None:
    """Async views create, read, update and delete through db.async_session,
    and no connection stays checked out.
    """
    add_user_views(app, adb)
    client = app.test_client()
    ident = client.post("/users/ada").json["id"]  # type: ignore[index]
    assert client.get(f"/users/{ident}").json == {"name": "ada"}
    assert client.put(f"/users/{ident}/grace").json == {"name": "grace"}
    assert client.get(f"/users/{ident}").json == {"name": "grace"}
    assert client.delete(f"/users/{ident}").json == {"deleted": True}
    assert client.get(f"/users/{ident}").status_code == 404
    assert checked_out(app) == 0
    assert app.extensions["sessionext"].async_state.sessions == {}


def test_same_session_across_awaits_other_between_requests(
    app: Flask, adb: SessionExt
) -> None:
    """Concurrent requests each keep one session across their awaits, each
    a different one, and leave no connection checked out.
    """
    sessions: list[AsyncSession] = []
    started = threading.Barrier(4, timeout=10)

    @app.get("/slow")
    async def slow() -> str:
        session = db.async_session
        await session.execute(sa.select(1))
        await asyncio.to_thread(started.wait)  # all four run at once
        await asyncio.sleep(0.01)
        assert db.async_session is session
        await session.execute(sa.select(User))
        sessions.append(session)
        return "ok"

    db = adb
    client = app.test_client()
    threads = [threading.Thread(target=client.get, args=("/slow",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sessions) == 4
    assert len({id(session) for session in sessions}) == 4
    assert checked_out(app) == 0


def test_pool_reuses_connections_across_loops(app: Flask, adb: SessionExt) -> None:
    """Requests on loops of their own reuse one pooled connection."""
    add_user_views(app, adb)
    pool = async_engine(app).sync_engine.pool
    assert isinstance(pool, ThreadedAsyncPool)
    client = app.test_client()
    with capture_signal(signals.connect, app) as connected:
        for name in ("a", "b", "c"):
            client.post(f"/users/{name}")
    assert [kwargs["bind_key"] for _, kwargs in connected] == [None]


def test_pool_choice() -> None:
    """Flask gets the threaded pool for loop-free drivers and NullPool for
    loop-bound ones; Quart gets SQLAlchemy's async pool; a chosen pool stays.
    """

    def bind(url: str, **options: t.Any) -> BindSettings:
        return BindSettings(
            None, "SESSIONEXT_DATABASE_URI", sa.make_url(url), options, {}, False
        )

    asyncpg = sa.make_url("postgresql+asyncpg://u@127.0.0.1/d")
    options = async_options(
        bind("postgresql://u@127.0.0.1/d", pool_size=3), asyncpg, True
    )
    assert options == {"poolclass": ThreadedNullPool}
    aiosqlite = sa.make_url("sqlite+aiosqlite:///x")
    assert async_options(bind("sqlite:///x"), aiosqlite, True)["poolclass"] is (
        ThreadedAsyncPool
    )
    assert "poolclass" not in async_options(bind("sqlite:///x"), aiosqlite, False)
    chosen = async_options(
        bind("sqlite:///x", poolclass=AsyncAdaptedQueuePool), aiosqlite, True
    )
    assert chosen["poolclass"] is AsyncAdaptedQueuePool


def test_signals_fire_from_async_session(app: Flask, adb: SessionExt) -> None:
    """Session, connection and pool signals, and the session lifecycle
    signals, fire for an async session with the app as sender.
    """
    add_user_views(app, adb)
    names = (
        "session_created",
        "after_begin",
        "before_flush",
        "after_flush",
        "pending_to_persistent",
        "before_commit",
        "after_commit",
        "before_cursor_execute",
        "after_cursor_execute",
        "commit",
        "checkout",
        "checkin",
        "session_removed",
    )
    senders: dict[str, list[object]] = {name: [] for name in names}

    def receiver(name: str) -> t.Callable[..., None]:
        def receive(sender: object, **kwargs: object) -> None:
            senders[name].append(sender)

        return receive

    receivers = {name: receiver(name) for name in names}
    for name in names:
        signals.namespace[name].connect(receivers[name], app)
    try:
        app.test_client().post("/users/ada")
    finally:
        for name in names:
            signals.namespace[name].disconnect(receivers[name], app)
    assert {name: bool(sent) for name, sent in senders.items()} == dict.fromkeys(
        names, True
    )
    assert all(sender is app for sent in senders.values() for sender in sent)


def test_async_receiver_runs_on_the_session_loop(app: Flask, adb: SessionExt) -> None:
    """An async receiver of a signal sent by an async session runs on that
    session's loop, in the view's thread.
    """
    loops: list[tuple[object, object]] = []

    async def receive(sender: Flask, changes: list[tuple[object, str]]) -> None:
        loops.append((asyncio.get_running_loop(), threading.current_thread()))

    @app.post("/add")
    async def add() -> str:
        db.async_session.add(User(name="ada"))
        await db.async_session.commit()
        loops.append((asyncio.get_running_loop(), threading.current_thread()))
        return "ok"

    db = adb
    with signals.models_committed.connected_to(receive, app):
        app.test_client().post("/add")
    assert len(loops) == 2
    assert loops[0] == loops[1]


def test_models_committed_and_on_commit_on_every_commit_path(
    app: Flask, adb: SessionExt
) -> None:
    """models_committed and on_async_commit callbacks (sync and async) run
    after commit(), a begin() block, async_transaction() and a teardown
    commit; a rolled-back SAVEPOINT reports nothing.
    """
    db = adb
    ran: list[str] = []

    async def async_callback(path: str) -> None:
        ran.append(f"async {path}")

    @app.post("/<path>")
    async def view(path: str) -> str:
        session = db.async_session
        if path == "transaction":
            async with db.async_transaction():
                session.add(User(name=path))
                db.on_async_commit(ran.append, path)
                db.on_async_commit(async_callback, path)
            return "ok"
        if path == "begin":
            async with session.begin():
                session.add(User(name=path))
                db.on_async_commit(ran.append, path)
            return "ok"
        session.add(User(name=path))
        db.on_async_commit(ran.append, path)
        if path == "commit":
            await session.commit()
        elif path == "savepoint":
            savepoint = await session.begin_nested()
            session.add(User(name="rolled back"))
            await session.flush()
            await savepoint.rollback()
            await session.commit()
        return "ok"

    client = app.test_client()
    with capture_signal(signals.models_committed, app) as sent:
        for path in ("commit", "begin", "transaction", "savepoint"):
            client.post(f"/{path}")
        app.config["SESSIONEXT_COMMIT_ON_TEARDOWN"] = True
        client.post("/teardown")
    assert [[u.name for u, _ in kwargs["changes"]] for _, kwargs in sent] == [
        ["commit"],
        ["begin"],
        ["transaction"],
        ["savepoint"],
        ["teardown"],
    ]
    assert ran == [
        "commit",
        "begin",
        "transaction",
        "async transaction",
        "savepoint",
        "teardown",
    ]
    assert count_rows(app.extensions["sessionext"].engines[None], "users") == 5


def test_async_transaction_nests_a_savepoint(app: Flask, adb: SessionExt) -> None:
    """A nested async_transaction() that raises rolls back only its SAVEPOINT."""

    @app.post("/nested")
    async def nested() -> str:
        async with adb.async_transaction() as session:
            session.add(User(name="kept"))
            with pytest.raises(ValueError, match="inner"):
                async with adb.async_transaction():
                    session.add(User(name="dropped"))
                    await session.flush()
                    raise ValueError("inner")
        return "ok"

    app.test_client().post("/nested")
    with app.app_context():
        names = adb.session.scalars(sa.select(User.name)).all()
    assert names == ["kept"]


def test_bind_keys(app: Flask, adb: SessionExt) -> None:
    """Models of other binds, by metadata or __bind_key__, go to those binds'
    async engines.
    """

    @app.post("/other")
    async def other() -> str:
        adb.async_session.add_all([Item(title="i"), Entry(text="e")])
        await adb.async_session.commit()
        return "ok"

    app.test_client().post("/other")
    engines = app.extensions["sessionext"].engines
    assert count_rows(engines["other"], "items") == 1
    assert count_rows(engines["other"], "entries") == 1
    with app.app_context():
        assert adb.get_async_engine("other") is async_engine(app, "other")
        assert adb.async_engines[None] is adb.async_engine
        with pytest.raises(
            KeyError, match=r"'missing'.*known bind keys are None, 'other'"
        ):
            adb.get_async_engine("missing")


def test_404_helpers(app: Flask, adb: SessionExt) -> None:
    """The async 404 helpers return the row, or abort with 404."""

    @app.get("/helpers")
    async def helpers() -> dict[str, str]:
        adb.async_session.add(User(name="ada"))
        await adb.async_session.commit()
        first = await adb.async_first_or_404(sa.select(User.name))
        one = await adb.async_one_or_404(sa.select(User.name))
        for call in (
            adb.async_get_or_404(User, 999),
            adb.async_first_or_404(sa.select(User).where(User.name == "x")),
            adb.async_one_or_404(sa.select(User).where(User.name == "x")),
            adb.async_get_or_404(User, 2**70),  # no query: out of range
        ):
            with pytest.raises(NotFound, match="404 Not Found"):
                await call
        return {"first": first, "one": one}

    assert app.test_client().get("/helpers").json == {"first": "ada", "one": "ada"}


def test_recorded_queries(app: Flask, adb: SessionExt) -> None:
    """The queries of an async session are recorded for its app context."""

    @app.get("/recorded")
    async def recorded() -> list[str]:
        await adb.async_session.execute(sa.select(User))
        return [q.statement.split()[0] for q in adb.get_recorded_queries()]

    assert app.test_client().get("/recorded").json == ["SELECT"]


def test_rollback_block(app: Flask, adb: SessionExt) -> None:
    """What async views commit in a rollback block is seen in the block and
    gone after it.
    """
    add_user_views(app, adb)
    engine = app.extensions["sessionext"].engines[None]
    with rollback(app):
        client = app.test_client()
        ident = client.post("/users/ada").json["id"]  # type: ignore[index]
        assert client.get(f"/users/{ident}").json == {"name": "ada"}
    assert count_rows(engine, "users") == 0
    assert checked_out(app) == 0


def test_rollback_fixture(
    app: Flask, adb: SessionExt, sessionext_rollback: Flask
) -> None:
    """The sessionext_rollback fixture covers async sessions."""
    add_user_views(app, adb)
    ident = app.test_client().post("/users/ada").json["id"]  # type: ignore[index]
    assert app.test_client().get(f"/users/{ident}").json == {"name": "ada"}


def test_sync_requests_pay_nothing(app: Flask, adb: SessionExt) -> None:
    """A Flask app gets no async teardown, and a sync request creates no async
    engine nor session.
    """

    @app.get("/sync")
    def sync() -> str:
        adb.session.execute(sa.select(1))
        return "ok"

    app.test_client().get("/sync")
    assert not any(
        inspect.iscoroutinefunction(func) for func in app.teardown_appcontext_funcs
    )
    runtime = app.extensions["sessionext"]
    assert runtime._async_state is None  # no async engine was even created
    assert not runtime.has_async_sessions()


def test_outside_app_context(adb: SessionExt) -> None:
    """db.async_session outside an app context names the fix."""
    with pytest.raises(RuntimeError, match=r"app\.app_context"):
        adb.async_session  # noqa: B018


def test_missing_async_driver(tmp_path: Path) -> None:
    """A bind whose async driver is not installed has no async engine, and
    asking for it says what to install.
    """
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["SESSIONEXT_BINDS"] = {
        "pg": {
            "url": "postgresql+psycopg://u@127.0.0.1/d",
            "async_url": URL.create("postgresql+asyncpg", "u", "secret", "127.0.0.1"),
        }
    }
    db = SessionExt(app)
    with app.app_context():
        assert "pg" not in db.async_engines
        with pytest.raises(RuntimeError, match="pip install asyncpg") as info:
            db.get_async_engine("pg")
    assert "secret" not in str(info.value)


def test_not_an_app() -> None:
    """init_app on an object that is neither a Flask nor a Quart app is a
    TypeError.
    """
    with pytest.raises(
        TypeError, match=r"flask\.Flask or quart\.Quart app, not builtins\.object"
    ):
        SessionExt().init_app(t.cast(Flask, object()))


def test_session_closed_at_the_end_of_its_loop(app: Flask, adb: SessionExt) -> None:
    """A view's session is closed on the view's own loop when the view
    returns, not on a loop of the teardown's.
    """
    threads: list[threading.Thread] = []

    def removed(sender: Flask, **kwargs: object) -> None:
        threads.append(threading.current_thread())

    @app.get("/open")
    async def left_open() -> str:
        await adb.async_session.execute(sa.select(User))  # a transaction stays
        threads.append(threading.current_thread())
        return "ok"

    with signals.session_removed.connected_to(removed, app):
        app.test_client().get("/open")
    assert len(threads) == 2
    assert threads[0] is threads[1]
    assert checked_out(app) == 0


def test_check_command(app: Flask, adb: SessionExt, database: str) -> None:
    """``flask sessionext check --async`` checks the async engines too."""
    result = app.test_cli_runner().invoke(args=["sessionext", "check", "--async"])
    assert result.exit_code == 0, result.output
    labels = [line.split("  ")[0].strip() for line in result.output.splitlines()]
    assert labels == ["(default)", "other", "(default) (async)", "other (async)"]
    assert all(database in line for line in result.output.splitlines())


def test_liveness_check_on_async_psycopg(
    app: Flask, adb: SessionExt, database: str
) -> None:
    """A pooled async psycopg connection that the server closed is replaced
    at checkout, by the liveness check, without pool_pre_ping.
    """
    if database != "postgresql":
        pytest.skip("the liveness check is psycopg's")
    pids: list[int] = []

    @app.get("/pid")
    async def pid() -> str:
        result = await adb.async_session.execute(sa.text("SELECT pg_backend_pid()"))
        pids.append(result.scalar_one())
        return "ok"

    engine = async_engine(app).sync_engine
    assert not t.cast(t.Any, engine.pool)._pre_ping
    client = app.test_client()
    assert client.get("/pid").status_code == 200
    with app.extensions["sessionext"].engines[None].connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
    assert client.get("/pid").status_code == 200
    assert pids[1] != pids[0]


def test_signals_connected_before_the_async_engines(
    app: Flask, adb: SessionExt
) -> None:
    """Engine listeners installed before the async engines exist are
    installed on them when they are created.
    """
    statements: list[object] = []

    def receive(sender: Flask, **kwargs: object) -> None:
        statements.append(kwargs["bind_key"])

    @app.get("/select")
    async def select() -> str:
        await adb.async_session.execute(sa.select(User))
        return "ok"

    assert app.extensions["sessionext"]._async_state is None
    with signals.before_cursor_execute.connected_to(receive, app):
        app.test_client().get("/select")
    assert statements == [None]


def test_without_greenlet() -> None:
    """Without greenlet (the core dependencies only), the package imports
    and serves sync sessions; the first async use names the extra to
    install.
    """
    out = run_python(
        textwrap.dedent(
            """
            import sys
            sys.modules["greenlet"] = None  # not installed
            import pytest
            import sqlalchemy as sa
            from flask import Flask
            from flask_sessionext import SessionExt

            app = Flask(__name__)
            app.config["SESSIONEXT_DATABASE_URI"] = "sqlite://"
            db = SessionExt(app)
            with app.app_context():
                assert db.session.execute(sa.text("SELECT 1")).scalar() == 1
                with pytest.raises(ImportError, match=r"Flask-SessionExt\\[async\\]"):
                    db.async_session
            print("ok")
            """
        )
    )
    assert out.strip() == "ok"
