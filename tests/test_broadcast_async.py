"""``SESSIONEXT_BROADCAST`` with async sessions: a commit of
``db.async_session`` publishes on its own connection, in Flask ``async def``
views and in a Quart app, whose receivers get the Quart app as sender.
"""

from __future__ import annotations

import asyncio
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from quart import Quart
from test_async import add_user_views
from test_broadcast import outbox_rows, the_listener, wait_for

from flask_sessionext import CommittedChange, SessionExt
from flask_sessionext._features.outbox import outbox_metadata
from flask_sessionext.signals import models_committed_anywhere

from models import Base, User


def dispose_all(app: Flask | Quart) -> None:
    """Drop the tables and dispose every engine of ``app``, async ones too."""
    runtime = app.extensions["sessionext"]
    engine = runtime.engines[None]
    Base.metadata.drop_all(engine)
    outbox_metadata.drop_all(engine)
    for each in runtime.engines.values():
        each.dispose()

    async def dispose() -> None:
        for each in runtime.async_state.engines.values():
            await each.dispose()

    asyncio.run(dispose())


@pytest.fixture(params=[Flask, Quart], ids=["flask", "quart"])
def async_app(
    request: pytest.FixtureRequest, database_uris: dict[str | None, str], tmp_path: Path
) -> Iterator[Flask | Quart]:
    """A Flask or Quart app with broadcast on, its tables and the outbox."""
    kind: type[Flask] | type[Quart] = request.param
    app = kind(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True,
        SESSIONEXT_DATABASE_URI=database_uris[None],
        SESSIONEXT_BROADCAST={"poll_interval": 0.02},
    )
    SessionExt(app)
    engine = app.extensions["sessionext"].engines[None]
    Base.metadata.create_all(engine)
    outbox_metadata.create_all(engine)
    yield app
    dispose_all(app)


def add_views(app: Flask | Quart) -> None:
    """The views of :func:`test_async.add_user_views` (``POST /users/<name>``
    commits through db.async_session), and ``POST /fail/<name>``, which
    flushes, then rolls back.
    """
    db: SessionExt = app.extensions["sessionext"].extension
    add_user_views(t.cast(Flask, app), db)

    @app.post("/fail/<name>")
    async def fail(name: str) -> dict[str, bool]:
        db.async_session.add(User(name=name))
        await db.async_session.flush()
        await db.async_session.rollback()
        return {"ok": True}


def post(app: Flask | Quart, path: str) -> t.Any:
    """POST ``path`` through the app's own test client; the JSON answer."""
    if isinstance(app, Quart):

        async def run() -> t.Any:
            response = await app.test_client().post(path)
            return await response.get_json()

        return asyncio.run(run())
    return app.test_client().post(path).json


def test_async_commits_publish_and_arrive(async_app: Flask | Quart) -> None:
    """A commit of db.async_session publishes (a rollback does not), and
    the receivers of the app, Flask or Quart, get it with the app as sender.
    """
    app = async_app
    add_views(app)
    got: list[tuple[object, list[CommittedChange]]] = []

    def receiver(sender: object, changes: list[CommittedChange], **kw: t.Any) -> None:
        got.append((sender, changes))

    with models_committed_anywhere.connected_to(receiver, app):
        the_listener(app)  # type: ignore[arg-type]
        post(app, "/fail/nobody")
        ident = post(app, "/users/ada")["id"]
        wait_for(lambda: len(got) == 1)
    ((sender, changes),) = got
    assert sender is app
    assert [(c.model, c.primary_key, c.operation) for c in changes] == [
        (User, (ident,), "insert")
    ]
    assert len(outbox_rows(app)) == 1  # type: ignore[arg-type]
    engine = app.extensions["sessionext"].engines[None]
    with engine.connect() as conn:
        names = conn.scalars(sa.select(User.name)).all()
    assert names == ["ada"]
