"""What is checked when a receiver connects to a signal of this package.

Each signal's ``receiver_connected`` runs :func:`on_connected`, which refuses
a receiver that cannot take what the signal sends (it disconnects it and
raises :exc:`TypeError`, which Blinker passes on), and watches a function
defined in another function, or a lambda, connected weakly: if it is
garbage-collected while connected, as a receiver connected with a plain
``connect()`` in an application factory is when the factory returns, the
next app-context teardown logs a warning naming it
(:func:`report_collected`). Blinker says nothing when that happens, and the
receiver simply never runs again.

The watched receivers are kept for the whole process, because the process is
their scope: the signals are module-level objects, and a receiver may be
connected for every sender, or for an app before its ``init_app``, so it
belongs to no app's runtime. No lock guards them: each change is one
operation on a built-in ``dict`` or ``deque``, atomic under the GIL (and
under gevent, which switches greenlets only at blocking calls), and lookups
read a copy.
"""

from __future__ import annotations

import inspect
import itertools
import typing as t
import weakref
from collections import deque
from dataclasses import dataclass

from blinker import ANY, NamedSignal
from flask import Flask

from ..signals import CATALOG, EXTENSION_KWARGS, namespace
from .calls import receiver_name

_P = inspect.Parameter
_NAMED = (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)


def signal_kwargs(signal: NamedSignal) -> tuple[str, ...] | None:
    """The keyword arguments that ``signal`` sends, or ``None`` for a signal
    that is not one of this package's.
    """
    entry = CATALOG.get(signal.name)
    if entry is not None:
        return entry.kwargs
    return EXTENSION_KWARGS.get(signal.name)


def check_signature(signal: NamedSignal, receiver: t.Callable[..., t.Any]) -> None:
    """Raise :exc:`TypeError` if ``receiver`` cannot be called as ``signal``
    calls it: the sender first, then the signal's keyword arguments.

    The signature read is the receiver's own (a ``__signature__`` counts,
    ``functools.wraps`` is not followed: a decorator may change what its
    function takes). A receiver with no readable signature is not checked.
    """
    kwargs = signal_kwargs(signal)
    if kwargs is None:
        return
    try:
        signature = inspect.signature(receiver, follow_wrapped=False)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, **dict.fromkeys(kwargs))
    except TypeError as e:
        problems = _problems(signature, kwargs) or [str(e)]
        call = ", ".join(["app", *(f"{name}=..." for name in kwargs)])
        raise TypeError(
            f"Receiver {receiver_name(receiver)!r} cannot receive signal"
            f" {signal.name!r}: {'; '.join(problems)}. The signal calls"
            f" receiver({call}): take the app first and these keyword"
            " arguments, or '**kwargs' for those it does not use."
        ) from None


def _problems(signature: inspect.Signature, kwargs: tuple[str, ...]) -> list[str]:
    """Why ``signature`` does not bind the sender and ``kwargs``."""
    params = list(signature.parameters.values())
    kinds = {param.kind for param in params}
    positional = [
        p for p in params if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
    ]
    sender = positional[0] if positional else None
    problems = []
    if sender is None and _P.VAR_POSITIONAL not in kinds:
        problems.append("it has no positional parameter for the app")
    elif sender is not None and sender.name in kwargs:
        problems.append(
            f"its first parameter {sender.name!r} gets the app, and the signal"
            f" also sends {sender.name!r}"
        )
    if _P.VAR_KEYWORD not in kinds:
        named = {p.name for p in params if p.kind in _NAMED and p is not sender}
        unaccepted = [name for name in kwargs if name not in named]
        if sender is not None and sender.name in unaccepted:
            unaccepted.remove(sender.name)  # said above
        if unaccepted:
            problems.append(f"it has no parameter for {_quoted(unaccepted)}")
    required = [
        p.name
        for p in params
        if p is not sender
        and p.default is _P.empty
        and p.kind not in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD)
        and (p.kind is _P.POSITIONAL_ONLY or p.name not in kwargs)
    ]
    if required:
        problems.append(
            f"it requires {_quoted(required)}, which the signal does not send"
        )
    return problems


def _quoted(names: t.Iterable[str]) -> str:
    return ", ".join(repr(name) for name in names)


