"""What the extension keeps for one app: its runtime.

:meth:`SessionExt.init_app` builds one :class:`Runtime` per app and keeps it
in ``app.extensions["sessionext"]``. The runtime owns the app's SQLAlchemy
listeners (:class:`~._engines.listeners.Listeners`) and one object of each
feature of :data:`FEATURES` that the app's settings want, and loops over
them, knowing none by name. It subscribes once, weakly, to receiver changes
of every signal: on each connect or disconnect for its app (or for every
sender) it brings each feature in line with the receivers (:meth:`refresh`),
and says which session operations must raise receiver errors once complete
(``Session._sessionext_deferring``).
"""

from __future__ import annotations

import functools
import inspect
import threading
import typing as t
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

import sqlalchemy as sa
import sqlalchemy.orm as orm
from blinker import ANY, NamedSignal
from flask import Flask, Response, after_this_request, has_request_context
from flask.ctx import AppContext
from sqlalchemy.util import ScopedRegistry

if t.TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

from ._config.settings import Settings, commit_on_teardown
from ._engines.engines import create_engines, prepare_engines
from ._engines.fork_safety import process_lock
from ._engines.listeners import Listeners
from ._engines.liveness import Liveness
from ._engines.sqlite_transactions import SqliteTransactions
from ._features.base import EVERY_OPERATION, Feature
from ._features.bridge import SignalBridge
from ._features.broadcast import Broadcast
from ._features.changes import ModelChanges, OnCommit
from ._features.recording import Recorder
from ._receivers.calls import raise_parked, report
from ._receivers.checks import collected, report_collected
from ._session.async_session import AsyncState, dispose_async, run_to_completion
from ._session.frameworks import is_quart
from ._session.session import (
    OPERATIONS,
    Session,
    SynchronizeSession,
    app_ctx_scope,
    make_sessionmaker,
)
from .recording import QueryRecord
from .signals import namespace, session_created, session_removed

#: The features of the extension, in the order of their handlers of one
#: event (see :class:`~._features.base.Feature`). One line per feature.
FEATURES: tuple[type[Feature], ...] = (
    SqliteTransactions,
    Liveness,
    SynchronizeSession,
    SignalBridge,
    ModelChanges,
    OnCommit,
    Recorder,
    Broadcast,
)

_F = t.TypeVar("_F", bound=Feature)


