"""The one place that calls user code: the receivers of every signal, the
``on_commit`` callbacks and the methods of ``db.register()`` objects.

:func:`run` calls each receiver as its signal's policy says. A receiver of a
signal that *propagates* (a veto) raises into SQLAlchemy. A receiver of a
signal that *reports* what already happened must not: SQLAlchemy must not
see such an exception, raised from inside its ``after_commit`` or ``checkin``
call, which would leave a session stuck in its committed state or a
connection counted as checked out. It is logged, and, with
``SESSIONEXT_RAISE_RECEIVER_ERRORS``, the first one of the running session
operation is parked here, to be raised once that operation has completed.

A ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
``SystemExit``, ``gevent.Timeout``) asks the program to stop what it does, so
it is always raised again, but only once SQLAlchemy has finished its
bookkeeping: at the end of the running session operation, or, when none is
running, at the end of the app context (see :func:`raise_parked`).

Async code runs to completion wherever it is: an ``async def`` function, an
object whose ``__call__`` is one, and any callable that returns a coroutine
(see :func:`invoke`); none is dropped unawaited.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import typing as t
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from flask import Flask

from .._config.settings import raise_receiver_errors
from .._sqlalchemy_private import await_in_greenlet, in_greenlet


class _Operation:
    """The session operation that is running: the receiver errors to raise
    once it has completed.
    """

    __slots__ = ("errors",)

    def __init__(self) -> None:
        #: The first error to raise; an interrupt comes before any exception.
        self.errors: list[BaseException] = []


#: The running session operation; ``None`` when there is none.
_current: ContextVar[_Operation | None] = ContextVar(
    "sessionext_operation", default=None
)
#: An interrupt raised by a receiver outside any session operation, waiting
#: for the end of the app context (or of the next session operation).
_parked: ContextVar[BaseException | None] = ContextVar(
    "sessionext_parked_interrupt", default=None
)


def receiver_name(receiver: object) -> str:
    """The dotted name of ``receiver`` for a log line: the user's function,
    also behind the wrappers of ``app.ensure_sync``, ``functools.partial``
    and ``functools.wraps``.
    """
    seen = 0
    while seen < 10:
        seen += 1
        inner = getattr(receiver, "__wrapped__", None) or getattr(
            receiver, "func", None
        )
        if inner is None or not callable(inner):
            break
        receiver = inner
    qualname = getattr(receiver, "__qualname__", None)
    if qualname is None:
        return repr(receiver)
    module = getattr(receiver, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)


def receiver_failed(app: Flask, name: str, receiver: object, error: Exception) -> None:
    """Log ``error`` of a ``receiver`` of signal ``name``, and park it to be
    raised after the running session operation when the app says so.
    """
    app.logger.error(
        "Receiver %s of signal %r raised %s.",
        receiver_name(receiver),
        name,
        type(error).__name__,
        exc_info=error,
    )
    operation = _current.get()
    if operation is None or operation.errors:
        return
    if raise_receiver_errors(app):
        operation.errors.append(error)


def receiver_interrupted(
    app: Flask, name: str, receiver: object, error: BaseException
) -> None:
    """Log the interrupt ``error`` of a ``receiver`` of signal ``name``, and
    park it to be raised once SQLAlchemy has finished what it was doing.

    An interrupt is raised whatever ``SESSIONEXT_RAISE_RECEIVER_ERRORS``
    says, and before any receiver exception parked in the same operation.
    """
    app.logger.error(
        "Receiver %s of signal %r raised %s; it is raised again once the"
        " session operation or the app context ends.",
        receiver_name(receiver),
        name,
        type(error).__name__,
        exc_info=error,
    )
    operation = _current.get()
    if operation is not None:
        if not operation.errors or isinstance(operation.errors[0], Exception):
            operation.errors.insert(0, error)
    elif _parked.get() is None:
        _parked.set(error)


def raise_parked(exc: BaseException | None = None) -> None:
    """Raise the interrupt parked outside any session operation, if any.

    Registered as an app-context teardown function, it runs after the
    extension's own teardown has closed the session.
    """
    error = _parked.get()
    if error is not None:
        _parked.set(None)
        raise error


@contextmanager
def collect_receiver_errors() -> Iterator[list[BaseException]]:
    """Park the receiver errors of the block in the running session operation,
    or, when none is running, in the yielded list, for the caller to raise.

    Not every commit runs through a wrapped session operation:
    ``with session.begin():`` and ``session.get_transaction().commit()``
    commit through SQLAlchemy's ``SessionTransaction``. The change signals
    collect their receivers' errors here and raise them once that commit has
    completed.
    """
    if _current.get() is not None:
        yield []  # the running operation raises them
        return
    operation = _Operation()
    token = _current.set(operation)
    try:
        yield operation.errors
    finally:
        _current.reset(token)


def run_operation(
    method: t.Callable[..., t.Any],
    session: object,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
) -> t.Any:
    """Call the session operation ``method``, and raise the first receiver
    error parked while it ran once it has completed (an interrupt first, and
    an interrupt parked before it, outside any operation, after it).

    The Session class of each app calls its operations through this while a
    receiver error may need raising (see ``_session.make_session_class``).
    """
    if _current.get() is not None:  # an operation inside an operation
        return method(session, *args, **kwargs)
    running = _Operation()
    token = _current.set(running)
    try:
        result = method(session, *args, **kwargs)
    except BaseException as e:
        first = running.errors[0] if running.errors else None
        if first is not None and first is not e and not isinstance(first, Exception):
            raise first from e  # an interrupt wins over the method's error
        raise
    finally:
        _current.reset(token)
    if running.errors:
        raise running.errors[0]
    raise_parked()
    return result


#: A receiver as a send finds it: a reference to it (weak, unless Blinker
#: holds it strongly) and whether it is async.
Resolved = tuple[tuple[t.Callable[[], t.Any], bool], ...]


def is_async(func: object) -> bool:
    """Whether calling ``func`` returns a coroutine to run: an ``async def``
    function (also behind ``functools.partial``), or an object whose
    ``__call__`` is one.
    """
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004
    )


def reference(receiver: t.Callable[..., t.Any]) -> t.Callable[[], t.Any]:
    """A reference to ``receiver`` that does not keep it alive: Blinker holds
    those it was told to hold, and a dead one is skipped.
    """
    try:
        if inspect.ismethod(receiver):
            return weakref.WeakMethod(receiver)
        return weakref.ref(receiver)
    except TypeError:  # takes no weak reference, so Blinker holds it strongly
        return lambda: receiver


def resolve(receivers: Iterable[t.Callable[..., t.Any]]) -> Resolved:
    """``receivers`` as :func:`run` takes them, resolved once for many sends."""
    return tuple((reference(receiver), is_async(receiver)) for receiver in receivers)


def strong(funcs: Iterable[t.Callable[..., t.Any]]) -> Resolved:
    """``funcs`` as :func:`run` takes them, held strongly (callbacks)."""
    return tuple(((lambda f=func: f), is_async(func)) for func in funcs)


def invoke(
    app: Flask,
    func: t.Callable[..., t.Any],
    async_: bool,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
) -> t.Any:
    """Call ``func(*args, **kwargs)``; an async ``func``, or a coroutine that
    a sync one returns, runs to completion as ``app.ensure_sync`` runs it.
    """
    if async_:
        return run_async(app, func, *args, **kwargs)
    result = func(*args, **kwargs)
    if inspect.iscoroutine(result):
        return run_async(app, _awaited, result)
    return result


async def _awaited(coroutine: t.Awaitable[t.Any]) -> t.Any:
    return await coroutine


def run(
    app: Flask,
    name: str,
    receivers: Resolved,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
    *,
    propagate: bool,
) -> bool:
    """Call each of ``receivers`` (of the signal, or ``"on_commit"``, named
    ``name``) with ``args`` and ``kwargs``, under the policy of the signal.

    With ``propagate``, the first exception is raised at once and the other
    receivers do not run. Otherwise an exception is logged and parked (see
    :func:`receiver_failed`) and the next receiver runs; an interrupt is
    parked (see :func:`receiver_interrupted`) and stops the rest.

    :return: whether the caller may go on: ``False`` after an interrupt.
    """
    for ref, async_ in receivers:
        receiver = ref()
        if receiver is None:
            continue
        try:
            if async_:
                run_async(app, receiver, *args, **kwargs)
            else:
                result = receiver(*args, **kwargs)
                if result is not None and inspect.iscoroutine(result):
                    run_async(app, _awaited, result)
        except BaseException as e:
            if propagate:
                raise
            if isinstance(e, Exception):
                receiver_failed(app, name, receiver, e)
            else:
                # SQLAlchemy finishes what it is doing (returns the
                # connection, closes it...) before this is raised again.
                receiver_interrupted(app, name, receiver, e)
                return False
    return True


def report(signal: t.Any, app: Flask, **kwargs: t.Any) -> None:
    """Send ``signal`` for something that already happened, by ``app``, to its
    receivers for ``app``: :func:`run` without ``propagate``.
    """
    _send(signal, app, kwargs, propagate=False)


def veto(signal: t.Any, app: Flask, **kwargs: t.Any) -> None:
    """Send ``signal`` before an action, by ``app``: a receiver's exception
    propagates, to stop the action (:func:`run` with ``propagate``).
    """
    _send(signal, app, kwargs, propagate=True)


def _send(
    signal: t.Any, app: Flask, kwargs: dict[str, t.Any], *, propagate: bool
) -> None:
    if not signal.is_muted:
        receivers = resolve(signal.receivers_for(app))
        run(app, signal.name, receivers, (app,), kwargs, propagate=propagate)


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

    Sent by an async session (in the greenlet of SQLAlchemy's asyncio
    extension), ``func`` runs on the session's own loop instead. A Quart app
    has no ``ensure_sync``: ``func`` runs on a new loop, as Flask's would.
    """
    if not inspect.iscoroutinefunction(func):
        # An object whose ``__call__`` is async: Flask's ``ensure_sync``
        # would call it as a sync function, and drop its coroutine.
        call = func

        async def func(*args: t.Any, **kwargs: t.Any) -> t.Any:
            return await call(*args, **kwargs)

    if in_greenlet():
        # Sent by an async session: its loop is running, and waits for it.
        return await_in_greenlet(func(*args, **kwargs))
    ensure_sync = getattr(app, "ensure_sync", None) or _run_on_new_loop
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return ensure_sync(func)(*args, **kwargs)
    context = contextvars.copy_context()
    results: list[t.Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(context.run(ensure_sync(func), *args, **kwargs))
        except BaseException as e:  # raised again in the caller's thread
            errors.append(e)

    name = receiver_name(func)
    thread = threading.Thread(target=target, name=f"sessionext-async {name}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def _run_on_new_loop(
    func: t.Callable[..., t.Awaitable[t.Any]],
) -> t.Callable[..., t.Any]:
    """``func`` made sync: each call runs it to completion on a new loop."""

    def call(*args: t.Any, **kwargs: t.Any) -> t.Any:
        async def main() -> t.Any:
            return await func(*args, **kwargs)

        return asyncio.run(main())

    return call
