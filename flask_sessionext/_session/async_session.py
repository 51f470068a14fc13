"""The async side of one app: its async engines, its async sessionmaker, and
the :class:`~sqlalchemy.ext.asyncio.AsyncSession` of each app context.

An ``AsyncSession`` runs a sync ``Session`` in a greenlet and waits for the
driver on the running loop. Its sync session is of the app's async Session
class, a subclass of the app's own Session class: the class-level listeners
of the features (signals, model changes, ``on_commit``, recording, ...) are
SQLAlchemy class listeners, which apply to subclasses, so every feature works
for async sessions as for sync ones. The subclass differs in one thing: it
routes each bind to the sync engine under that bind's async engine.

The session of an app context is created on first use and closed at the
context's teardown. Under Flask the teardown is sync, and comes after the
view's loop has closed: a session created on a loop is closed at the end of
that loop, on it (unless it must commit at teardown); one that the teardown
still finds is closed on a loop of its own (:func:`run_to_completion`) if it
holds a transaction, else on the spot, with no I/O. Quart awaits the close
in its teardown. A request that never used the async session pays one test
of an empty dict.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import typing as t
from collections.abc import Coroutine, Mapping
from types import MappingProxyType

import sqlalchemy as sa

from .._config.settings import Settings, commit_on_teardown
from .._engines.async_engines import (
    AsyncEngines,
    asyncio_extension,
    create_async_engines,
)
from .._receivers.calls import report
from ..signals import session_created, session_removed
from .session import BindRouter, Session, unknown_bind

if t.TYPE_CHECKING:
    # Imported where used: sqlalchemy.ext.asyncio needs greenlet, which
    # only the 'async' extra installs.
    from flask import Flask
    from flask.ctx import AppContext
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncEngine,
        AsyncSession,
        async_sessionmaker,
    )

_T = t.TypeVar("_T")

#: The async sessionmaker's defaults; ``SESSIONEXT_SESSION_OPTIONS`` wins.
#: Expiring on commit would make the next attribute access load, which an
#: async session cannot do implicitly.
ASYNC_SESSION_DEFAULTS: Mapping[str, t.Any] = MappingProxyType(
    {"expire_on_commit": False}
)


def make_async_session_class(
    session_class: type[Session], engines: Mapping[str | None, AsyncEngine]
) -> type[Session]:
    """The class of the sync sessions under the app's async sessions: the
    app's Session class, routing to the async engines' sync engines.
    """
    router = BindRouter({key: e.sync_engine for key, e in engines.items()})
    router.user_binds = session_class._sessionext_router.user_binds
    namespace = {"_sessionext_router": router}
    return t.cast(type[Session], type("AsyncSyncSession", (session_class,), namespace))


class AsyncState:
    """The async engines, sessionmaker and sessions of one app."""

    def __init__(
        self, settings: Settings, session_class: type[Session], *, threads: bool
    ) -> None:
        """Create the async engines (opening no connection) and the async
        sessionmaker.

        :param threads: whether each view runs on a loop and in a thread of
            its own (Flask) rather than on one loop (Quart).
        """
        created: AsyncEngines = create_async_engines(settings, threads=threads)
        #: The async engines by bind key, a read-only mapping.
        self.engines: Mapping[str | None, AsyncEngine] = MappingProxyType(
            dict(created.engines)
        )
        #: Why a bind has no async engine, by bind key.
        self.missing = created.missing
        self.sync_engines = created.sync_engines()
        self.session_class = make_async_session_class(session_class, self.engines)
        options = {
            **ASYNC_SESSION_DEFAULTS,
            **{k: v for k, v in settings.session_options.items() if k != "class_"},
        }
        make = asyncio_extension().async_sessionmaker
        self.sessionmaker: async_sessionmaker[AsyncSession] = make(
            bind=self.engines.get(None),
            sync_session_class=self.session_class,
            **options,
        )
        #: The AsyncSession of each app context that has one.
        self.sessions: dict[AppContext, AsyncSession] = {}
        #: Whether a rollback block runs (see :meth:`join`).
        self.joining = False
        #: During a block: the async connections that stand in for the async
        #: engines, each in an outer transaction, opened at the block's first
        #: async session; and the sessions created in the block.
        self.joined: dict[str | None, AsyncConnection] | None = None
        self.joined_sessions: list[AsyncSession] = []
        #: Whether each view runs on a loop of its own (Flask).
        self.threads = threads
        #: The tasks that close a session at the end of its loop (Flask).
        self.closers: set[asyncio.Task[None]] = set()

    def engine(self, key: str | None) -> AsyncEngine:
        """The async engine of bind ``key``.

        :raise KeyError: no bind has that key; the message lists the known ones.
        :raise RuntimeError: the bind has no async engine; the message says why.
        """
        try:
            return self.engines[key]
        except (KeyError, TypeError):  # TypeError: an unhashable key
            if key in self.missing:
                raise RuntimeError(self.missing[key]) from None
            raise KeyError(unknown_bind([*self.engines, *self.missing], key)) from None

    def session(self, ctx: AppContext) -> AsyncSession:
        """The AsyncSession of ``ctx``, created at its first use.

        :raise RuntimeError: the default bind has no async engine.
        """
        try:
            return self.sessions[ctx]
        except KeyError:
            pass
        self.engine(None)
        session = self._joined_session() if self.joining else self.sessionmaker()
        self.sessions[ctx] = session
        if session_created.receivers:
            report(session_created, ctx.app, session=session)
        if self.threads and not commit_on_teardown(ctx.app):
            self._close_with_loop(ctx, session)
        return session

    def _close_with_loop(self, ctx: AppContext, session: AsyncSession) -> None:
        """Under Flask, close ``session`` when the loop that created it ends
        (``asyncio.run``, which asgiref runs each ``async def`` view in,
        cancels the tasks left when the view returns), on that loop: its
        connection goes back to the pool without a loop of its own at
        teardown, and a session never outlives its loop.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # created by sync code: the teardown closes it
        task = loop.create_task(self._close_at_loop_end(ctx, session))
        self.closers.add(task)
        task.add_done_callback(self.closers.discard)

    async def _close_at_loop_end(self, ctx: AppContext, session: AsyncSession) -> None:
        try:
            await asyncio.get_running_loop().create_future()  # never set
        except asyncio.CancelledError:
            if self.sessions.get(ctx) is session:
                del self.sessions[ctx]
                await self._close(ctx.app, session, None, False)
            raise

    def _joined_session(self) -> AsyncSession:
        """A session of a rollback block, on the block's async connections."""
        if self.joined is None:
            self.joined = run_to_completion(_open_joined(self.engines))
            router = self.session_class._sessionext_router
            router.stand_ins = {
                self.engines[key].sync_engine: t.cast(
                    "sa.Connection", connection.sync_connection
                )  # set: the connection is open
                for key, connection in self.joined.items()
            }
        session = self.sessionmaker(
            bind=self.joined[None], join_transaction_mode="create_savepoint"
        )
        self.joined_sessions.append(session)
        return session

    def begin_join(self) -> None:
        """Join the async sessions created from now on to one outer
        transaction per bind, as :func:`flask_sessionext.testing.rollback`
        does for sync sessions (until :meth:`end_join`).
        """
        self.joining = True

    def end_join(self) -> None:
        """Close the sessions of the block, and roll back and close its
        outer connections.
        """
        self.joining = False
        sessions, self.joined_sessions = self.joined_sessions, []
        for ctx, session in list(self.sessions.items()):
            if session in sessions:
                del self.sessions[ctx]
        joined, self.joined = self.joined, None
        self.session_class._sessionext_router.stand_ins = {}
        if joined is not None:
            run_to_completion(_end_joined(sessions, joined))

    def remove(self, ctx: AppContext, exc: BaseException | None, commit: bool) -> None:
        """At the sync teardown of ``ctx`` (Flask): commit its session when
        ``commit`` says so and nothing failed, close it and forget it.
        """
        session = self.sessions.pop(ctx, None)
        if session is None:
            return
        if (commit and exc is None) or session.sync_session.get_transaction():
            run_to_completion(self._close(ctx.app, session, exc, commit))
        else:
            # No transaction: closing it only forgets its objects.
            session.sync_session.close()
            self._removed(ctx.app, session, exc)

    async def aremove(
        self, ctx: AppContext, exc: BaseException | None, commit: bool
    ) -> None:
        """At the async teardown of ``ctx`` (Quart): as :meth:`remove`."""
        session = self.sessions.pop(ctx, None)
        if session is not None:
            await self._close(ctx.app, session, exc, commit)

    async def _close(
        self,
        app: Flask,
        session: AsyncSession,
        exc: BaseException | None,
        commit: bool,
    ) -> None:
        try:
            if commit and exc is None:
                await session.commit()
        finally:
            try:
                await session.close()
            finally:
                self._removed(app, session, exc)

    def _removed(
        self, app: Flask, session: AsyncSession, exc: BaseException | None
    ) -> None:
        if session_removed.receivers:
            report(session_removed, app, session=session, exception=exc)


