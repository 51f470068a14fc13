"""The app-context scope, the per-app Session class and its bind routing."""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask.ctx import AppContext
from flask.globals import _cv_app

NO_APP_CONTEXT = (
    "Working outside of an application context: there is no Session to use."
    " Push one with 'with app.app_context():', or use the session inside a"
    " request, a CLI command or a test client call."
)


def app_ctx_scope() -> AppContext:
    """The scope of :attr:`SessionExt.session`: the current app context itself.

    :raise RuntimeError: no application context is pushed.
    """
    ctx = _cv_app.get(None)
    if ctx is None:
        raise RuntimeError(NO_APP_CONTEXT)
    return ctx


class Session(orm.Session):
    """The Session of this package. Each app gets its own subclass, so its
    class-level event listeners stay its own.
    """


class _RoutingSession(Session):
    """The Session of an app with several binds: it carries the app's engines
    and routes each mapped class to its bind.
    """

    #: The app's engines by bind key, set on each app's subclass.
    _sessionext_engines: t.ClassVar[Mapping[str | None, sa.Engine]] = {}
    #: Mapper -> engine, filled on first use, for apps with several binds.
    _sessionext_bind_cache: t.ClassVar[dict[orm.Mapper[t.Any], sa.Engine]] = {}
    #: Engine -> the connection that stands in for it while
    #: :func:`flask_sessionext.testing.rollback` runs; empty otherwise.
    _sessionext_connections: t.ClassVar[dict[sa.Engine, sa.Connection]] = {}

    def get_bind(
        self,
        mapper: t.Any = None,
        *,
        clause: sa.ClauseElement | None = None,
        bind: sa.Engine | sa.Connection | None = None,
        **kwargs: t.Any,
    ) -> sa.Engine | sa.Connection:
        """Route a mapped class to the engine of its ``__bind_key__``, else of
        its table's ``MetaData(info={"bind_key": ...})``, else the default.
        """
        if bind is not None:
            return bind
        if len(self._sessionext_engines) > 1:
            engine = None
            if mapper is not None:
                engine = self._engine_for_mapper(mapper)
            elif clause is not None:
                engine = self._engine_for_clause(clause)
            if engine is not None:
                return self._sessionext_connections.get(engine, engine)
        return super().get_bind(mapper, clause=clause, **kwargs)

    def _engine_for_mapper(self, mapper: t.Any) -> sa.Engine | None:
        cache = self._sessionext_bind_cache
        if not isinstance(mapper, orm.Mapper):
            mapper = sa.inspect(mapper)
        try:
            return cache[mapper]
        except KeyError:
            pass
        key = getattr(mapper.class_, "__bind_key__", None)
        if key is None:
            table = mapper.local_table
            if isinstance(table, sa.Table):
                key = table.metadata.info.get("bind_key")
        engine = cache[mapper] = engine_for_key(self._sessionext_engines, key)
        return engine

    def _engine_for_clause(self, clause: sa.ClauseElement) -> sa.Engine | None:
        table: t.Any = None
        if isinstance(clause, sa.Table):
            table = clause
        elif isinstance(clause, sa.UpdateBase):
            table = clause.table
        elif isinstance(clause, sa.Select):
            table = next(iter(clause.get_final_froms()), None)
        if isinstance(table, sa.Table) and "bind_key" in table.metadata.info:
            return engine_for_key(
                self._sessionext_engines, table.metadata.info["bind_key"]
            )
        return None


def engine_for_key(
    engines: Mapping[str | None, sa.Engine], key: str | None
) -> sa.Engine:
    """The engine of bind ``key``.

    :raise KeyError: no bind has that key; the message lists the known ones.
    """
    try:
        return engines[key]
    except KeyError:
        known = ", ".join(repr(k) for k in engines)
        raise KeyError(
            f"No bind {key!r} is configured; the known bind keys are {known}."
            " Add it to 'SESSIONEXT_BINDS'."
        ) from None


def make_session_class(
    base: type[orm.Session] | None, engines: Mapping[str | None, sa.Engine]
) -> type[Session]:
    """The Session class of one app, from an optional user-given ``class_``.

    :raise TypeError: ``base`` is not a subclass of SQLAlchemy's Session.
    """
    # A single bind needs no routing, and no get_bind() call of ours per query.
    ours = _RoutingSession if len(engines) > 1 else Session
    bases: tuple[type, ...] = (ours,)
    if base is not None and base is not Session:
        if not (isinstance(base, type) and issubclass(base, orm.Session)):
            raise TypeError(
                "The 'class_' session option must be a subclass of"
                f" sqlalchemy.orm.Session, not {base!r}."
            )
        bases = (ours, base)
    namespace = {
        "_sessionext_engines": engines,
        "_sessionext_bind_cache": {},
        "_sessionext_connections": {},
    }
    return t.cast(type[Session], type("Session", bases, namespace))
