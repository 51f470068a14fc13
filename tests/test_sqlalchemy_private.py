"""The private names of SQLAlchemy that ``flask_sessionext._sqlalchemy_private`` relies
on still mean what it takes them to mean; a failure here names the change.
"""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.ctx import AppContext
from sqlalchemy import event, orm

from flask_sessionext import SessionExt, signals
from flask_sessionext._sqlalchemy_private import (
    all_registries,
    allow_commit,
    outside_transaction_block,
    refuse_commit,
)

from models import Base


def test_transaction_block_attribute(app_ctx: AppContext, db: SessionExt) -> None:
    """``with session.begin():`` sets ``Session._trans_context_manager`` and
    refuses use after its commit until the block exits, which
    ``outside_transaction_block`` lifts.
    """
    assert "_trans_context_manager" in vars(orm.Session), (
        "SQLAlchemy no longer has Session._trans_context_manager:"
        " update flask_sessionext._sqlalchemy_private.outside_transaction_block"
    )
    session = db.session()
    with session.begin() as transaction:
        assert session._trans_context_manager is transaction
        transaction.commit()
        with pytest.raises(
            sa.exc.InvalidRequestError,
            match="closed transaction inside context manager",
        ):
            session.scalar(sa.select(1))
        with outside_transaction_block(session):
            assert session.scalar(sa.select(1)) == 1
        assert session._trans_context_manager is transaction
    assert session._trans_context_manager is None


def test_class_listener_after_receiver_came_and_went(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener added on the ``Engine`` class after a connection-signal
    receiver came and went still fires, as sentry-sdk's does.
    """
    app.config["SESSIONEXT_RECORD_QUERIES"] = False
    db = SessionExt(app)
    with app.app_context():
        engine = db.engine
    with signals.before_cursor_execute.connected_to(
        lambda sender, **kwargs: None, sender=app
    ):
        assert vars(engine)["_has_events"] is True
    assert "_has_events" not in vars(engine)
    assert engine._has_events is False
    # SQLAlchemy never resets the class flag: restore it after the test.
    monkeypatch.setattr(sa.Engine, "_has_events", sa.Engine._has_events)
    statements: list[str] = []

    def listener(
        conn: sa.Connection, cursor: object, statement: str, *args: object
    ) -> None:
        statements.append(statement)

    event.listen(sa.Engine, "before_cursor_execute", listener)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 42"))
    finally:
        event.remove(sa.Engine, "before_cursor_execute", listener)
    engine.dispose()
    assert statements == ["SELECT 42"]


def test_all_registries(db: SessionExt) -> None:
    """``all_registries()`` lists the registry of every declarative base."""
    assert Base.registry in all_registries(), (
        "sqlalchemy.orm.mapper._all_registries changed:"
        " update flask_sessionext._sqlalchemy_private.all_registries"
    )


def test_connection_commit_refused_per_instance(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """A ``Connection`` takes a ``commit`` attribute of its own, which
    ``refuse_commit`` relies on, and the session's commit does not call it.
    """
    connection = db.session.connection()
    assert hasattr(connection, "__dict__"), (
        "sqlalchemy.Connection has __slots__ now:"
        " update flask_sessionext._sqlalchemy_private.refuse_commit"
    )
    refuse_commit(connection, "refused")
    with pytest.raises(RuntimeError, match=r"^refused$"):
        connection.commit()
    db.session.commit()
    allow_commit(connection)
    assert "commit" not in vars(connection)


@pytest.mark.parametrize(
    "name",
    [
        "_begin_impl",
        "_commit_impl",
        "_rollback_impl",
        "_savepoint_impl",
        "_release_savepoint_impl",
        "_rollback_to_savepoint_impl",
        "_allow_autobegin",
        "_still_open_and_dbapi_connection_is_valid",
        "_transaction",
        "_dbapi_connection",
    ],
)
def test_joined_connection_names(name: str) -> None:
    """``Connection`` still has the private methods and attributes that
    ``JoinedConnection`` overrides or calls, and ``Engine`` the connection
    and option classes that ``JoinedEngine`` replaces.
    """
    slots_and_attrs = set(dir(sa.Connection)) | set(
        getattr(sa.Connection, "__slots__", ())
    )
    assert (
        name in slots_and_attrs or name in sa.Connection.__init__.__code__.co_names
    ), (
        f"SQLAlchemy's Connection no longer has {name!r}: update"
        " flask_sessionext._sqlalchemy_private.JoinedConnection"
    )
    assert "_connection_cls" in vars(sa.Engine)
    assert "_option_cls" in vars(sa.Engine)


def test_async_pool_names() -> None:
    """``sqlalchemy.util.queue.Queue`` is a thread-safe queue class,
    ``AsyncAdaptedQueuePool._dialect`` closes async connections, and a pool's
    ``connect`` listeners keep the first-connect lock they are given.
    """
    from flask_sessionext._sqlalchemy_private import (
        async_pool_dialect,
        lock_first_connect_with_threads,
        thread_safe_queue,
    )

    queue = thread_safe_queue()(maxsize=1)
    queue.put(1)
    assert queue.get() == 1, "update _sqlalchemy_private.thread_safe_queue"
    assert hasattr(async_pool_dialect(), "do_close"), (
        "update _sqlalchemy_private.async_pool_dialect"
    )
    pool = sa.pool.NullPool(t.cast(t.Any, lambda: None))
    lock_first_connect_with_threads(pool)
    collection: t.Any = pool.dispatch.connect.for_modify(pool.dispatch)
    assert collection._get_exec_once_mutex() is collection._exec_once_mutex, (
        "update _sqlalchemy_private.lock_first_connect_with_threads"
    )


def test_greenlet_names() -> None:
    """``sqlalchemy.util`` tells whether code runs in an async session's
    greenlet, and awaits a coroutine from there.
    """
    import asyncio

    from sqlalchemy.util.concurrency import greenlet_spawn

    from flask_sessionext._sqlalchemy_private import await_in_greenlet, in_greenlet

    async def three() -> int:
        return 3

    def in_session() -> tuple[bool, int]:
        return in_greenlet(), await_in_greenlet(three())

    async def main() -> tuple[bool, int]:
        return await greenlet_spawn(in_session)

    assert not in_greenlet()
    assert asyncio.run(main()) == (True, 3)
