"""What the extension keeps for one app: its runtime.

:meth:`SessionExt.init_app` builds one :class:`Runtime` per app and keeps it
in ``app.extensions["sessionext"]``; nothing of an app is kept anywhere else.
The runtime owns the app's SQLAlchemy listeners (:class:`~._listeners.Listeners`)
and the features that need them, and subscribes once, weakly, to receiver
changes of every signal: on each connect or disconnect it brings each
feature's listeners in line with the receivers (:meth:`Runtime.refresh`), and
says which session operations must raise receiver errors once complete
(``Session._sessionext_deferring``). :data:`FEATURES` is the table of what
each feature sends, needs and defers.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import typing as t
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask.ctx import AppContext

from . import recording
from ._broadcast import Broadcast
from ._event_signals import SignalBridge
from ._listeners import Listeners
from ._model_changes import ChangeTracker
from ._receiver_errors import raise_parked
from ._session import OPERATIONS, Session
from ._settings import BroadcastSettings
from .signals import CATALOG, namespace, slow_query

if t.TYPE_CHECKING:
    from ._extension import SessionExt


@dataclasses.dataclass(frozen=True)
class Feature:
    """One row of :data:`FEATURES`."""

    #: What the feature is, for people.
    name: str
    #: The signals it sends; it is on while one of them has a receiver for
    #: the app (or, for the features with none, while its setting is on).
    sends: tuple[str, ...]
    #: The SQLAlchemy events it listens to while it is on.
    listens: tuple[str, ...]
    #: Whether its sends wait until the commit is complete (the end of the
    #: outermost transaction), whichever way the session commits.
    deferred: bool
    #: The session operations after which a receiver's error, raised during
    #: them, is raised (with ``SESSIONEXT_RAISE_RECEIVER_ERRORS``) while the
    #: feature has a receiver that may raise.
    raises_after: frozenset[str]


#: The features of the extension, and what each costs while it is on.
FEATURES: dict[str, Feature] = {
    feature.name: feature
    for feature in (
        Feature(
            "bridged signals",
            sends=tuple(CATALOG),
            listens=tuple(CATALOG),  # each signal's own event, while it has receivers
            deferred=False,
            raises_after=OPERATIONS,
        ),
        Feature(
            "model changes",
            sends=("before_models_committed", "models_committed"),
            listens=(
                "after_begin",
                "after_flush",
                "before_commit",
                "after_commit",
                "after_transaction_end",
            ),
            deferred=True,
            raises_after=frozenset({"commit"}),
        ),
        Feature(
            "on_commit callbacks",
            sends=(),
            listens=("after_begin", "after_commit", "after_transaction_end"),
            deferred=True,
            raises_after=frozenset({"commit"}),
        ),
        Feature(
            "broadcast",
            # On while SESSIONEXT_BROADCAST is: the other processes need the
            # publications; the listener thread runs while the signal has a
            # receiver for the app.
            sends=("models_committed_anywhere",),
            listens=Broadcast.EVENTS,
            # Sent after the commit, in every process, on its listener thread.
            deferred=True,
            raises_after=frozenset(),
        ),
        Feature(
            "query recording",
            sends=("slow_query",),
            # It times the dialect's driver calls, with no event (see recording).
            listens=(),
            deferred=False,
            raises_after=OPERATIONS,
        ),
    )
}


class Runtime:
    """The engines, sessions and features of one app.

    It holds the app weakly: SQLAlchemy's listener registry is global and
    holds what the listeners hold, and a dropped app must go with its
    engines (see ``weakref.finalize`` in :meth:`SessionExt.init_app`).
    """

    def __init__(
        self,
        app: Flask,
        extension: SessionExt,
        engines: Mapping[str | None, sa.Engine],
        sessionmaker: orm.sessionmaker[Session],
        listeners: Listeners,
        recorder: recording.Recorder,
        broadcast: BroadcastSettings | None = None,
    ) -> None:
        self.app = weakref.ref(app)
        self.extension = extension
        #: The app's engines by bind key, a read-only mapping.
        self.engines = MappingProxyType(dict(engines))
        self.sessionmaker = sessionmaker
        self.session_class = sessionmaker.class_
        self.listeners = listeners
        self.recorder = recorder
        self.bridge = SignalBridge(self.app, self.session_class, engines, listeners)
        self.changes = ChangeTracker(
            self.app,
            self.session_class,
            listeners,
            signal_events=FEATURES["model changes"].listens,
            callback_events=FEATURES["on_commit callbacks"].listens,
            callbacks_started=self.refresh,
        )
        #: ``SESSIONEXT_BROADCAST``, while it is on.
        self.broadcast = (
            None
            if broadcast is None
            else Broadcast(self.app, self.session_class, listeners, engines, broadcast)
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
        #: The lock of :meth:`refresh`, by process id (see :meth:`_lock`).
        self._locks: dict[int, t.ContextManager[bool]] = {}

    def start(self, app: Flask) -> None:
        """Subscribe to receiver changes, turn on query recording as the
        settings say, and install what the receivers already connected need.
        """
        if raise_parked not in app.teardown_appcontext_funcs:
            # First in the list, so Flask runs it last, once the session of the
            # app context has been closed and its connection returned.
            app.teardown_appcontext_funcs.insert(0, raise_parked)
        for signal in namespace.values():
            # Weakly: Blinker forgets the subscription when the app and its
            # runtime are gone.
            signal.receiver_connected.connect(self._receivers_changed)
            signal.receiver_disconnected.connect(self._receivers_changed)
        self.recorder.install(app)
        if self.broadcast is not None:
            self.broadcast.start(app)
        self.refresh()

    def _receivers_changed(self, signal: object, **kwargs: object) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Bring every feature's listeners in line with the receivers, and
        the session operations that raise receiver errors with them.

        Also sweeps the listeners of receivers that were garbage-collected
        (Blinker says nothing of those), so it runs at every connect and
        disconnect of any signal, and (see :meth:`collect`) at teardown.
        """
        with self._lock():
            self.bridge.refresh()
            self.changes.refresh()
            if self.broadcast is not None:
                self.broadcast.refresh()
            self.listeners.flush_pending()
            raises_after: frozenset[str] = frozenset()
            if self.bridge.may_raise():
                raises_after |= FEATURES["bridged signals"].raises_after
            if self.changes.installed:
                raises_after |= FEATURES["model changes"].raises_after
            if self._slow_query_receivers():
                raises_after |= FEATURES["query recording"].raises_after
            # Whether a receiver may die unseen: checked at each teardown.
            self._watching = bool(self.bridge.installed or self.changes.installed)
            if self.session_class._sessionext_deferring != raises_after:
                self.session_class._sessionext_deferring = raises_after

    def _lock(self) -> t.ContextManager[bool]:
        """The lock of :meth:`refresh` in this process.

        Each process makes its own at its first refresh: a forked child
        never waits for one that a thread of its parent held at the fork,
        and under gevent it is made once the process is patched. A process
        claims it with one ``setdefault``, atomic without a lock. Re-entrant:
        a receiver connected by code that a refresh runs (a listener firing
        during an install) refreshes again, on the same thread.
        """
        pid = os.getpid()
        lock = self._locks.get(pid)
        if lock is None:
            lock = self._locks.setdefault(pid, threading.RLock())
            for other in list(self._locks):
                if other != pid:  # the parent's
                    self._locks.pop(other, None)
        return lock

    def _slow_query_receivers(self) -> bool:
        app = self.app()
        return (
            app is not None
            and self.recorder.threshold is not None
            and next(slow_query.receivers_for(app), None) is not None
        )

    def collect(self) -> None:
        """At an app-context teardown, a safe point: remove the listeners of
        receivers that were garbage-collected, and those left without
        handlers during a dispatch. Checks first, so it costs next to nothing.
        """
        if self.listeners.pending or (
            self._watching
            and (self.bridge.has_dead_receivers() or self.changes.has_dead_receivers())
        ):
            self.refresh()

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
