"""What happens when a receiver of a signal that reports raises.

SQLAlchemy must not see such an exception: raised from inside its
``after_commit`` or ``checkin`` call, it would leave a session stuck in its
committed state or a connection counted as checked out. The bridge catches it,
logs it, and, with ``SESSIONEXT_RAISE_RECEIVER_ERRORS``, parks the first one
of the running session operation here, to be raised once that operation has
completed.

A ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
``SystemExit``, ``gevent.Timeout``) asks the program to stop what it does, so
it is always raised again, but only once SQLAlchemy has finished its
bookkeeping: at the end of the running session operation, or, when none is
running, at the end of the app context (see :func:`raise_parked`).
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from flask import Flask

from .._config.settings import raise_receiver_errors


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
