"""The app-context scope, the per-app Session class, its bind routing and
its session operations.
"""

from __future__ import annotations

import functools
import typing as t
from collections.abc import Mapping
from types import MethodType

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask, has_app_context
from flask.ctx import AppContext
from flask.globals import app_ctx
from sqlalchemy.sql import visitors
from werkzeug.local import LocalProxy

from .._config import settings as _settings
from .._config.settings import Settings
from .._features.base import Feature
from .._receivers.calls import run_operation
from .._sqlalchemy_private import all_registries
from .frameworks import quart_app_context

NO_APP_CONTEXT = (
    "Working outside of an application context: there is no Session to use."
    " Push one with 'with app.app_context():', or use the session inside a"
    " request, a CLI command or a test client call."
)

#: Flask's public way to the object behind ``flask.globals.app_ctx``, looked
#: up once: the scope function runs at every use of ``db.session``.
_current_app_context: t.Callable[[], AppContext] = t.cast(
    "LocalProxy[AppContext]", app_ctx
)._get_current_object


def app_ctx_scope() -> AppContext:
    """The scope of :attr:`SessionExt.session`: the current app context
    itself, Flask's or Quart's.

    :raise RuntimeError: no application context is pushed.
    """
    try:
        return _current_app_context()
    except RuntimeError:
        # Only outside Flask's contexts: a Quart app's, or none.
        ctx = quart_app_context()
        if ctx is None:
            raise RuntimeError(NO_APP_CONTEXT) from None
        return ctx


def app_context_or_none() -> AppContext | None:
    """The current app context (Flask's or Quart's), or ``None`` when none
    is pushed.
    """
    return _current_app_context() if has_app_context() else quart_app_context()


#: The methods of SQLAlchemy's Session that run SQL or end a transaction: the
#: session operations after which a receiver's error is raised (see
#: :mod:`._receiver_errors`). ``tests/test_session.py`` sorts every public method of
#: the installed SQLAlchemy's Session into these or :data:`IN_MEMORY`, so a
#: method that a new SQLAlchemy adds fails that test until it is sorted.
OPERATIONS = frozenset(
    {
        "begin_nested",
        "bulk_insert_mappings",
        "bulk_save_objects",
        "bulk_update_mappings",
        "close",
        "commit",
        "connection",
        "delete",
        "delete_all",
        "execute",
        "flush",
        "get",
        "get_one",
        "invalidate",
        "merge",
        "merge_all",
        "prepare",
        "refresh",
        "reset",
        "rollback",
        "scalar",
        "scalars",
    }
)
#: The public methods of SQLAlchemy's Session that run no SQL themselves:
#: they change what the session holds in memory, or tell what it holds. A
#: transaction that ``begin()`` starts emits its SQL (and fires
#: ``after_begin``) in the operation that first needs a connection; a query
#: made by ``query()`` runs through :meth:`~sqlalchemy.orm.Session.execute`.
IN_MEMORY = frozenset(
    {
        "add",
        "add_all",
        "begin",
        "bind_mapper",
        "bind_table",
        "close_all",
        "enable_relationship_loading",
        "expire",
        "expire_all",
        "expunge",
        "expunge_all",
        "get_bind",
        "get_nested_transaction",
        "get_transaction",
        "identity_key",
        "in_nested_transaction",
        "in_transaction",
        "is_modified",
        "object_session",
        "query",
    }
)


class _Operation:
    """A method of the Session made a session operation, as a descriptor of
    the app's Session class: while the app's runtime says that a receiver
    error raised in it may need raising (:attr:`Session._sessionext_deferring`),
    a session gets it through :func:`~._receiver_errors.run_operation`;
    otherwise it gets the method itself, bound, and calls it at no cost.

    Looked up on the class it is the method itself. Chosen at each lookup, so
    nothing on the class ever changes, while a wrapper function would cost
    every call of every operation a frame and its arguments repacked.
    """

    __slots__ = ("method", "name")

    def __init__(self, name: str, method: t.Callable[..., t.Any]) -> None:
        self.name = name
        self.method = method

    def __get__(
        self, session: Session | None, owner: type | None = None
    ) -> t.Callable[..., t.Any]:
        if session is None:
            return self.method
        if self.name in session._sessionext_deferring:
            return functools.partial(self._deferred, session)
        return MethodType(self.method, session)

    def _deferred(self, session: Session, *args: t.Any, **kwargs: t.Any) -> t.Any:
        return run_operation(self.method, session, args, kwargs)


