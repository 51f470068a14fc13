"""What happens when a receiver of a signal that reports raises.

SQLAlchemy must not see such an exception: raised from inside its
``after_commit`` or ``checkin`` call, it would leave a session stuck in its
committed state or a connection counted as checked out. The bridge catches it,
logs it, and, with ``SESSIONEXT_RAISE_RECEIVER_ERRORS``, parks the first one
of the running session operation here, to be raised once that operation has
completed.
"""

from __future__ import annotations

import functools
import typing as t
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from flask import Flask


class _Operation:
    """The session operation that is running: the receiver errors to raise
    once it has completed.
    """

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: list[Exception] = []


#: The running session operation; ``None`` when there is none.
_current: ContextVar[_Operation | None] = ContextVar(
    "sessionext_operation", default=None
)


#: The methods of Session that run SQL or end a transaction.
OPERATIONS = (
    "begin_nested",
    "close",
    "commit",
    "connection",
    "delete",
    "execute",
    "flush",
    "get",
    "get_one",
    "invalidate",
    "merge",
    "refresh",
    "reset",
    "rollback",
    "scalar",
    "scalars",
)

_F = t.TypeVar("_F", bound=t.Callable[..., t.Any])


def receiver_failed(app: Flask, name: str, receiver: object, error: Exception) -> None:
    """Log ``error`` of a ``receiver`` of signal ``name``, and park it to be
    raised after the running session operation when the app says so.
    """
    qualname = getattr(receiver, "__qualname__", repr(receiver))
    module = getattr(receiver, "__module__", None)
    app.logger.error(
        "Receiver %s of signal %r raised %s.",
        f"{module}.{qualname}" if module else qualname,
        name,
        type(error).__name__,
        exc_info=error,
    )
    operation = _current.get()
    if operation is None or operation.errors:
        return
    if app.config.get("SESSIONEXT_RAISE_RECEIVER_ERRORS", app.testing):
        operation.errors.append(error)


@contextmanager
def collect_receiver_errors() -> Iterator[list[Exception]]:
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


def guard(session_class: type, names: t.Collection[str]) -> None:
    """Wrap exactly the operations ``names`` of ``session_class`` with
    :func:`operation`.

    Only while some receiver error may need raising, and only the operations
    in which it may: an app with none of the reporting signals in use pays
    nothing per query.
    """
    unguard(session_class)
    for name in names:
        setattr(session_class, name, operation(getattr(session_class, name)))


def unguard(session_class: type) -> None:
    """Undo :func:`guard`."""
    for name in OPERATIONS:
        if name in vars(session_class):
            delattr(session_class, name)


def operation(method: _F) -> _F:
    """Wrap a Session method so that a receiver error parked while it runs is
    raised once it has completed.
    """

    @functools.wraps(method)
    def wrapper(self: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if _current.get() is not None:  # an operation inside an operation
            return method(self, *args, **kwargs)
        operation = _Operation()
        token = _current.set(operation)
        try:
            result = method(self, *args, **kwargs)
        finally:
            _current.reset(token)
        if operation.errors:
            raise operation.errors[0]
        return result

    return t.cast(_F, wrapper)
