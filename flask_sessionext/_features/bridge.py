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

import contextlib
import typing as t
import weakref

import sqlalchemy as sa
from flask import Flask

from ..signals import CATALOG, BridgedEvent
from .base import EVERY_OPERATION, Feature, Parts, Resolved, resolve, run

Handler = t.Callable[..., t.Any]


class _Receivers:
    """The resolved receivers of one installed signal, read by its listener
    at each send; replaced as a whole when they change.
    """

    __slots__ = ("resolved",)

    def __init__(self, resolved: Resolved) -> None:
        self.resolved = resolved


class SignalBridge(Feature):
    """The bridged-signal listeners of one app."""

    name = "bridged signals"
    sends = tuple(CATALOG)
    #: Each signal's own event, while it has receivers.
    listens = tuple(CATALOG)
    raises_after = EVERY_OPERATION

    def __init__(self, parts: Parts, rank: int) -> None:
        super().__init__(parts, rank)
        # Weak, so the class-level session listeners do not keep the app alive.
        self.app = parts.app
        self.session_class = parts.session_class
        #: The engines it listens to, with their bind keys: the app's, then
        #: those under its async engines once they exist.
        self._engines: list[tuple[str | None, sa.Engine]] = list(parts.engines.items())
        #: Installed signals by name: their (target, handler) pairs, and
        #: their receivers.
        self.installed: dict[str, tuple[list[tuple[t.Any, Handler]], _Receivers]] = {}

    def refresh(self, app: Flask) -> None:
        """Install, update or remove the listener of every signal as its
        receivers for the app say.
        """
        for entry in CATALOG.values():
            if entry.name in self.installed or entry.signal.receivers:
                self._refresh(app, entry)

    def _refresh(self, app: Flask, entry: BridgedEvent) -> None:
        resolved = resolve(entry.signal.receivers_for(app))
        if entry.name in self.installed:
            pairs, receivers = self.installed[entry.name]
            receivers.resolved = resolved
            if not resolved:
                del self.installed[entry.name]
                for target, handler in pairs:
                    self.unlisten(target, entry.name, handler)
        elif resolved:
            receivers = _Receivers(resolved)
            pairs = [
                (target, _handler(entry, self.app, key, receivers))
                for target, key in self._targets(entry)
            ]
            for target, handler in pairs:
                self.listen(target, entry.name, handler)
            self.installed[entry.name] = (pairs, receivers)

    def add_engines(
        self, app: Flask, engines: t.Sequence[tuple[str | None, sa.Engine]]
    ) -> None:
        """Install the engine listeners of the installed signals on ``engines``."""
        self._engines += engines
        for name, (pairs, receivers) in self.installed.items():
            entry = CATALOG[name]
            if entry.target == "session":
                continue
            for key, engine in engines:
                handler = _handler(entry, self.app, key, receivers)
                pairs.append((engine, handler))
                self.listen(engine, name, handler)

    def may_raise(self) -> bool:
        """Whether a receiver of an installed signal that reports (whose
        receivers' exceptions SQLAlchemy must not see) may raise.
        """
        return any(
            not CATALOG[name].propagates and _may_raise(receivers.resolved)
            for name, (_, receivers) in self.installed.items()
        )

    def has_receivers(self) -> bool:
        """Whether a signal's listener is installed."""
        return bool(self.installed)

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
        return [(engine, key) for key, engine in self._engines]


def _may_raise(resolved: Resolved) -> bool:
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
        if on_veto is None:
            run(app, name, receivers.resolved, (app,), kwargs, propagate=propagates)
            return
        try:
            run(app, name, receivers.resolved, (app,), kwargs, propagate=propagates)
        except BaseException:
            # The receiver's exception is the one to raise.
            with contextlib.suppress(Exception):
                on_veto(*args)
            raise

    return send
