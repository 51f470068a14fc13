"""The private names of SQLAlchemy that this package relies on, in one place.

Each has no public alternative; ``tests/test_sqlalchemy_private.py`` fails loudly when
SQLAlchemy changes one of them.
"""

from __future__ import annotations

import importlib
import threading
import typing as t
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.engine.base import OptionEngine, RootTransaction
from sqlalchemy.engine.events import ConnectionEvents, DialectEvents

_T = t.TypeVar("_T")


class Block(t.Protocol):
    """What a rollback block of :mod:`flask_sessionext.testing` gives the
    connections joined to it.
    """

    @property
    def savepoints(self) -> Iterator[int]:
        """Numbers for the names of its SAVEPOINTs."""

    @property
    def connections(self) -> t.Any:
        """The joined connections to close at the end of the block."""


def all_registries() -> list[orm.registry]:
    """Every declarative registry of the process.

    ``db.metadatas`` puts the table of a class with ``__bind_key__`` in that
    bind's metadata, but a MetaData does not know the declarative base that
    fills it, and SQLAlchemy has no public list of its registries
    (``sqlalchemy.orm.mapper._all_registries``).
    """
    mapperlib = importlib.import_module("sqlalchemy.orm.mapper")
    return list(mapperlib._all_registries())


def in_transaction_block(session: orm.Session) -> bool:
    """Whether ``session`` is inside a ``with session.begin():`` block (or a
    ``begin_nested()`` one), which owns its transaction.
    """
    return session._trans_context_manager is not None


@contextmanager
def outside_transaction_block(session: orm.Session) -> Iterator[None]:
    """Let ``session`` be used while the ``with session.begin():`` block whose
    transaction just committed is still exiting.

    SQLAlchemy refuses any use of a session between the commit of a
    ``with session.begin():`` block and the end of its ``__exit__``
    ("Can't operate on closed transaction inside context manager"), and it
    offers no event after that ``__exit__``. ``on_commit`` callbacks run once
    the commit is complete, at the end of the committed transaction, and must
    be able to use the session: for their duration the session is taken out
    of the block (``Session._trans_context_manager``), then put back, so the
    block's own ``__exit__`` finishes as usual.
    """
    block: t.Any = session._trans_context_manager
    if block is None:
        yield
        return
    session._trans_context_manager = None
    try:
        yield
    finally:
        session._trans_context_manager = block


def _event_names(events: type) -> tuple[str, ...]:
    return tuple(
        name for name in vars(events) if not name.startswith("_") and name != "dispatch"
    )


_CONNECTION_EVENTS = _event_names(ConnectionEvents)
_DIALECT_EVENTS = _event_names(DialectEvents)


def clear_event_flags(engine: sa.Engine) -> None:
    """Put ``engine`` back on SQLAlchemy's fast path once it has no listener.

    The first connection (dialect) event listener on an engine sets the
    instance attribute ``_has_events`` that makes every statement dispatch
    the engine's (dialect's) events, and removing the listener does not
    clear it. Without this, a receiver that connected once would cost every
    later statement something, for good.

    The instance attribute is removed rather than set to ``False``: a library
    that later listens on the ``Engine`` (or ``Dialect``) class, as
    sentry-sdk does, sets ``_has_events`` on the class, and the class value
    must show through.
    """
    if not any(getattr(engine.dispatch, name) for name in _CONNECTION_EVENTS):
        vars(engine).pop("_has_events", None)
    dialect = engine.dialect
    if not any(getattr(dialect.dispatch, name) for name in _DIALECT_EVENTS):
        vars(dialect).pop("_has_events", None)


def refuse_commit(connection: sa.Connection, message: str) -> None:
    """Make ``connection.commit()`` raise ``RuntimeError(message)`` until
    :func:`allow_commit`, leaving its transaction as it is. Only the
    connection's own ``commit()`` method is shadowed, on this instance: a
    session commits through the ``Transaction`` objects it began, never
    through it.
    """

    def commit() -> None:
        raise RuntimeError(message)

    connection.commit = commit  # type: ignore[method-assign]


def allow_commit(connection: sa.Connection) -> None:
    """Undo :func:`refuse_commit`."""
    vars(connection).pop("commit", None)