@dataclass(frozen=True)
class _Watch:
    """A nested function connected weakly to one signal for one sender."""

    signal: str
    name: str
    ref: weakref.ref[t.Callable[..., t.Any]]
    #: The sender's id, or ``ANY``.
    sender: object
    #: The app to log on, or ``None`` for the first app that tears down.
    app: weakref.ref[Flask] | None


_tokens = itertools.count()
#: The watched receivers, by a token of their own (an id may be reused).
_watched: dict[int, _Watch] = {}
#: Tokens of watched receivers that were garbage-collected. Weak-reference
#: callbacks run at any point of any thread, so they only append here.
collected: deque[int] = deque()


def _is_nested(receiver: t.Callable[..., t.Any]) -> bool:
    """Whether ``receiver`` is a function that dies with its scope."""
    qualname = getattr(receiver, "__qualname__", "")
    return inspect.isfunction(receiver) and (
        "<locals>" in qualname or "<lambda>" in qualname
    )


def _watch(
    signal: NamedSignal, receiver: t.Callable[..., t.Any], sender: t.Any
) -> None:
    token = next(_tokens)
    ref = weakref.ref(receiver, lambda _: collected.append(token))
    app = weakref.ref(sender) if isinstance(sender, Flask) else None
    _watched[token] = _Watch(
        signal.name,
        receiver_name(receiver),
        ref,
        ANY if sender is ANY else id(sender),
        app,
    )


def _unwatch(signal: NamedSignal, receiver: t.Any, sender: t.Any) -> None:
    """Stop watching ``receiver`` for ``sender`` (all of them for ``ANY``)."""
    sender_id = ANY if sender is ANY else id(sender)
    for token, watch in _watched.copy().items():
        if (
            watch.signal == signal.name
            and watch.ref() is receiver
            and sender_id in (ANY, watch.sender)
        ):
            _watched.pop(token, None)


def on_connected(
    signal: NamedSignal,
    *,
    receiver: t.Callable[..., t.Any],
    sender: t.Any,
    weak: bool = True,
    **kwargs: t.Any,
) -> None:
    """Check a newly connected receiver, and watch it if it may die unseen.

    :raise TypeError: it cannot take what the signal sends; it is
        disconnected first.
    """
    try:
        check_signature(signal, receiver)
    except TypeError:
        # Blinker disconnects it from this sender only, and would keep it
        # in ``signal.receivers``, held strongly.
        signal.disconnect(receiver)
        raise
    if not weak:  # Blinker now holds it strongly, for every sender
        _unwatch(signal, receiver, ANY)
    elif _is_nested(receiver):
        _unwatch(signal, receiver, sender)
        _watch(signal, receiver, sender)


def on_disconnected(
    signal: NamedSignal, *, receiver: t.Any, sender: t.Any, **kwargs: t.Any
) -> None:
    """Forget a receiver disconnected on purpose."""
    if _watched:
        _unwatch(signal, receiver, sender)


def report_collected(app: Flask) -> None:
    """Log on ``app.logger`` each watched receiver that was garbage-collected
    while still connected for ``app`` or for every sender.
    """
    for _ in range(len(collected)):
        try:
            token = collected.popleft()
        except IndexError:  # another thread took it
            return
        watch = _watched.get(token)
        if watch is None:  # disconnected before it died
            continue
        owner = watch.app() if watch.app is not None else app
        if owner is not None and owner is not app:
            collected.append(token)  # for its own app's logger
            continue
        if _watched.pop(token, None) is None:  # another thread reported it
            continue
        if owner is None:  # its app is gone too
            continue
        app.logger.warning(
            "Receiver %r of signal %r was garbage-collected while connected,"
            " so it no longer runs: Blinker holds a receiver weakly unless"
            " told otherwise, and a function defined inside another one dies"
            " when that one returns. Connect it with 'weak=False' (or"
            " 'connect_via(app)'), or define it at module level.",
            watch.name,
            watch.signal,
        )


for _signal in namespace.values():
    _signal.receiver_connected.connect(on_connected, weak=False)
    _signal.receiver_disconnected.connect(on_disconnected, weak=False)
