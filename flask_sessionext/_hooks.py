"""One SQLAlchemy listener per event and target, shared by every consumer.

SQLAlchemy does not deduplicate class-level listeners, and every listener it
dispatches to costs a call per event. Features of this package (the SQLite
transaction fix, synchronize-session, recording, signals, ...) therefore never
call :func:`sqlalchemy.event.listen` themselves: they add a handler here, and
the first handler of an ``(target, event)`` pair installs the one listener,
the last one to leave removes it.
"""

from __future__ import annotations

import threading
import typing as t

import sqlalchemy as sa
from sqlalchemy import event

from ._compat import clear_event_flags

Handler = t.Callable[..., t.Any]


class _Hook:
    """The installed listener of one event on one target, and its handlers."""

    __slots__ = ("_active", "handlers", "identifier", "listener", "target")

    def __init__(self, target: t.Any, identifier: str) -> None:
        self.target = target
        self.identifier = identifier
        #: Replaced, never mutated, so a dispatch in progress is not disturbed.
        self.handlers: tuple[Handler, ...] = ()
        #: One item per dispatch running now, in any thread. ``list.append``
        #: and ``list.pop`` are atomic, where ``count += 1`` on an attribute
        #: is a read and a write that two threads may interleave (and lose a
        #: count, so a listener would be removed during its dispatch).
        self._active: list[None] = []
        active = self._active

        def listener(*args: t.Any) -> None:
            active.append(None)
            try:
                for handler in self.handlers:
                    handler(*args)
            finally:
                active.pop()

        self.listener = listener

    @property
    def dispatching(self) -> bool:
        """Whether SQLAlchemy is dispatching the event to the listener now."""
        return bool(self._active)


class Hooks:
    """The SQLAlchemy listeners that this package installed for one app."""

    def __init__(self) -> None:
        # Re-entrant: add() flushes pending removals under it.
        self._lock = threading.RLock()
        self._hooks: dict[tuple[int, str], _Hook] = {}
        #: Hooks left without handlers while they were dispatching.
        self.pending: list[_Hook] = []

    def add(self, target: t.Any, identifier: str, handler: Handler) -> None:
        """Call ``handler`` with the listener's positional arguments whenever
        ``identifier`` fires on ``target``, after the handlers added before it.
        """
        with self._lock:
            self.flush_pending()
            key = (id(target), identifier)
            hook = self._hooks.get(key)
            if hook is None:
                hook = self._hooks[key] = _Hook(target, identifier)
            if handler in hook.handlers:
                return
            hook.handlers = (*hook.handlers, handler)
            if len(hook.handlers) == 1 and hook not in self.pending:
                event.listen(target, identifier, hook.listener)
            elif hook in self.pending:
                self.pending.remove(hook)

    def remove(self, target: t.Any, identifier: str, handler: Handler) -> None:
        """Undo :meth:`add`. The listener goes with its last handler, or at
        the next :meth:`flush_pending` when it is being dispatched right now.
        """
        with self._lock:
            hook = self._hooks.get((id(target), identifier))
            if hook is None or handler not in hook.handlers:
                return
            hook.handlers = tuple(h for h in hook.handlers if h != handler)
            if not hook.handlers:
                if hook.dispatching:
                    # SQLAlchemy forbids removing a listener during its dispatch.
                    self.pending.append(hook)
                else:
                    self._uninstall(hook)

    def flush_pending(self) -> None:
        """Remove listeners that lost their last handler during a dispatch."""
        with self._lock:
            for hook in list(self.pending):
                if not hook.dispatching and not hook.handlers:
                    self.pending.remove(hook)
                    self._uninstall(hook)

    def remove_all(self) -> None:
        """Remove every listener, when the app is gone.

        SQLAlchemy's listener registry holds its targets strongly (the app's
        Session class, and through it its engines and their pools): without
        this, a dropped app would keep them, and their connections, for good.
        """
        with self._lock:
            for hook in list(self._hooks.values()):
                hook.handlers = ()
                self._uninstall(hook)
            self.pending.clear()

    def _uninstall(self, hook: _Hook) -> None:
        del self._hooks[(id(hook.target), hook.identifier)]
        event.remove(hook.target, hook.identifier, hook.listener)
        if isinstance(hook.target, sa.Engine):
            clear_event_flags(hook.target)

    def count(self, target: t.Any) -> int:
        """How many listeners this object installed on ``target``."""
        with self._lock:
            return sum(1 for hook in self._hooks.values() if hook.target is target)
