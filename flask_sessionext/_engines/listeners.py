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

from .._sqlalchemy_private import clear_event_flags
from .fork_safety import process_lock

Handler = t.Callable[..., t.Any]


class _Listener:
    """The installed listener of one event on one target, and its handlers."""

    __slots__ = ("_active", "function", "handlers", "identifier", "ranks", "target")

    def __init__(self, target: t.Any, identifier: str) -> None:
        self.target = target
        self.identifier = identifier
        #: Replaced, never mutated, so a dispatch in progress is not disturbed.
        self.handlers: tuple[Handler, ...] = ()
        #: The rank of each handler: handlers run by rank, then as added.
        self.ranks: dict[Handler, int] = {}
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

        self.function = listener

    @property
    def dispatching(self) -> bool:
        """Whether SQLAlchemy is dispatching the event to the listener now."""
        return bool(self._active)


class Listeners:
    """The SQLAlchemy listeners that this package installed for one app."""

    def __init__(self) -> None:
        # By process (see ``process_lock``). Re-entrant: add() flushes
        # pending removals under it.
        self._locks: dict[int, threading.RLock] = {}
        self._listeners: dict[tuple[int, str], _Listener] = {}
        #: Listeners left without handlers while they were dispatching.
        self.pending: list[_Listener] = []

    def add(
        self, target: t.Any, identifier: str, handler: Handler, *, rank: int = 0
    ) -> None:
        """Call ``handler`` with the listener's positional arguments whenever
        ``identifier`` fires on ``target``: after the handlers of a lower
        ``rank``, and after those of its rank added before it.
        """
        with process_lock(self._locks):
            self.flush_pending()
            key = (id(target), identifier)
            entry = self._listeners.get(key)
            if entry is None:
                entry = self._listeners[key] = _Listener(target, identifier)
            if handler in entry.handlers:
                return
            entry.ranks[handler] = rank
            ranks = entry.ranks
            # Replaced as a whole: a dispatch in progress keeps its tuple.
            entry.handlers = tuple(
                sorted((*entry.handlers, handler), key=lambda h: ranks[h])
            )
            if len(entry.handlers) == 1 and entry not in self.pending:
                event.listen(target, identifier, entry.function)
            elif entry in self.pending:
                self.pending.remove(entry)

    def remove(self, target: t.Any, identifier: str, handler: Handler) -> None:
        """Undo :meth:`add`. The listener goes with its last handler, or at
        the next :meth:`flush_pending` when it is being dispatched right now.
        """
        with process_lock(self._locks):
            entry = self._listeners.get((id(target), identifier))
            if entry is None or handler not in entry.handlers:
                return
            entry.handlers = tuple(h for h in entry.handlers if h != handler)
            del entry.ranks[handler]
            if not entry.handlers:
                if entry.dispatching:
                    # SQLAlchemy forbids removing a listener during its dispatch.
                    self.pending.append(entry)
                else:
                    self._uninstall(entry)

    def flush_pending(self) -> None:
        """Remove listeners that lost their last handler during a dispatch."""
        with process_lock(self._locks):
            for entry in list(self.pending):
                if not entry.dispatching and not entry.handlers:
                    self.pending.remove(entry)
                    self._uninstall(entry)

    def remove_all(self) -> None:
        """Remove every listener, when the app is gone.

        SQLAlchemy's listener registry holds its targets strongly (the app's
        Session class, and through it its engines and their pools): without
        this, a dropped app would keep them, and their connections, for good.
        """
        with process_lock(self._locks):
            for entry in list(self._listeners.values()):
                entry.handlers = ()
                entry.ranks.clear()
                self._uninstall(entry)
            self.pending.clear()

    def _uninstall(self, entry: _Listener) -> None:
        del self._listeners[(id(entry.target), entry.identifier)]
        event.remove(entry.target, entry.identifier, entry.function)
        if isinstance(entry.target, sa.Engine):
            clear_event_flags(entry.target)

    def count(self, target: t.Any) -> int:
        """How many listeners this object installed on ``target``."""
        with process_lock(self._locks):
            return sum(
                1 for entry in self._listeners.values() if entry.target is target
            )
