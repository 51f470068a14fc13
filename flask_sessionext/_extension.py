"""The :class:`SessionExt` extension: engines, the scoped session, teardown."""

from __future__ import annotations

import typing as t
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from flask import Flask, abort
from flask.sansio.app import App
from sqlalchemy.util import ScopedRegistry

from . import pagination
from ._config.settings import read_settings
from ._engines.sqlite_transactions import explain, take_write_locks
from ._extension_async import AsyncMethods
from ._features.outbox import outbox_metadata
from ._receivers.listener_objects import Registration, connect_methods
from ._runtime import Runtime
from ._session import tables as _tables
from ._session.frameworks import check_app, is_quart
from ._session.integer_range import ident_out_of_range, statement_out_of_range
from ._session.session import Session, app_ctx_scope, engine_for_key
from ._session.shell import shell_context
from ._sqlalchemy_private import in_transaction_block
from .cli import cli
from .recording import QueryRecord

_O = t.TypeVar("_O")

_DEPTH = "sessionext.transaction_depth"


class SessionExt(AsyncMethods):
    """A SQLAlchemy session scoped to the Flask application context, and
    SQLAlchemy's events as Blinker signals sent by the app. A Quart app is
    served as a Flask app is; the async methods are in :doc:`/async`.

    Create it once, and call :meth:`init_app` in the application factory;
    one instance may serve several apps, each with its own engines and
    sessionmaker, kept in ``app.extensions["sessionext"]``::

        db = SessionExt()

        def create_app():
            app = Flask(__name__)
            app.config["SESSIONEXT_DATABASE_URI"] = "sqlite:///app.sqlite3"
            db.init_app(app)
            return app

    :param app: call :meth:`init_app` on this app right away.
    :param engine_options: defaults for ``create_engine`` of every bind;
        ``SESSIONEXT_ENGINE_OPTIONS`` overrides them key by key.
    :param session_options: defaults for the app's ``sessionmaker``;
        ``SESSIONEXT_SESSION_OPTIONS`` overrides them key by key.
    :param metadata: the ``MetaData`` of your declarative base, or a sequence
        of them (one per base), for :attr:`metadatas`, :meth:`create_all`,
        ``flask sessionext create-all`` and Flask-Migrate.
    :raise TypeError: an argument has the wrong type.
    """

    #: The ``MetaData`` of the outbox tables of ``SESSIONEXT_BROADCAST``.
    #: While it is on, :attr:`metadatas` holds them in the outbox bind, for
    #: Flask-Migrate, and :meth:`create_all` and ``flask sessionext
    #: create-outbox`` create them.
    outbox_metadata: t.ClassVar[sa.MetaData] = outbox_metadata

    def __init__(
        self,
        app: App | None = None,
        *,
        engine_options: Mapping[str, t.Any] | None = None,
        session_options: Mapping[str, t.Any] | None = None,
        metadata: sa.MetaData | Sequence[sa.MetaData] | None = None,
    ) -> None:
        self._metadata = _tables.check_metadata(metadata)
        for name, value in (
            ("engine_options", engine_options),
            ("session_options", session_options),
        ):
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(
                    f"'{name}' must be a mapping of option names to values or"
                    f" None, not {type(value).__name__} {value!r}."
                )
        self._engine_options = dict(engine_options or {})
        self._session_options = dict(session_options or {})
        self._session: orm.scoped_session[Session] = orm.scoped_session(
            t.cast("orm.sessionmaker[Session]", self._make_session),
            scopefunc=app_ctx_scope,
        )
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def init_app(self, app: App) -> None:
        """Create the app's engines and sessionmaker, and remove the session
        when each of its application contexts ends. Opens no connection.

        The ``SESSIONEXT_*`` keys of ``app.config`` are read and checked
        here, so a bad URL or option fails when the app starts.

        :param app: the Flask (or Quart) app to serve.
        :raise TypeError: ``app`` is neither a Flask nor a Quart app.
        :raise RuntimeError: the app already has a :class:`SessionExt`.
        :raise ValueError: a configuration value is not accepted.
        :raise TypeError: a configuration value has the wrong type.
        :raise KeyError: a table of ``metadata`` names a bind key that is not
            configured.
        """
        check_app(app)
        # A Quart app is served as a Flask app: the runtime uses what both have.
        app = t.cast(Flask, app)
        if "sessionext" in app.extensions:
            raise RuntimeError(
                f"The Flask app {app.name!r} already has a SessionExt; an app"
                " takes one. Use that instance, or a new Flask app."
            )
        settings = read_settings(
            app,
            engine_options=self._engine_options,
            session_options=self._session_options,
        )
        # Models imported after init_app are checked at their first use.
        _tables.check_bind_keys(self._metadata, settings.binds)
        # Its engines, sessionmaker and features; it opens no connection.
        runtime = Runtime(app, self, settings)
        app.extensions["sessionext"] = runtime
        if is_quart(app):  # Quart awaits an async teardown on its loop
            app.teardown_appcontext(self._teardown_session_async)
        else:
            app.teardown_appcontext(self._teardown_session)
        app.cli.add_command(cli)
        app.shell_context_processor(lambda: shell_context(self, self._metadata))
        runtime.start(app)

    def _get_state(self, app: Flask) -> Runtime:
        state: Runtime | None = app.extensions.get("sessionext")
        if state is None or state.extension is not self:
            raise RuntimeError(
                f"The Flask app {app.name!r} is not registered with this"
                " SessionExt. Call 'db.init_app(app)' on it first."
            )
        return state

    def _current_state(self) -> Runtime:
        return self._get_state(app_ctx_scope().app)

    def _make_session(self, **kwargs: t.Any) -> Session:
        ctx = app_ctx_scope()
        return self._get_state(ctx.app).create_session(ctx, **kwargs)

    def _session_registry(self) -> ScopedRegistry[Session]:
        return self._session.registry

    def _teardown_session(self, exc: BaseException | None) -> None:
        ctx = app_ctx_scope()
        self._get_state(ctx.app).remove_session(ctx, self._session.registry, exc)

    @property
    def session(self) -> orm.scoped_session[Session]:
        """The scoped session. Inside an application context it stands for
        that context's own :class:`~sqlalchemy.orm.Session`, created on first
        use and removed when the context ends.

        The attribute itself is the same object at any time, so code may keep
        a reference made at import time (``ModelView(User, db.session)``,
        ``sqlalchemy_session = db.session``); only *using* it needs a context.

        Using it (calling it, or any Session method or attribute through it)
        outside an application context raises :exc:`RuntimeError`.
        """
        return self._session

    @property
    def engines(self) -> Mapping[str | None, sa.Engine]:
        """The current app's engines by bind key, a read-only mapping;
        ``None`` is the default bind.

        :raise RuntimeError: no application context is pushed.
        """
        return self._engines()

    @property
    def engine(self) -> sa.Engine:
        """The current app's default engine.

        :raise RuntimeError: no application context is pushed.
        """
        return self._engines()[None]

    def get_engine(self, bind_key: str | None = None) -> sa.Engine:
        """The current app's engine for ``bind_key``.

        :param bind_key: a key of ``SESSIONEXT_BINDS``; ``None`` for the
            default bind.
        :raise KeyError: the app has no such bind; the message lists the known
            keys.
        """
        return engine_for_key(self._engines(), bind_key)

    def _engines(self) -> Mapping[str | None, sa.Engine]:
        state = self._current_state()
        if state.engine_override is not None:
            return state.engine_override
        return state.engines

    @property
    def metadatas(self) -> Mapping[str | None, sa.MetaData]:
        """The tables of each bind of the current app, a read-only mapping of
        bind key to ``MetaData``; ``None`` is the default bind, and every
        configured bind has an entry, empty when it has no tables.

        A table goes to the bind of its mapped class's ``__bind_key__``,
        else of its MetaData's ``info["bind_key"]``, else to the default
        bind, where the session sends its queries. When one given MetaData
        spans several binds, its tables are copied into one new MetaData per
        bind. Flask-Migrate's ``--multidb`` ``env.py`` reads this.

        With ``SESSIONEXT_BROADCAST`` on, the entry of the outbox bind holds
        the outbox tables too (:attr:`outbox_metadata`), so that Alembic
        autogenerate creates them and never proposes to drop them: that
        bind's tables and the outbox tables are copied into a new MetaData
        (the given ones are left as they are).

        :raise RuntimeError: no ``metadata`` was given to the extension, or
            no application context is pushed.
        :raise KeyError: a table names a bind key that is not configured.
        :raise ValueError: a foreign key refers to a table of another bind,
            or a table has the name of an outbox table in the outbox bind.
        """
        features = self._current_state().feature_tables()
        return _tables.add_feature_tables(self._split(features), features)

    def _split(
        self, features: Mapping[sa.MetaData, object]
    ) -> Mapping[str | None, sa.MetaData]:
        """The tables of ``metadata=`` by bind, without those of ``features``."""
        if not self._metadata:
            raise RuntimeError(_tables.NO_METADATA)
        sources = [metadata for metadata in self._metadata if metadata not in features]
        return _tables.split_by_bind(sources, self._engines())

    def _schema(self) -> dict[str | None, list[sa.MetaData]]:
        """What :meth:`create_all` creates in each bind: the MetaData of its
        tables, then those of the features (each with its own DDL events).
        """
        features = self._current_state().feature_tables()
        return _tables.with_features(self._split(features), features)

    @property
    def metadata(self) -> sa.MetaData:
        """The tables of the current app's default bind: ``metadatas[None]``.
        Flask-Migrate's single-database ``env.py`` reads this.

        :raise RuntimeError: no ``metadata`` was given to the extension, or
            no application context is pushed.
        """
        return self.metadatas[None]

    def bind_names(self) -> list[str]:
        """The keys of ``SESSIONEXT_BINDS`` of the current app, without the
        default bind, as Flask-Migrate's ``--multidb`` ``env.py`` asks.

        :raise RuntimeError: no application context is pushed.
        """
        return [key for key in self._engines() if key is not None]

    def create_all(self) -> None:
        """Create the missing tables of :attr:`metadatas` in every bind of
        the current app, the outbox tables of ``SESSIONEXT_BROADCAST``
        included; ``flask sessionext create-all`` calls it.

        :raise RuntimeError: no ``metadata`` was given to the extension, or
            no application context is pushed.
        """
        _tables.create_all(self._schema(), self._engines())

    def drop_all(self) -> None:
        """Drop the tables of :attr:`metadatas` from every bind of the
        current app, the outbox tables included; ``flask sessionext
        drop-all`` calls it.

        :raise RuntimeError: no ``metadata`` was given to the extension, or
            no application context is pushed.
        """
        _tables.drop_all(self._schema(), self._engines())

    def get_recorded_queries(self) -> list[QueryRecord]:
        """The queries the current app context ran, oldest first, on every
        bind and through any session or connection of the app; ``[]`` when
        ``SESSIONEXT_RECORD_QUERIES`` is off. Only the newest
        ``SESSIONEXT_RECORD_QUERIES_LIMIT`` are kept.

        :raise RuntimeError: no application context is pushed.
        """
        return self._current_state().recorded(app_ctx_scope())

    @property
    def dropped_query_count(self) -> int:
        """How many records of the current app context
        ``SESSIONEXT_RECORD_QUERIES_LIMIT`` dropped.

        :raise RuntimeError: no application context is pushed.
        """
        return self._current_state().dropped(app_ctx_scope())

    def register(self, listener: object, *, app: Flask | None = None) -> Registration:
        """Connect every public method of ``listener`` whose name is a signal
        name, in the style of SQLAlchemy's old ``SessionExtension``::

            class FlushLogger:
                def before_flush(self, sender, session, flush_context, instances):
                    ...

            handle = db.register(FlushLogger(), app=app)
            handle.disconnect()

        The methods receive the signal's arguments (the app first). References
        are strong, so the listener lives as long as the registration.

        :param listener: any object; its public methods named like a signal
            become receivers of that signal.
        :param app: receive this app's sends only; ``None`` for every app.
        :return: a handle whose ``disconnect()`` undoes exactly this call.
        :raise ValueError: a public method is named like a misspelt signal
            (nothing is connected).
        :raise TypeError: no public method is named like a signal.
        """
        return connect_methods(listener, app)

    def on_commit(
        self, func: t.Callable[..., t.Any], /, *args: t.Any, **kwargs: t.Any
    ) -> None:
        """Call ``func(*args, **kwargs)`` after the current transaction of
        :attr:`session` commits, beginning one, as a query would, when there
        is none.

        Callbacks run after the outermost commit, in registration order, with
        the app context available. Those registered inside a SAVEPOINT that
        rolls back are dropped, and all are dropped when the transaction rolls
        back or the session is removed without a commit. A callback's
        exception is logged, and raised after the commit with
        ``SESSIONEXT_RAISE_RECEIVER_ERRORS``, like a receiver's of
        ``models_committed``.

        :param func: the function to call; an ``async`` function runs through
            ``app.ensure_sync``.
        :param args: positional arguments of ``func``.
        :param kwargs: keyword arguments of ``func``.
        :raise RuntimeError: no application context is pushed.
        """
        state = self._current_state()
        state.on_commit(self.session(), (func, args, kwargs))

    @contextmanager
    def transaction(self, *, immediate: bool = False) -> Iterator[Session]:
        """A unit of work on :attr:`session`, yielding that session.

        The outermost block owns the session's transaction, joining one that
        earlier queries began: it commits on success and rolls back on any
        exception, ``KeyboardInterrupt`` included. A block nested in another,
        or in a ``with db.session.begin():`` block (which then owns the
        transaction), opens a SAVEPOINT; an exception rolls back only that
        savepoint, then propagates::

            with db.transaction():
                db.session.add(order)
                with db.transaction():  # SAVEPOINT
                    db.session.add(payment)

        :param immediate: on SQLite, begin with ``BEGIN IMMEDIATE`` on every
            SQLite database of the app, so that the block holds the write
            lock from its first read: no other connection writes between
            what it reads and what it writes. Ignored on other databases.
        :raise RuntimeError: no application context is pushed.
        """
        state = self._current_state()
        session = self.session()
        depth: int = session.info.get(_DEPTH, 0)
        session.info[_DEPTH] = depth + 1
        try:
            # Inside ``with session.begin():`` that block owns the transaction.
            if depth or in_transaction_block(session):
                if immediate:
                    take_write_locks(session, state.engines.values())
                with session.begin_nested():
                    yield session
            else:
                try:
                    if immediate:
                        take_write_locks(session, state.engines.values())
                    yield session
                    session.commit()
                except BaseException as e:
                    explain(e)
                    session.rollback()
                    raise
        finally:
            session.info[_DEPTH] = depth

    @contextmanager
    def session_scope(self, *, immediate: bool = False) -> Iterator[Session]:
        """A new Session of the current app, independent of :attr:`session`:
        committed when the block succeeds, rolled back when it raises, and
        closed in any case. For background jobs, CLI commands and work that
        must not share the fate of the request's session::

            with db.session_scope() as session:
                session.add(entry)

        :param immediate: as for :meth:`transaction`.
        :raise RuntimeError: no application context is pushed.
        """
        state = self._current_state()
        session = state.sessionmaker()
        try:
            if immediate:
                take_write_locks(session, state.engines.values())
            yield session
            session.commit()
        except BaseException as e:
            explain(e)
            session.rollback()
            raise
        finally:
            session.close()

    def paginate(
        self,
        select: sa.Select[t.Any],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = 100,
        error_out: bool = True,
        count: bool = True,
    ) -> pagination.Pagination:
        """One page of the results of ``select`` on :attr:`session`, as
        Flask-SQLAlchemy's ``db.paginate()`` returns it. Runs the page's
        query, and a ``SELECT count(*)`` of ``select`` without its ``ORDER
        BY``; the items are ``scalars()`` of ``unique()`` rows.

        :param select: a ``select()`` of a model class, in a stable order.
        :param page: the page number, from 1; else the request's ``page``
            query argument, else 1.
        :param per_page: items per page; else the request's ``per_page``
            query argument, else 20.
        :param max_per_page: the largest ``per_page`` taken; ``None`` for no
            limit.
        :param error_out: abort with 404 when ``page`` or ``per_page`` is not
            an int of at least 1, or the page is past the last; else use 1
            and 20.
        :param count: query :attr:`~.Pagination.total`; else it is ``None``.
        """
        return pagination.paginate(
            select,
            self.session(),
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )

    def get_or_404(
        self, entity: type[_O], ident: t.Any, *, description: str | None = None
    ) -> _O:
        """``session.get(entity, ident)``, or abort with 404 when there is no
        such row.

        An ``int`` that the primary key column cannot hold (beyond its
        type's range) is a 404 without a query.

        :param entity: the mapped class.
        :param ident: its primary key, as :meth:`~sqlalchemy.orm.Session.get`
            takes it.
        :param description: the description of the 404 error.
        """
        session = self.session()
        if ident_out_of_range(session, entity, ident):
            abort(
                404, description=description
            )  # not queried: see _session/integer_range.py
        value = session.get(entity, ident)
        if value is None:
            abort(404, description=description)
        return value

    def first_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """The first result of ``statement``, or abort with 404 when it
        returns no row.

        :param statement: a ``select()``; the first column of its first row
            is returned.
        :param description: the description of the 404 error.
        """
        session = self.session()
        if statement_out_of_range(session, statement):
            abort(404, description=description)
        value = session.execute(statement).scalar()
        if value is None:
            abort(404, description=description)
        return value

    def one_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """The only result of ``statement``, or abort with 404 when it returns
        no row or several rows.

        :param statement: a ``select()``; the first column of its only row is
            returned.
        :param description: the description of the 404 error.
        """
        session = self.session()
        if statement_out_of_range(session, statement):
            abort(404, description=description)
        try:
            return session.execute(statement).scalar_one()
        except (sa_exc.NoResultFound, sa_exc.MultipleResultsFound):
            abort(404, description=description)
