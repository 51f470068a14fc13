"""``db.register(listener)``: one object whose methods are named after signals."""

from __future__ import annotations

import difflib
import typing as t

from blinker import ANY, NamedSignal
from blinker._utilities import make_id
from flask import Flask

from .signals import namespace

#: How alike a method name and a signal name must be to call it a misspelling.
_TYPO_RATIO = 0.85


class Registration:
    """What :meth:`SessionExt.register` connected; :meth:`disconnect` undoes it."""

    def __init__(
        self, connected: list[tuple[NamedSignal, t.Callable[..., t.Any], object]]
    ) -> None:
        self.connected = connected

    def __repr__(self) -> str:
        names = ", ".join(signal.name for signal, _, _ in self.connected)
        return f"<Registration of {names}>"

    def disconnect(self) -> None:
        """Disconnect every receiver that the registration connected."""
        while self.connected:
            signal, receiver, sender = self.connected.pop()
            signal.disconnect(receiver, sender=sender)
            if sender is not ANY and not signal._by_receiver.get(make_id(receiver)):
                # Disconnected from its last sender, Blinker still holds the
                # receiver (strongly, here); let it go.
                signal.disconnect(receiver)


def register(listener: object, app: Flask | None) -> Registration:
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
    registration = Registration([])
    try:
        for name in matching:
            signal = namespace[name]
            signal.connect(methods[name], sender=sender, weak=False)
            registration.connected.append((signal, methods[name], sender))
    except BaseException:
        registration.disconnect()
        raise
    return registration
