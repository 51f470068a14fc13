"""The app-context scope, the per-app Session class and its bind routing."""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask.ctx import AppContext
from flask.globals import _cv_app
from sqlalchemy.sql import visitors

from ._compat import all_registries

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
    """The Session of this package. Each app gets its own subclass, which
    keeps the app's class-level event listeners apart from other apps',
    carries the app's engines and routes each statement to its bind.
    """

    #: The app's engines by bind key, set on each app's subclass.
    _sessionext_engines: t.ClassVar[Mapping[str | None, sa.Engine]] = {}
    #: Mapped class, mapper or table -> the engine of its bind, filled on
    #: first use.
    _sessionext_routes: t.ClassVar[dict[object, sa.Engine]] = {}
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
        """Route a mapped class, and a Core statement on a table, to the
        engine of the class's ``__bind_key__``, else of the table's
        ``MetaData(info={"bind_key": ...})``, else to the default engine.

        :raise KeyError: the bind key is not configured for this app.
        """
        if bind is not None:
            return bind
        target: object = mapper
        if target is None and clause is not None and len(self._sessionext_engines) > 1:
            # With one bind a Core statement can only go to it: finding its
            # table would cost every query a walk of the statement.
            target = _table_of(clause)
        if target is not None:
            routes = self._sessionext_routes
            try:
                engine = routes[target]
            except KeyError:
                key, owner = bind_key_of(target)
                engines = self._sessionext_engines
                engine = routes[target] = engine_for_key(engines, key, owner)
            return self._sessionext_connections.get(engine, engine)
        return super().get_bind(mapper, clause=clause, **kwargs)


def _table_of(clause: sa.ClauseElement) -> sa.Table | None:
    """The table a Core statement works on: the first one met walking it."""
    if isinstance(clause, sa.Table):
        return clause
    if isinstance(clause, sa.UpdateBase):
        updated: object = clause.table
        return updated if isinstance(updated, sa.Table) else None
    # A walk of the statement's elements, as Session.get_bind does for its
    # 'binds=': get_final_froms() would compile the statement, per query.
    for element in visitors.iterate(clause):
        if isinstance(element, sa.Table):
            return element
        table = getattr(element, "table", None)  # a column's
        if isinstance(table, sa.Table):
            return table
    return None


def class_bind_keys() -> dict[sa.Table, tuple[str, str]]:
    """The ``__bind_key__`` of every mapped class that has one, and the
    class's name, by table.
    """
    keys: dict[sa.Table, tuple[str, str]] = {}
    for registry in all_registries():
        for mapper in registry.mappers:
            key = getattr(mapper.class_, "__bind_key__", None)
            if key is None:
                continue
            for table in mapper.tables:
                if isinstance(table, sa.Table):
                    keys.setdefault(table, (key, mapper.class_.__name__))
    return keys


def bind_key_of(
    target: object, by_class: Mapping[sa.Table, tuple[str, str]] | None = None
) -> tuple[str | None, str]:
    """The bind key of a mapped class (or its mapper) or a table, and what
    names it, for messages: the class's ``__bind_key__``, else (for a table,
    that of the class mapping it, else) its ``MetaData``'s
    ``info["bind_key"]``, else ``None``.

    :param by_class: :func:`class_bind_keys`, when the caller has it already.
    """
    key: str | None
    if isinstance(target, sa.Table):
        of_class = (class_bind_keys() if by_class is None else by_class).get(target)
        if of_class is not None:
            return of_class[0], f"model {of_class[1]!r} (table {target.name!r})"
        key = target.metadata.info.get("bind_key")
        return key, f"table {target.name!r}"
    mapper = target if isinstance(target, orm.Mapper) else sa.inspect(target)
    name = f"model {mapper.class_.__name__!r}"
    key = getattr(mapper.class_, "__bind_key__", None)
    if key is None and isinstance(mapper.local_table, sa.Table):
        key = mapper.local_table.metadata.info.get("bind_key")
    return key, name


def engine_for_key(
    engines: Mapping[str | None, sa.Engine], key: str | None, owner: str = ""
) -> sa.Engine:
    """The engine of bind ``key``.

    :param owner: what names the key (``"model 'Note'"``), for the message.
    :raise KeyError: no bind has that key; the message lists the known ones.
    """
    try:
        return engines[key]
    except (KeyError, TypeError):  # TypeError: an unhashable key
        raise KeyError(unknown_bind(engines, key, owner)) from None


def unknown_bind(keys: t.Iterable[str | None], key: object, owner: str = "") -> str:
    """The message for a bind key that is not configured; ``owner`` is what
    names the key (``"model 'Note'"``), if anything.
    """
    known = ", ".join(repr(k) for k in keys)
    what = (
        f"The {owner} names the bind key {key!r}, which is not configured"
        if owner
        else f"No bind {key!r} is configured"
    )
    return f"{what}; the known bind keys are {known}. Add it to 'SESSIONEXT_BINDS'."


def make_session_class(
    base: type[orm.Session] | None, engines: Mapping[str | None, sa.Engine]
) -> type[Session]:
    """The Session class of one app, from an optional user-given ``class_``
    (checked by :func:`._settings.read_settings`).
    """
    bases: tuple[type, ...] = (Session,)
    if base is not None and base is not Session:
        bases = (Session, base)
    namespace = {
        "_sessionext_engines": engines,
        "_sessionext_routes": {},
        "_sessionext_connections": {},
    }
    return t.cast(type[Session], type("Session", bases, namespace))