async def _open_joined(
    engines: Mapping[str | None, AsyncEngine],
) -> dict[str | None, AsyncConnection]:
    """One connection per engine, each in a transaction."""
    connections: dict[str | None, AsyncConnection] = {}
    for key, engine in engines.items():
        connection = connections[key] = await engine.connect()
        await connection.begin()
    return connections


async def _end_joined(
    sessions: list[AsyncSession], connections: Mapping[str | None, AsyncConnection]
) -> None:
    """Close ``sessions``, then roll back and close ``connections``."""
    try:
        for session in sessions:
            await session.close()
    finally:
        for connection in connections.values():
            await connection.close()  # rolls back its transaction


async def dispose_async(engines: list[AsyncEngine]) -> None:
    """Close the pooled connections of ``engines``."""
    for engine in engines:
        await engine.dispose()


def run_to_completion(coroutine: Coroutine[t.Any, t.Any, _T]) -> _T:
    """Run ``coroutine`` to completion from sync code: on a new loop, or,
    when a loop is running in this thread (sync code called from async code
    waits for it anyway), on a new loop in a thread of its own, with a copy
    of the caller's context.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    context = contextvars.copy_context()
    results: list[_T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(context.run(asyncio.run, coroutine))
        except BaseException as e:  # raised again in the caller's thread
            errors.append(e)

    thread = threading.Thread(target=target, name="sessionext-async close")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]