class Runtime:
    """The engines, sessions and features of one app.

    It holds the app weakly: SQLAlchemy's listener registry is global and
    holds what the listeners hold, and a dropped app must go with its
    engines (see ``weakref.finalize`` in :meth:`SessionExt.init_app`).
    """

    def __init__(self, app: Flask, extension: object, settings: Settings) -> None:
        """Create the app's engines (opening no connection), its
        sessionmaker and its features.

        :raise ValueError: a URL or an engine option is not accepted.
        :raise TypeError: an engine option is unknown, or of the wrong type.
        """
        listeners = Listeners()
        engines = create_engines(settings)
        prepare_engines(engines)
        sessionmaker = make_sessionmaker(settings, engines)
        # What SQLAlchemy holds of the app goes with it: its listeners (see
        # Listeners.remove_all) and its pools' connections.
        weakref.finalize(app, _release, listeners, list(engines.values()))
        self.app = weakref.ref(app)
        self.extension = extension
        self.settings = settings
        #: The app's engines by bind key, a read-only mapping.
        self.engines: Mapping[str | None, sa.Engine] = MappingProxyType(dict(engines))
        #: The async side, made at its first use (see :attr:`async_state`).
        self._async_state: AsyncState | None = None
        #: Whether a rollback block runs (see :meth:`join_async`).
        self._joining_async = False
        self.sessionmaker = sessionmaker
        self.session_class: type[Session] = sessionmaker.class_
        self.listeners = listeners
        #: The app's features, in the order of :data:`FEATURES`.
        self.features: tuple[Feature, ...] = tuple(
            cls(self, rank) for rank, cls in enumerate(FEATURES) if cls.wanted(settings)
        )
        #: While :meth:`join_transactions` runs: what :attr:`SessionExt.engines`
        #: returns instead of :attr:`engines`.
        self.engine_override: Mapping[str | None, sa.Engine] | None = None
        #: App contexts of streamed responses whose session outlives the
        #: context's first teardown: ``"streaming"`` from the response until
        #: that teardown, then ``"kept"`` until the stream ends.
        self.streams: weakref.WeakKeyDictionary[AppContext, str] = (
            weakref.WeakKeyDictionary()
        )
        #: Whether a listener of a receiver's is installed, whose receiver
        #: may be garbage-collected unseen (see :meth:`collect`).
        self._watching = False
        #: The names of the signals that had receivers for the app at the
        #: last refresh.
        self._receiving: frozenset[str] = frozenset()
        #: How many times :meth:`refresh` ran, for tests of its cost.
        self.refreshes = 0
        #: The lock of :meth:`refresh` by process id (see ``process_lock``).
        #: Re-entrant: a receiver connected by code that a refresh runs (a
        #: listener firing during an install) refreshes again, on this thread.
        self._locks: dict[int, threading.RLock] = {}

    @property
    def async_state(self) -> AsyncState:
        """The async engines, sessionmaker and sessions of the app (one loop
        per view and thread under Flask, one loop under Quart), created at
        their first use: an app that never uses them pays nothing for them.
        The features then install on the async engines what they installed
        on the app's engines.
        """
        state = self._async_state
        if state is not None:
            return state
        app = self.app()
        if app is None:
            raise RuntimeError("The app of this runtime is gone.")
        with process_lock(self._locks):
            if self._async_state is None:
                state = AsyncState(
                    self.settings, self.session_class, threads=not is_quart(app)
                )
                weakref.finalize(app, _release_async, list(state.engines.values()))
                for feature in self.features:
                    feature.add_engines(app, state.sync_engines)
                if self._joining_async:
                    state.begin_join()
                self._async_state = state
            return self._async_state

    def has_async_sessions(self) -> bool:
        """Whether an app context of the app has an async session now."""
        return self._async_state is not None and bool(self._async_state.sessions)

    @contextmanager
    def join_async(self) -> Iterator[None]:
        """Join the async sessions created in the block (the async side's
        :meth:`~.AsyncState.begin_join`), also when the async side is made
        during the block.
        """
        self._joining_async = True
        if self._async_state is not None:
            self._async_state.begin_join()
        try:
            yield
        finally:
            self._joining_async = False
            if self._async_state is not None:
                self._async_state.end_join()

    def feature(self, cls: type[_F]) -> _F:
        """The app's feature of class ``cls``.

        :raise LookupError: the app's settings do not want it.
        """
        for feature in self.features:
            if isinstance(feature, cls):
                return feature
        raise LookupError(f"The app has no feature {cls.name!r}.")

    def feature_tables(self) -> dict[sa.MetaData, tuple[str | None, str]]:
        """The ``MetaData`` of the tables that the app's features need, with
        the bind key of each and the feature's name.
        """
        return {
            metadata: (key, feature.name)
            for feature in self.features
            for key, metadata in feature.tables()
        }

    def start(self, app: Flask) -> None:
        """Subscribe to receiver changes, start each feature as the settings
        say, and install what the receivers already connected need.
        """
        if not {raise_parked, raise_parked_async} & {*app.teardown_appcontext_funcs}:
            # Run last, once the session of the app context has been closed
            # and its connection returned: Flask runs the list in reverse,
            # Quart in order.
            if is_quart(app):
                app.teardown_appcontext_funcs.append(raise_parked_async)
            else:
                app.teardown_appcontext_funcs.insert(0, raise_parked)
        for signal in namespace.values():
            # Weakly: Blinker forgets the subscription when the app and its
            # runtime are gone.
            signal.receiver_connected.connect(self._receiver_connected)
            signal.receiver_disconnected.connect(self._receiver_disconnected)
        for feature in self.features:
            feature.start(app)
        self.refresh()

    def _receiver_connected(
        self, signal: NamedSignal, *, sender: object = ANY, **kwargs: object
    ) -> None:
        # Only a receiver for this app, or for every sender, concerns it.
        if sender is ANY or sender is self.app():
            self.refresh()

    def _receiver_disconnected(
        self, signal: NamedSignal, *, sender: object = ANY, **kwargs: object
    ) -> None:
        # Disconnected from every sender (Blinker's default): it concerns
        # this app if the signal had receivers for it.
        if sender is self.app() or (sender is ANY and signal.name in self._receiving):
            self.refresh()

    def refresh(self) -> None:
        """Bring every feature's listeners in line with the receivers, and
        the session operations that raise receiver errors with them.

        Also sweeps the listeners of receivers that were garbage-collected
        (Blinker says nothing of those), so it runs at every connect and
        disconnect of a receiver for the app, and (see :meth:`collect`) at
        teardown.
        """
        app = self.app()
        if app is None:
            return
        with process_lock(self._locks):
            self.refreshes += 1
            for feature in self.features:
                feature.refresh(app)
            self.listeners.flush_pending()
            self._receiving = frozenset(
                name
                for name, signal in namespace.items()
                if signal.receivers and any(True for _ in signal.receivers_for(app))
            )
            raises_after: frozenset[str] = frozenset()
            for feature in self.features:
                if feature.may_raise():
                    raises_after |= feature.raises_after
            if raises_after >= EVERY_OPERATION:
                raises_after = OPERATIONS
            # Whether a receiver may die unseen: checked at each teardown.
            self._watching = any(feature.has_receivers() for feature in self.features)
            if self.session_class._sessionext_deferring != raises_after:
                self.session_class._sessionext_deferring = raises_after

    def collect(self) -> None:
        """At an app-context teardown, a safe point: remove the listeners of
        receivers that were garbage-collected, and those left without
        handlers during a dispatch. Checks first, so it costs next to nothing.
        """
        if self.listeners.pending or (
            self._watching
            and any(feature.has_dead_receivers() for feature in self.features)
        ):
            self.refresh()

    def recorded(self, ctx: AppContext) -> list[QueryRecord]:
        """The queries that ``ctx`` recorded, oldest first."""
        return self.feature(Recorder).recorded(ctx)

    def dropped(self, ctx: AppContext) -> int:
        """How many records of ``ctx`` the limit dropped."""
        return self.feature(Recorder).dropped(ctx)

    def on_commit(self, session: orm.Session, callback: t.Any) -> None:
        """Run ``callback``, ``(func, args, kwargs)``, after the outermost
        commit of ``session``.
        """
        self.feature(OnCommit).on_commit(session, callback)

    def create_session(self, app_ctx: AppContext, **kwargs: t.Any) -> Session:
        """The session of ``app_ctx``, at its first use; a request that has one
        checks whether its response streams with it.
        """
        session = self.sessionmaker(**kwargs)
        if has_request_context():
            # Only requests that have a session pay for the check.
            after_this_request(self.keep_for_stream)
        if session_created.receivers:
            report(session_created, app_ctx.app, session=session)
        return session

    def keep_for_stream(self, response: Response) -> Response:
        """Keep the session of a streamed response until the response is closed:
        ``stream_with_context`` pushes the same app context again while the body
        streams, after its first teardown, and the generator must find the view's
        session and the objects it loaded.
        """
        if response.is_streamed:
            ctx = app_ctx_scope()
            body = response.response
            # Only a body that will push this context again, as the generator of
            # stream_with_context does (Flask >= 3.1), holds it; any other
            # streamed body (a file, an error page) runs without it.
            if inspect.isgenerator(body) and any(
                value is ctx for value in inspect.getgeneratorlocals(body).values()
            ):
                self.streams[ctx] = "streaming"
                response.call_on_close(functools.partial(self._end_stream, ctx))
        return response

    def _end_stream(self, ctx: AppContext) -> None:
        """At the close of a streamed response: remove the session kept for it,
        if no teardown of its context did (the stream was never read, or read
        without ``stream_with_context``).
        """
        if self.streams.get(ctx) == "kept":
            with ctx:  # its teardown removes the session
                pass

    def remove_session(
        self,
        ctx: AppContext,
        registry: ScopedRegistry[Session],
        exc: BaseException | None,
    ) -> None:
        """At the teardown of ``ctx``: commit the session if the settings
        say so and nothing failed, close it, and forget it; unless a streamed
        response still needs it.

        Also the safe point at which listeners of garbage-collected receivers go.
        """
        app = ctx.app
        if self._async_state is not None and self._async_state.sessions:
            # Only apps that used one pay for it.
            self._async_state.remove(ctx, exc, commit_on_teardown(app))
        if self.streams:
            stream = self.streams.pop(ctx, None)
            if stream == "streaming":  # the body has yet to stream
                self.streams[ctx] = "kept"
                return
        if collected:  # a weakly connected receiver died: say so
            report_collected(app)
        if self._watching or self.listeners.pending:  # else nothing to collect
            self.collect()
        if not registry.has():
            return
        session = registry()
        try:
            if exc is None and commit_on_teardown(app):
                session.commit()
        finally:
            try:
                session.close()
            finally:
                registry.clear()
                if session_removed.receivers:
                    report(session_removed, app, session=session, exception=exc)

    def check_not_joined(self) -> None:
        """Refuse a second :meth:`join_transactions` block.

        :raise RuntimeError: a block is already running on the app.
        """
        if self.engine_override is not None:
            app = self.app()
            name = app.name if app is not None else "?"
            raise RuntimeError(
                f"A rollback block is already running on the Flask app {name!r};"
                " blocks do not nest. Use one block per test."
            )

    @contextmanager
    def join_transactions(
        self,
        connections: Mapping[str | None, sa.Connection],
        stand_ins: Mapping[str | None, sa.Engine],
    ) -> Iterator[None]:
        """Send the work of the app's new sessions to ``connections`` (one per
        bind, each in a transaction of the caller's), joined with SQLAlchemy's
        ``join_transaction_mode="create_savepoint"``, and have
        :attr:`SessionExt.engines` return ``stand_ins``, for the block.

        The one entry point of :func:`flask_sessionext.testing.rollback`
        into the app's sessions and engines.

        :raise RuntimeError: a block is already running on the app.
        """
        self.check_not_joined()
        router = self.session_class._sessionext_router
        saved = dict(self.sessionmaker.kw)
        router.stand_ins = {
            self.engines[key]: connection for key, connection in connections.items()
        }
        self.sessionmaker.configure(
            bind=connections[None], join_transaction_mode="create_savepoint"
        )
        self.engine_override = MappingProxyType(dict(stand_ins))
        try:
            yield
        finally:
            self.engine_override = None
            router.stand_ins = {}
            self.sessionmaker.kw.clear()
            self.sessionmaker.kw.update(saved)


async def raise_parked_async(exc: BaseException | None = None) -> None:
    """:func:`raise_parked` for Quart, which would run a sync teardown
    function in a worker thread, at every request.
    """
    raise_parked(exc)


def _release(listeners: Listeners, engines: list[sa.Engine]) -> None:
    """Remove the listeners, and close the pooled connections, of an app that
    was garbage-collected.
    """
    listeners.remove_all()
    for engine in engines:
        engine.dispose()


def _release_async(async_engines: list[AsyncEngine]) -> None:
    """Close the pooled connections of the async engines of an app that was
    garbage-collected.
    """
    if async_engines:
        run_to_completion(dispose_async(async_engines))
