"""The extension on a Quart app: async and sync sessions per app context,
teardown on Quart's loop, signals sent by the Quart app, on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from quart import Quart
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import AsyncAdaptedQueuePool

from flask_sessionext import SessionExt, signals
from flask_sessionext.testing import capture_signal

from helpers import count_rows
from models import Base, Item, OtherBase, User


@pytest.fixture
def quart_app(database_uris: dict[str | None, str], tmp_path: Path) -> Iterator[Quart]:
    """A Quart app with the extension, its tables created, and dropped and
    its engines disposed after the test.
    """
    app = Quart(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True,
        SESSIONEXT_DATABASE_URI=database_uris[None],
        SESSIONEXT_BINDS={"other": database_uris["other"]},
    )
    SessionExt(app)
    runtime = app.extensions["sessionext"]
    engines = runtime.engines
    Base.metadata.create_all(engines[None])
    OtherBase.metadata.create_all(engines["other"])
    yield app
    Base.metadata.drop_all(engines[None])
    OtherBase.metadata.drop_all(engines["other"])
    for engine in engines.values():
        engine.dispose()

    async def dispose() -> None:
        for engine in runtime.async_state.engines.values():
            await engine.dispose()

    asyncio.run(dispose())


def db_of(app: Quart) -> SessionExt:
    """The extension of ``app``."""
    db: SessionExt = app.extensions["sessionext"].extension
    return db


def checked_out(app: Quart) -> int:
    """How many connections of ``app``'s engines are checked out."""
    runtime = app.extensions["sessionext"]
    engines = [*runtime.engines.values()]
    engines += [e.sync_engine for e in runtime.async_state.engines.values()]
    return sum(t.cast(t.Any, engine.pool).checkedout() for engine in engines)


def test_crud_and_signals(quart_app: Quart) -> None:
    """Quart views create and read through db.async_session, models_committed
    is sent by the Quart app, and no connection stays checked out.
    """
    db = db_of(quart_app)

    @quart_app.post("/users/<name>")
    async def create(name: str) -> dict[str, int]:
        user = User(name=name)
        db.async_session.add(user)
        await db.async_session.commit()
        return {"id": user.id}

    @quart_app.get("/users/<int:ident>")
    async def read(ident: int) -> dict[str, str]:
        user = await db.async_get_or_404(User, ident)
        return {"name": user.name}

    async def main() -> None:
        client = quart_app.test_client()
        with capture_signal(signals.models_committed, quart_app) as sent:
            ident = (await (await client.post("/users/ada")).get_json())["id"]
        assert [sender for sender, _ in sent] == [quart_app]
        assert await (await client.get(f"/users/{ident}")).get_json() == {"name": "ada"}
        assert (await client.get("/users/999")).status_code == 404

    asyncio.run(main())
    assert checked_out(quart_app) == 0
    pool = quart_app.extensions["sessionext"].async_state.engines[None].sync_engine.pool
    assert type(pool) is AsyncAdaptedQueuePool


def test_concurrent_requests(quart_app: Quart) -> None:
    """Concurrent Quart requests each keep one session across their awaits,
    each a different one.
    """
    db = db_of(quart_app)
    sessions: list[AsyncSession] = []

    @quart_app.get("/slow")
    async def slow() -> str:
        session = db.async_session
        await session.execute(sa.select(User))
        await asyncio.sleep(0.01)
        assert db.async_session is session
        sessions.append(session)
        return "ok"

    async def main() -> None:
        client = quart_app.test_client()
        responses = await asyncio.gather(*(client.get("/slow") for _ in range(5)))
        assert [response.status_code for response in responses] == [200] * 5

    asyncio.run(main())
    assert len({id(session) for session in sessions}) == 5
    assert checked_out(quart_app) == 0


def test_sync_session_and_bind_keys(quart_app: Quart) -> None:
    """The sync db.session works in a Quart view, and both sessions route
    models of another bind to it.
    """
    db = db_of(quart_app)

    @quart_app.post("/items")
    async def items() -> dict[str, int]:
        db.async_session.add(Item(title="async"))
        await db.async_session.commit()
        db.session.add(Item(title="sync"))
        db.session.commit()
        return {"users": len(db.session.scalars(sa.select(User)).all())}

    async def main() -> None:
        response = await quart_app.test_client().post("/items")
        assert await response.get_json() == {"users": 0}

    asyncio.run(main())
    assert count_rows(quart_app.extensions["sessionext"].engines["other"], "items") == 2
    assert checked_out(quart_app) == 0


def test_async_receivers_and_on_commit(quart_app: Quart) -> None:
    """Async receivers and async on_commit callbacks run on Quart's loop, in
    the app context.
    """
    db = db_of(quart_app)
    ran: list[str] = []

    async def receive(sender: Quart, changes: list[tuple[object, str]]) -> None:
        assert db.async_session is not None  # the app context is there
        ran.append("receiver")

    async def callback() -> None:
        ran.append("callback")

    @quart_app.post("/add")
    async def add() -> str:
        db.async_session.add(User(name="ada"))
        db.on_async_commit(callback)
        await db.async_session.commit()
        return "ok"

    async def main() -> None:
        with signals.models_committed.connected_to(receive, quart_app):
            assert (await quart_app.test_client().post("/add")).status_code == 200

    asyncio.run(main())
    assert ran == ["receiver", "callback"]


def test_teardown_commit(quart_app: Quart) -> None:
    """With SESSIONEXT_COMMIT_ON_TEARDOWN the async session is committed at
    Quart's teardown, and session_removed is sent.
    """
    db = db_of(quart_app)
    quart_app.config["SESSIONEXT_COMMIT_ON_TEARDOWN"] = True

    @quart_app.post("/add")
    async def add() -> str:
        db.async_session.add(User(name="ada"))
        return "ok"

    async def main() -> None:
        with capture_signal(signals.session_removed, quart_app) as removed:
            await quart_app.test_client().post("/add")
        assert [type(kwargs["session"]) for _, kwargs in removed] == [AsyncSession]

    asyncio.run(main())
    assert count_rows(quart_app.extensions["sessionext"].engines[None], "users") == 1
