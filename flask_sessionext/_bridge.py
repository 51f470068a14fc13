"""From the signal catalog to SQLAlchemy listeners, installed only while a
signal has receivers for an app.

Every bridged signal's ``receiver_connected`` / ``receiver_disconnected`` runs
:func:`sync`, which installs the listener of a signal on each app that has a
receiver for it, removes it from the others, and resolves each app's
receivers ahead of the sends, so that a send costs no more than calling them.
Blinker says nothing when a weakly referenced receiver is garbage-collected;
its listener, which then sends to nobody, goes at the next safe point: the
next connect or disconnect, or the next app-context teardown
(:meth:`AppBridge.collect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import typing as t
import weakref
from inspect import iscoroutinefunction, ismethod

import sqlalchemy as sa
from blinker import NamedSignal, Signal
from flask import Flask

from ._errors import (
    OPERATIONS,
    guard,
    raise_parked,
    receiver_failed,
    receiver_interrupted,
    receiver_name,
)
from ._hooks import Handler, Hooks
from .signals import CATALOG, BridgedEvent

_lock = threading.RLock()
_bridges: weakref.WeakSet[AppBridge] = weakref.WeakSet()

#: A receiver as a send finds it: a weak reference (or, for an object that
#: takes none, a strong one behind a lambda) and whether it is a coroutine.
_Resolved = tuple[tuple[t.Callable[[], t.Any], bool], ...]

#: Receivers of this package that report their own errors, and those of the
#: receivers they call, with :func:`report`: alone, they need no wrapped
#: session operations (see :meth:`AppBridge.set_guard`).
quiet_receivers: set[t.Callable[..., t.Any]] = set()


def _resolve(signal: Signal, app: Flask) -> _Resolved:
    """The receivers of ``signal`` for ``app``, referenced weakly: Blinker
    holds those it was told to hold, and a dead one is skipped.
    """
    resolved = []
    for receiver in signal.receivers_for(app):
        resolved.append((receiver_ref(receiver), iscoroutinefunction(receiver)))
    return tuple(resolved)


def receiver_ref(receiver: t.Callable[..., t.Any]) -> t.Callable[[], t.Any]:
    try:
        if ismethod(receiver):
            return weakref.WeakMethod(receiver)
        return weakref.ref(receiver)
    except TypeError:  # takes no weak reference, so Blinker holds it strongly
        return lambda: receiver


class AppBridge:
    """The bridged-signal listeners of one app."""

    def __init__(
        self,
        app: Flask,
        session_class: type[sa.orm.Session],
        engines: t.Mapping[str | None, sa.Engine],
        hooks: Hooks,
    ) -> None:
        # Weak, so the class-level session listeners do not keep the app alive.
        self.app = weakref.ref(app)
        self.session_class = session_class
        self._engines = engines
        self.hooks = hooks
        #: Installed signals by name: their (target, handler) pairs, and the
        #: cell holding their resolved receivers.
        self.installed: dict[
            str, tuple[list[tuple[t.Any, Handler]], list[_Resolved]]
        ] = {}
        #: Features that report receiver errors from session operations.
        #: The operations each of them needs wrapped.
        self._guards: dict[str, frozenset[str]] = {}

    def set_guard(self, owner: str, on: bool | t.Collection[str]) -> None:
        """Say whether feature ``owner`` sends reporting signals from inside
        session operations (see :func:`flask_sessionext._errors.guard`).
        """
        before = set().union(*self._guards.values())
        if on:
            self._guards[owner] = frozenset(OPERATIONS if on is True else on)
        else:
            self._guards.pop(owner, None)
        after = set().union(*self._guards.values())
        if after != before:
            guard(self.session_class, after)

    def sync(self, entry: BridgedEvent) -> None:
        """Install, refresh or remove the listener of ``entry`` as its
        receivers say.
        """
        app = self.app()
        resolved = _resolve(entry.signal, app) if app is not None else ()
        if entry.name in self.installed:
            pairs, cell = self.installed[entry.name]
            cell[0] = resolved
            if not resolved:
                del self.installed[entry.name]
                for target, handler in pairs:
                    self.hooks.remove(target, entry.name, handler)
        elif resolved:
            cell = [resolved]
            pairs = [
                (target, _handler(entry, self.app, key, cell))
                for target, key in self._targets(entry)
            ]
            for target, handler in pairs:
                self.hooks.add(target, entry.name, handler)
            self.installed[entry.name] = (pairs, cell)
        else:
            return
        self.set_guard(
            "signals",
            any(
                not CATALOG[name].propagates and _may_raise(cell[0])
                for name, (_, cell) in self.installed.items()
            ),
        )

    def collect(self) -> None:
        """Drop receivers that were garbage-collected, and the listeners left
        without any; runs at each app-context teardown, so it checks first.
        """
        dead = [
            name
            for name, (_, cell) in self.installed.items()
            if any(ref() is None for ref, _ in cell[0])
        ]
        if dead or self.hooks.pending:
            with _lock:
                for name in dead:
                    self.sync(CATALOG[name])
                self.hooks.flush_pending()

    def _targets(self, entry: BridgedEvent) -> list[tuple[t.Any, str | None]]:
        if entry.target == "session":
            return [(self.session_class, None)]
        return [(engine, key) for key, engine in self._engines.items()]


def _may_raise(resolved: _Resolved) -> bool:
    """Whether one of the ``resolved`` receivers may raise."""
    for ref, _ in resolved:
        receiver = ref()
        if receiver is not None and receiver not in quiet_receivers:
            return True
    return False


def register(bridge: AppBridge) -> None:
    """Give a newly initialised app the listeners its receivers need."""
    app = bridge.app()
    if app is not None and raise_parked not in app.teardown_appcontext_funcs:
        # First in the list, so Flask runs it last, once the session of the
        # app context has been closed and its connection returned.
        app.teardown_appcontext_funcs.insert(0, raise_parked)
    with _lock:
        _bridges.add(bridge)
        for entry in CATALOG.values():
            if entry.signal.receivers:
                bridge.sync(entry)


def sync(signal: Signal, **kwargs: t.Any) -> None:
    """Bring every app's listeners in line with the signals' receivers.

    Connected to each bridged signal's ``receiver_connected`` and
    ``receiver_disconnected``; it also sweeps listeners left behind by
    garbage-collected receivers, on every signal.
    """
    with _lock:
        for bridge in list(_bridges):
            for entry in CATALOG.values():
                if entry.signal.receivers or entry.name in bridge.installed:
                    bridge.sync(entry)
            bridge.hooks.flush_pending()


def on_receivers_changed(
    signals: t.Iterable[Signal], callback: t.Callable[..., None]
) -> None:
    """Call ``callback(signal, **kwargs)`` after each connect to, or
    disconnect from, one of ``signals``.
    """
    for signal in signals:
        signal.receiver_connected.connect(callback, weak=False)
        signal.receiver_disconnected.connect(callback, weak=False)


on_receivers_changed((entry.signal for entry in CATALOG.values()), sync)


def _close_connection(conn: sa.Connection, *args: t.Any) -> None:
    conn.close()


#: What a veto leaves to clean up, by event: SQLAlchemy fires
#: ``engine_connect`` with the pool's connection already checked out for a
#: ``Connection`` that nobody gets to close when the event raises.
_ON_VETO: dict[str, t.Callable[..., None]] = {"engine_connect": _close_connection}


def _handler(
    entry: BridgedEvent,
    app_ref: weakref.ref[Flask],
    bind_key: str | None,
    cell: list[_Resolved],
) -> Handler:
    """The function that turns the listener's positional arguments into a
    send of ``entry``'s signal by the app, to the receivers in ``cell``.
    """
    names = entry.argnames
    signal = entry.signal
    name = entry.name
    propagates = entry.propagates
    with_bind_key = entry.target != "session"
    on_veto = _ON_VETO.get(name)

    def send(*args: t.Any) -> None:
        app = app_ref()
        if app is None or signal.is_muted:
            return
        kwargs = dict(zip(names, args))
        if with_bind_key:
            kwargs["bind_key"] = bind_key
        for ref, is_async in cell[0]:
            receiver = ref()
            if receiver is None:
                continue
            try:
                if is_async:
                    run_async(app, receiver, app, **kwargs)
                else:
                    receiver(app, **kwargs)
            except BaseException as e:
                if propagates:
                    if on_veto is not None:
                        # The receiver's exception is the one to raise.
                        with contextlib.suppress(Exception):
                            on_veto(*args)
                    raise
                if isinstance(e, Exception):
                    receiver_failed(app, name, receiver, e)
                else:
                    # SQLAlchemy finishes what it is doing (returns the
                    # connection, closes it...) before this is raised again.
                    receiver_interrupted(app, name, receiver, e)
                    return

    return send


def run_async(
    app: Flask, func: t.Callable[..., t.Any], *args: t.Any, **kwargs: t.Any
) -> t.Any:
    """Call the coroutine function ``func`` to completion, as
    ``app.ensure_sync(func)(*args, **kwargs)`` does, also from a thread
    whose event loop is running.

    An ``async def`` view runs on an event loop in the request's thread, and
    asgiref refuses to start another one there. The commit of such a view
    runs synchronously on that loop, which waits for it anyway; so ``func``
    runs in a thread of its own, as asgiref runs it for a sync view, with a
    copy of the caller's context: the same app context, ``g`` and
    ``db.session``, used by one thread at a time since the caller waits.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return app.ensure_sync(func)(*args, **kwargs)
    context = contextvars.copy_context()
    results: list[t.Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(context.run(app.ensure_sync(func), *args, **kwargs))
        except BaseException as e:  # raised again in the caller's thread
            errors.append(e)

    name = receiver_name(func)
    thread = threading.Thread(target=target, name=f"sessionext-async {name}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def report(signal: NamedSignal, app: Flask, **kwargs: t.Any) -> None:
    """Send ``signal`` for something that already happened: every receiver
    runs, and an exception of one is handed to :func:`receiver_failed`; an
    interrupt (a ``BaseException`` that is no ``Exception``) skips the rest
    and is handed to :func:`receiver_interrupted`.
    """
    if signal.is_muted:
        return
    for receiver in signal.receivers_for(app):
        try:
            if iscoroutinefunction(receiver):
                run_async(app, receiver, app, **kwargs)
            else:
                receiver(app, **kwargs)
        except Exception as e:
            receiver_failed(app, signal.name, receiver, e)
        except BaseException as e:
            receiver_interrupted(app, signal.name, receiver, e)
            return
