"""``db.register(listener)``: one object whose methods are named after signals."""

from __future__ import annotations

import difflib
import functools
import inspect
import typing as t

from blinker import ANY, NamedSignal
from flask import Flask

from ..signals import namespace

#: How alike a method name and a signal name must be to call it a misspelling.
_TYPO_RATIO = 0.85


class Registration:
    """What :meth:`SessionExt.register` connected; :meth:`disconnect` undoes it."""

    def __init__(self) -> None:
        #: The receivers connected, each a wrapper of this registration's own,
        #: so that disconnecting one from every sender undoes exactly this
        #: registration, and no reference to the app is kept.
        self.connected: list[tuple[NamedSignal, t.Callable[..., t.Any]]] = []

    def __repr__(self) -> str:
        names = ", ".join(signal.name for signal, _ in self.connected)
        return f"<Registration of {names}>"

    def disconnect(self) -> None:
        """Disconnect every receiver that the registration connected."""
        while self.connected:
            signal, receiver = self.connected.pop()
            signal.disconnect(receiver)


def _receiver(method: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    """A receiver of this registration's own that calls ``method``; async
    when ``method`` is, and named like it in logs.
    """
    receiver: t.Callable[..., t.Any]
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def receive_async(sender: object, **kwargs: t.Any) -> t.Any:
            return await method(sender, **kwargs)

        receiver = receive_async
    else:

        @functools.wraps(method)
        def receive(sender: object, **kwargs: t.Any) -> t.Any:
            return method(sender, **kwargs)

        receiver = receive
    # It takes what the method takes: the check made when it connects reads
    # the receiver's own signature, not that of what it wraps.
    t.cast(t.Any, receiver).__signature__ = inspect.signature(method)
    return receiver


def connect_methods(listener: object, app: Flask | None) -> Registration:
    """Connect each public method of ``listener`` named like a signal, with a
    strong reference, to ``app``'s sends or (``None``) to every app's.

    :raise ValueError: a public method's name looks like a misspelt signal
        name; checked first.
    :raise TypeError: no public method is named like a signal.
    """
    methods = {
        name: getattr(listener, name)
        for name in dir(listener)
        if not name.startswith("_") and callable(getattr(listener, name, None))
    }
    valid = sorted(namespace)
    for name in methods:
        if name in namespace:
            continue
        close = difflib.get_close_matches(name, valid, n=1, cutoff=_TYPO_RATIO)
        if close:
            raise ValueError(
                f"{type(listener).__name__}.{name}() is named like no signal;"
                f" did you mean '{close[0]}'? Rename it, or make it private"
                " with a leading underscore."
            )
    matching = [name for name in methods if name in namespace]
    if not matching:
        raise TypeError(
            f"{type(listener).__name__} has no public method named like a"
            f" signal. Valid names: {', '.join(valid)}."
        )
    sender = ANY if app is None else app
    registration = Registration()
    try:
        for name in matching:
            signal = namespace[name]
            receiver = _receiver(methods[name])
            signal.connect(receiver, sender=sender, weak=False)
            registration.connected.append((signal, receiver))
    except BaseException:
        registration.disconnect()
        raise
    return registration
