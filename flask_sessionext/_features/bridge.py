"""From the signal catalog to SQLAlchemy listeners, installed only while a
signal has receivers for an app.

The app's runtime calls :meth:`SignalBridge.refresh` after every connect or
disconnect of a receiver; it installs the listener of each signal that has a
receiver for the app, removes the others, and resolves the app's receivers
ahead of the sends, so that a send costs no more than calling them.
Blinker says nothing when a weakly referenced receiver is garbage-collected;
its listener, which then sends to nobody, goes at the next safe point: the
next connect or disconnect, or the next app-context teardown.
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

from .._engines.listeners import Handler, Listeners
from .._receivers.errors import (
    receiver_failed,
    receiver_interrupted,
    receiver_name,
)
from ..signals import CATALOG, BridgedEvent

#: A receiver as a send finds it: a weak reference (or, for an object that
#: takes none, a strong one behind a lambda) and whether it is a coroutine.
_Resolved = tuple[tuple[t.Callable[[], t.Any], bool], ...]


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


class _Receivers:
    """The resolved receivers of one installed signal, read by its listener
    at each send; replaced as a whole when they change.
    """

    __slots__ = ("resolved",)

    def __init__(self, resolved: _Resolved) -> None:
        self.resolved = resolved


class SignalBridge:
    """The bridged-signal listeners of one app."""

    def __init__(
        self,
        app: weakref.ref[Flask],
        session_class: type[sa.orm.Session],
        engines: t.Mapping[str | None, sa.Engine],
        listeners: Listeners,
    ) -> None:
        # Weak, so the class-level session listeners do not keep the app alive.
        self.app = app
        self.session_class = session_class
        self._engines = engines
        self.listeners = listeners
        #: Installed signals by name: their (target, handler) pairs, and
        #: their receivers.
        self.installed: dict[str, tuple[list[tuple[t.Any, Handler]], _Receivers]] = {}

    def refresh(self) -> None:
        """Install, update or remove the listener of every signal as its
        receivers for the app say.
        """
        for entry in CATALOG.values():
            if entry.name in self.installed or entry.signal.receivers:
                self._refresh(entry)

    def _refresh(self, entry: BridgedEvent) -> None:
        app = self.app()
        resolved = _resolve(entry.signal, app) if app is not None else ()
        if entry.name in self.installed:
            pairs, receivers = self.installed[entry.name]
            receivers.resolved = resolved
            if not resolved:
                del self.installed[entry.name]
                for target, handler in pairs:
                    self.listeners.remove(target, entry.name, handler)
        elif resolved:
            receivers = _Receivers(resolved)
            pairs = [
                (target, _handler(entry, self.app, key, receivers))
                for target, key in self._targets(entry)
            ]
            for target, handler in pairs:
                self.listeners.add(target, entry.name, handler)
            self.installed[entry.name] = (pairs, receivers)

    def may_raise(self) -> bool:
        """Whether a receiver of an installed signal that reports (whose
        receivers' exceptions SQLAlchemy must not see) may raise.
        """
        return any(
            not CATALOG[name].propagates and _may_raise(receivers.resolved)
            for name, (_, receivers) in self.installed.items()
        )

    def has_dead_receivers(self) -> bool:
        """Whether an installed signal lost a receiver to the garbage collector."""
        return any(
            ref() is None
            for _, receivers in self.installed.values()
            for ref, _ in receivers.resolved
        )

    def _targets(self, entry: BridgedEvent) -> list[tuple[t.Any, str | None]]:
        if entry.target == "session":
            return [(self.session_class, None)]
        return [(engine, key) for key, engine in self._engines.items()]


def _may_raise(resolved: _Resolved) -> bool:
    """Whether one of the ``resolved`` receivers is alive (and so may raise)."""
    return any(ref() is not None for ref, _ in resolved)


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
    receivers: _Receivers,
) -> Handler:
    """The function that turns the listener's positional arguments into a
    send of ``entry``'s signal by the app, to ``receivers``.
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
        for ref, is_async in receivers.resolved:
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
