"""The async half of the :class:`~flask_sessionext.SessionExt` facade:
async engines, the app context's ``AsyncSession`` and its helpers.

The machinery is in :mod:`._session.async_session` and
:mod:`._engines.async_engines`; this module only reaches it through the
current app's runtime.
"""

from __future__ import annotations

import typing as t
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import abort

from ._config.settings import commit_on_teardown
from ._session.async_session import AsyncState
from ._session.integer_range import ident_out_of_range, statement_out_of_range
from ._session.session import app_ctx_scope
from ._sqlalchemy_private import in_transaction_block

if t.TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.util import ScopedRegistry

    from ._runtime import Runtime
    from ._session.session import Session

_O = t.TypeVar("_O")

#: ``session.info`` key of the depth of :meth:`AsyncMethods.async_transaction`
#: blocks, as ``transaction()`` keeps it for the sync session.
_DEPTH = "sessionext.transaction_depth"


class AsyncMethods:
    """What :class:`~flask_sessionext.SessionExt` offers async code."""

    if t.TYPE_CHECKING:

        def _current_state(self) -> Runtime: ...

        def _get_state(self, app: t.Any) -> Runtime: ...

        def _session_registry(self) -> ScopedRegistry[Session]: ...

    def _async_state(self) -> AsyncState:
        return self._current_state().async_state

    @property
    def async_engines(self) -> Mapping[str | None, AsyncEngine]:
        """The current app's async engines by bind key, a read-only mapping;
        ``None`` is the default bind. A bind whose async driver is not
        installed has none.

        :raise RuntimeError: no application context is pushed.
        """
        return self._async_state().engines

    @property
    def async_engine(self) -> AsyncEngine:
        """The current app's default async engine.

        :raise RuntimeError: no application context is pushed, or the
            default bind has no async engine (the message says why).
        """
        return self._async_state().engine(None)

    def get_async_engine(self, bind_key: str | None = None) -> AsyncEngine:
        """The current app's async engine for ``bind_key``.

        :param bind_key: a key of ``SESSIONEXT_BINDS``; ``None`` for the
            default bind.
        :raise KeyError: the app has no such bind; the message lists the
            known keys.
        :raise RuntimeError: the bind has no async engine (the message says
            why and what to install).
        """
        return self._async_state().engine(bind_key)

    @property
    def async_sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """The current app's async sessionmaker, for sessions of your own
        (``async with db.async_sessionmaker() as session:``); they route
        binds, and fire every signal, as :attr:`async_session` does.

        :raise RuntimeError: no application context is pushed.
        """
        return self._async_state().sessionmaker

    @property
    def async_session(self) -> AsyncSession:
        """The :class:`~sqlalchemy.ext.asyncio.AsyncSession` of the current
        app context, created at its first use and closed when the context
        ends (committed first with ``SESSIONEXT_COMMIT_ON_TEARDOWN``)::

            @app.get("/users/<int:id>")
            async def user(id):
                user = await db.async_session.get(User, id)

        The same object for the whole request, another in every other app
        context. A request that never uses it pays nothing.

        :raise RuntimeError: no application context is pushed, or the
            default bind has no async engine.
        """
        ctx = app_ctx_scope()
        return self._get_state(ctx.app).async_state.session(ctx)

    def on_async_commit(
        self, func: t.Callable[..., t.Any], /, *args: t.Any, **kwargs: t.Any
    ) -> None:
        """:meth:`~flask_sessionext.SessionExt.on_commit` for
        :attr:`async_session`: call ``func(*args, **kwargs)`` after its
        current transaction commits. An ``async def`` ``func`` runs on the
        session's loop.

        :raise RuntimeError: no application context is pushed.
        """
        state = self._current_state()
        state.on_commit(self.async_session.sync_session, (func, args, kwargs))

    @asynccontextmanager
    async def async_transaction(self) -> AsyncIterator[AsyncSession]:
        """:meth:`~flask_sessionext.SessionExt.transaction` on
        :attr:`async_session`: the outermost block commits on success and
        rolls back on any exception; a nested block is a SAVEPOINT::

            async with db.async_transaction() as session:
                session.add(order)

        :raise RuntimeError: no application context is pushed.
        """
        session = self.async_session
        info = session.sync_session.info
        depth: int = info.get(_DEPTH, 0)
        info[_DEPTH] = depth + 1
        try:
            if depth or in_transaction_block(session.sync_session):
                async with session.begin_nested():
                    yield session
            else:
                try:
                    yield session
                    await session.commit()
                except BaseException:
                    await session.rollback()
                    raise
        finally:
            info[_DEPTH] = depth

    async def async_get_or_404(
        self, entity: type[_O], ident: t.Any, *, description: str | None = None
    ) -> _O:
        """``await async_session.get(entity, ident)``, or abort with 404 when
        there is no such row (see
        :meth:`~flask_sessionext.SessionExt.get_or_404`).
        """
        session = self.async_session
        if ident_out_of_range(session.sync_session, entity, ident):
            abort(404, description=description)
        value = await session.get(entity, ident)
        if value is None:
            abort(404, description=description)
        return value

    async def async_first_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """The first result of ``statement`` on :attr:`async_session`, or
        abort with 404 when it returns no row.
        """
        session = self.async_session
        if statement_out_of_range(session.sync_session, statement):
            abort(404, description=description)
        value = (await session.execute(statement)).scalar()
        if value is None:
            abort(404, description=description)
        return value

    async def async_one_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """The only result of ``statement`` on :attr:`async_session`, or
        abort with 404 when it returns no row or several rows.
        """
        session = self.async_session
        if statement_out_of_range(session.sync_session, statement):
            abort(404, description=description)
        try:
            return (await session.execute(statement)).scalar_one()
        except (sa_exc.NoResultFound, sa_exc.MultipleResultsFound):
            abort(404, description=description)

    async def _teardown_session_async(self, exc: BaseException | None) -> None:
        """Quart's teardown: close the context's async session on the app's
        loop, then remove its sync session.
        """
        ctx = app_ctx_scope()
        state = self._get_state(ctx.app)
        if state.has_async_sessions():
            await state.async_state.aremove(ctx, exc, commit_on_teardown(ctx.app))
        state.remove_session(ctx, self._session_registry(), exc)