class JoinedConnection(sa.Connection):
    """What ``engine.connect()`` returns during a block: a connection on the
    outer connection's DBAPI connection, whose transaction is a SAVEPOINT in
    the outer transaction.

    Its ``begin()`` (or autobegin), ``commit()`` and ``rollback()`` emit
    ``SAVEPOINT``, ``RELEASE SAVEPOINT`` and ``ROLLBACK TO SAVEPOINT``, so the
    connection events report SAVEPOINTs where production reports ``BEGIN``,
    ``COMMIT`` and ``ROLLBACK``. ``close()`` rolls back a SAVEPOINT left open,
    and leaves the DBAPI connection to the outer connection.

    This overrides ``Connection._begin_impl()``, ``_commit_impl()`` and
    ``_rollback_impl()``, and calls the ``_*savepoint_impl()`` methods, which
    SQLAlchemy has had since 1.x but are not public API; the tests of
    :mod:`flask_sessionext.testing` run every one of those paths, and
    ``tests/test_sqlalchemy_private.py`` checks that they exist.
    """

    def __init__(self, engine: JoinedEngine) -> None:
        self._sessionext_block = engine.block
        self._sessionext_savepoint: str | None = None
        super().__init__(engine, engine.outer.connection, _allow_revalidate=False)
        engine.block.connections.add(self)

    def _begin_impl(self, transaction: RootTransaction) -> None:
        name = f"sessionext_{next(self._sessionext_block.savepoints)}"
        # The SAVEPOINT runs before the connection has a transaction, and must
        # not autobegin one (SQLAlchemy guards its BEGIN with a private flag).
        self._allow_autobegin = False
        try:
            self._sessionext_savepoint = self._savepoint_impl(name)
        finally:
            self._allow_autobegin = True

    def _commit_impl(self) -> None:
        name, self._sessionext_savepoint = self._sessionext_savepoint, None
        if name is not None:
            self._release_savepoint_impl(name)

    def _rollback_impl(self) -> None:
        name, self._sessionext_savepoint = self._sessionext_savepoint, None
        if name is not None and self._still_open_and_dbapi_connection_is_valid:
            self._rollback_to_savepoint_impl(name)
            self._release_savepoint_impl(name)

    def close(self) -> None:
        """Roll back this connection's SAVEPOINT if it is still open; the DBAPI
        connection stays with the outer connection.
        """
        try:
            if self._transaction is not None:
                self._transaction.close()
        finally:
            self._dbapi_connection = None


class JoinedEngine(OptionEngine):
    """An app's engine as :attr:`SessionExt.engine` and friends return it
    during a block: it shares the pool, dialect, events and options of the
    app's engine, and its :meth:`connect` returns a :class:`JoinedConnection`
    on ``outer``. So do engines made from it by ``execution_options()``.
    """

    _connection_cls = JoinedConnection
    outer: sa.Connection
    block: Block

    def __init__(
        self,
        proxied: sa.Engine,
        execution_options: Mapping[str, t.Any],
        joined: tuple[sa.Connection, Block] | None = None,
    ) -> None:
        super().__init__(proxied, execution_options)
        if joined is None:
            assert isinstance(proxied, JoinedEngine)
            joined = (proxied.outer, proxied.block)
        self.outer, self.block = joined


JoinedEngine._option_cls = JoinedEngine


def thread_safe_queue() -> type[t.Any]:
    """The thread-safe queue class of ``QueuePool``
    (``sqlalchemy.util.queue.Queue``), for the pool of async engines under
    Flask (:class:`~._engines.async_engines.ThreadedAsyncPool`):
    ``AsyncAdaptedQueuePool``'s ``asyncio.Queue`` is for one loop in one
    thread, and SQLAlchemy has no public pool for connections that loops of
    several threads use in turn.
    """
    queue = importlib.import_module("sqlalchemy.util.queue")
    cls: type[t.Any] = queue.Queue
    return cls


def async_pool_dialect() -> t.Any:
    """What ``AsyncAdaptedQueuePool`` resets and closes its connections
    with (``_dialect``, an ``_AsyncConnDialect``): without it, a pool of an
    async engine that was not made by the engine's dialect could not close
    an async driver's connection.
    """
    from sqlalchemy.pool import AsyncAdaptedQueuePool

    return AsyncAdaptedQueuePool._dialect


def in_greenlet() -> bool:
    """Whether the code runs in the greenlet in which SQLAlchemy's asyncio
    extension runs a sync session's work (``sqlalchemy.util.in_greenlet``):
    there, :func:`await_in_greenlet` waits for a coroutine on the running
    loop. SQLAlchemy documents the pair for its own dialects only.
    """
    from sqlalchemy.util import concurrency

    return bool(concurrency.in_greenlet())


def await_in_greenlet(awaitable: t.Awaitable[_T]) -> _T:
    """Wait for ``awaitable`` on the running loop, from sync code in the
    greenlet of an async session (``sqlalchemy.util.await_only``, the name
    that SQLAlchemy 2.0 and 2.1 both have).
    """
    from sqlalchemy.util import concurrency

    result: _T = concurrency.await_only(awaitable)
    return result


def lock_first_connect_with_threads(pool: sa.Pool) -> None:
    """Make the connections of ``pool`` that threads open together wait for
    the first one's ``connect`` listeners (the dialect's initialisation)
    with a thread lock.

    SQLAlchemy makes that lock (the ``_exec_once_mutex`` of the pool's
    ``connect`` listeners) an ``asyncio.Lock`` for a pool of an async
    engine, which belongs to one loop; the connections of a Flask app's
    async engine are opened by the loops of several threads.
    """
    collection: t.Any = pool.dispatch.connect.for_modify(pool.dispatch)
    collection._exec_once_mutex = threading.Lock()