class Session(orm.Session):
    """The Session of this package. Each app gets its own subclass, which
    keeps the app's class-level event listeners apart from other apps',
    carries the app's engines and routes each statement to its bind.
    """

    #: Where the statements of the app's sessions go; set on each app's
    #: subclass.
    _sessionext_router: t.ClassVar[BindRouter]
    #: The names of the :data:`OPERATIONS` that raise a receiver's error once
    #: they have completed. Each app's runtime sets it on the app's subclass
    #: while a receiver that may raise is connected, and empties it when none
    #: is: a plain attribute, so methods never change while threads call them.
    _sessionext_deferring: t.ClassVar[frozenset[str]] = frozenset()

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
        router = self._sessionext_router
        target: object = mapper
        if target is None and clause is not None and router.several:
            # With one bind a Core statement can only go to it: finding its
            # table would cost every query a walk of the statement.
            target = _table_of(clause)
        if target is not None:
            return router.route(target)
        if self.bind is not None and not router.user_binds:
            # What SQLAlchemy's get_bind() finds here too, without its checks
            # of the 'binds' session option: asked for at every statement.
            return self.bind
        return super().get_bind(mapper, clause=clause, **kwargs)


class BindRouter:
    """Where the statements of one app's sessions go: the engine of each
    mapped class or table, found once and remembered.
    """

    def __init__(self, engines: Mapping[str | None, sa.Engine]) -> None:
        self.engines = engines
        #: Whether there are several binds to choose from.
        self.several = len(engines) > 1
        #: Whether the session options give SQLAlchemy's own ``binds``.
        self.user_binds = False
        #: Mapped class, mapper or table -> the engine of its bind.
        self._routes: dict[object, sa.Engine] = {}
        #: Engine -> the connection that stands in for it; set only by
        #: :meth:`~._runtime.Runtime.join_transactions` (for
        #: :func:`flask_sessionext.testing.rollback`), empty otherwise.
        self.stand_ins: Mapping[sa.Engine, sa.Connection] = {}

    def route(self, target: object) -> sa.Engine | sa.Connection:
        """The engine (or its stand-in) of a mapped class, mapper or table.

        :raise KeyError: its bind key is not configured for this app.
        """
        try:
            engine = self._routes[target]
        except KeyError:
            key, owner = bind_key_of(target)
            engine = self._routes[target] = engine_for_key(self.engines, key, owner)
        return self.stand_ins.get(engine, engine)


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
    """The Session class of one app, on the user's ``class_`` if any (the
    settings checked that it is a Session subclass).

    Its :data:`OPERATIONS` are defined here, once, around the methods of
    ``base``, so that a user's own ``commit()`` (say) still runs.
    """
    after = orm.Session if base is None or base is Session else base
    namespace: dict[str, object] = {
        name: _Operation(name, getattr(after, name))
        for name in OPERATIONS
        if hasattr(after, name)  # delete_all, merge_all: SQLAlchemy >= 2.1
    }
    namespace["_sessionext_router"] = BindRouter(engines)
    bases: tuple[type, ...] = (Session,) if after is orm.Session else (Session, after)
    return t.cast(type[Session], type("Session", bases, namespace))


def make_sessionmaker(
    settings: Settings, engines: Mapping[str | None, sa.Engine]
) -> orm.sessionmaker[Session]:
    """The sessionmaker of one app: its Session class and its options."""
    session_class = make_session_class(settings.session_class, engines)
    session_class._sessionext_router.user_binds = "binds" in settings.session_options
    maker = orm.sessionmaker(
        bind=engines[None], class_=session_class, **settings.session_options
    )
    return maker


class SynchronizeSession(Feature):
    """The default ``synchronize_session`` of one app's ORM statements."""

    name = "synchronize_session"
    listens = ("do_orm_execute",)

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        """Whether the setting is on and needs a listener to apply."""
        return (
            settings.synchronize_session is not None
            and not _settings.SESSION_EXECUTION_OPTIONS
        )

    def start(self, app: Flask) -> None:
        """Set the default on the statements of the app's sessions."""
        synchronize = self.parts.settings.synchronize_session

        def handler(state: orm.ORMExecuteState) -> None:
            if (state.is_update or state.is_delete) and (
                "synchronize_session" not in state.execution_options
            ):
                state.update_execution_options(synchronize_session=synchronize)

        self.listen(self.parts.session_class, "do_orm_execute", handler)
