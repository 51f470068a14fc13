"""``before_models_committed``, ``models_committed`` and ``db.on_commit``.

Changes and callbacks are kept per transaction level of a session, its
outermost transaction and each SAVEPOINT, in ``session.info``. A released
SAVEPOINT hands its level to the enclosing one; a rolled-back SAVEPOINT, or a
rolled-back transaction, drops its level. SQLAlchemy fires ``before_commit``
and ``after_commit`` for a SAVEPOINT release as for the real commit, so the
commit of the outermost transaction is told apart by the session having no
nested transaction left.

The listeners are installed on an app only while ``before_models_committed``
or ``models_committed`` has a receiver for it, or while an ``on_commit``
callback waits in one of its sessions.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Flask
from sqlalchemy import orm

from .._session.session import app_context_or_none
from .._sqlalchemy_private import allow_commit, outside_transaction_block, refuse_commit
from ..signals import before_models_committed, models_committed
from .base import (
    Feature,
    Parts,
    collect_receiver_errors,
    reference,
    report,
    run,
    strong,
    veto,
)
from .levels import end_level, mark_released

Change = tuple[object, str]
Callback = tuple[t.Callable[..., t.Any], tuple[t.Any, ...], dict[str, t.Any]]
Levels = dict[orm.SessionTransaction, "_Level"]

_LEVELS = "sessionext.levels"
_COMMITTED = "sessionext.committed"
#: The connections whose ``commit()`` is refused, in ``session.info``.
_GUARDED = "sessionext.guarded"
_CONNECTION_COMMIT = (
    "'db.session.connection().commit()' would commit the session's work behind"
    " its back: the session's transaction would stay open, models_committed"
    " would not be sent and on_commit callbacks would be lost. Commit the"
    " session instead: 'db.session.commit()'."
)


class _Level:
    """What one transaction level collected."""

    __slots__ = ("callbacks", "changes", "released")

    def __init__(self) -> None:
        #: id(instance) -> (instance, net operation), in first-flush order.
        self.changes: dict[int, Change] = {}
        self.callbacks: list[Callback] = []
        self.released = False

    def record(self, instance: object, operation: str) -> None:
        """Fold ``operation`` into the net change of ``instance``."""
        key = id(instance)
        previous = self.changes.get(key)
        if previous is None:
            self.changes[key] = (instance, operation)
        elif previous[1] == "insert":
            if operation == "delete":
                del self.changes[key]  # inserted, then deleted: nothing happened
        else:
            self.changes[key] = (instance, operation)

    def absorb(self, child: _Level) -> None:
        """Take over the level of a released SAVEPOINT."""
        for instance, operation in child.changes.values():
            self.record(instance, operation)
        self.callbacks.extend(child.callbacks)


class _Committed:
    """What a committed outermost transaction leaves for its end: the
    ``on_commit`` callbacks to run and the receiver errors to raise.
    """

    __slots__ = ("callbacks", "errors", "transaction")

    def __init__(
        self,
        transaction: orm.SessionTransaction,
        callbacks: list[Callback],
        errors: list[BaseException],
    ) -> None:
        self.transaction = transaction
        self.callbacks = callbacks
        self.errors = errors


def _levels(session: orm.Session) -> Levels:
    levels: Levels = session.info.setdefault(_LEVELS, {})
    return levels


def _current_level(session: orm.Session) -> _Level:
    """The level of the session's current transaction, beginning one when
    there is none, as a query would.
    """
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:
        transaction = session.begin()
    levels = _levels(session)
    level = levels.get(transaction)
    if level is None:
        level = levels[transaction] = _Level()
    return level


class ModelChanges(Feature):
    """``before_models_committed`` and ``models_committed`` of one app.

    Its handlers also serve :class:`OnCommit`, whose callbacks are kept in
    the same transaction levels and run at the same end of the commit.
    """

    name = "model changes"
    sends = ("before_models_committed", "models_committed")
    listens = (
        "after_begin",
        "after_flush",
        "before_commit",
        "after_commit",
        "after_transaction_end",
    )
    deferred = True
    raises_after = frozenset({"commit"})

    def __init__(self, parts: Parts, rank: int) -> None:
        super().__init__(parts, rank)
        self._app = parts.app
        self._session_class = parts.session_class
        #: The installed listeners by event name.
        self.installed: dict[str, t.Callable[..., t.Any]] = {}
        #: Whether an ``on_commit`` callback was ever registered. Its
        #: listeners then stay: SQLAlchemy's listener collections must not
        #: change while another thread dispatches their event ("deque mutated
        #: during iteration"), and with a callback in most requests they
        #: would come and go at every commit.
        self.callbacks = False
        #: Weak references to the receivers seen by the last refresh.
        self._receivers: tuple[t.Callable[[], t.Any], ...] = ()

    def refresh(self, app: Flask) -> None:
        """Install or remove the listeners as receivers and callbacks say."""
        self._receivers = tuple(
            reference(receiver)
            for signal in (before_models_committed, models_committed)
            for receiver in signal.receivers_for(app)
        )
        events: set[str] = set()
        if self._receivers:
            events.update(self.listens)
        if self.callbacks:
            events.update(OnCommit.listens)
        for name in set(self.installed) - events:
            self.unlisten(self._session_class, name, self.installed.pop(name))
        for name in events - set(self.installed):
            handler = getattr(self, f"_{name}")
            self.listen(self._session_class, name, handler)
            self.installed[name] = handler

    def may_raise(self) -> bool:
        """Whether a change signal has a receiver for the app."""
        return bool(self._receivers)

    def has_receivers(self) -> bool:
        """Whether a change signal has a receiver for the app."""
        return bool(self._receivers)

    def has_dead_receivers(self) -> bool:
        """Whether a receiver seen by the last refresh was garbage-collected."""
        # A plain loop: no generator at every teardown.
        for ref in self._receivers:  # noqa: SIM110
            if ref() is None:
                return True
        return False

    def on_commit(self, session: orm.Session, callback: Callback) -> None:
        """Run ``callback`` after the outermost commit of ``session``."""
        _current_level(session).callbacks.append(callback)
        if not self.callbacks:
            self.callbacks = True
            # The listeners, and ``commit`` raising callback errors.
            self.parts.refresh()

    def _after_begin(
        self,
        session: orm.Session,
        transaction: orm.SessionTransaction,
        connection: sa.Connection,
    ) -> None:
        # Committing the connection would commit the data but not the
        # session's transaction: no signals, callbacks lost, and SQLAlchemy's
        # "This transaction is inactive" at the session's next commit.
        refuse_commit(connection, _CONNECTION_COMMIT)
        session.info.setdefault(_GUARDED, []).append(connection)

    def _after_flush(self, session: orm.Session, flush_context: object) -> None:
        # The session still shows its pre-flush state here.
        level = _current_level(session)
        if level.changes:
            for instance in session.new:
                level.record(instance, "insert")
        else:
            # The level's first flush, the usual case: nothing to fold, and
            # a bulk insert costs one dict entry per row, with no call.
            level.changes = {
                id(instance): (instance, "insert") for instance in session.new
            }
        for instance in session.dirty:
            # Only column changes: a changed collection writes no row.
            if session.is_modified(instance, include_collections=False):
                level.record(instance, "update")
        for instance in session.deleted:
            level.record(instance, "delete")

    def _before_commit(self, session: orm.Session) -> None:
        app = self._app()
        if session.get_nested_transaction() is not None or app is None:
            return  # a SAVEPOINT release
        if next(before_models_committed.receivers_for(app), None) is None:
            return
        # SQLAlchemy flushes after this event: flush first, so that the
        # receivers see everything the commit writes.
        session.flush()
        root = session.get_transaction()
        level = _levels(session).get(root) if root is not None else None
        if level is not None and level.changes:
            veto(before_models_committed, app, changes=list(level.changes.values()))

    def _after_commit(self, session: orm.Session) -> None:
        levels = _levels(session)
        if session.get_nested_transaction() is not None:
            mark_released(levels, session)
            return
        root = session.get_transaction()
        level = levels.pop(root, None) if root is not None else None
        app = self._app()
        if root is None or level is None or app is None:
            return
        with collect_receiver_errors() as errors:
            if level.changes:
                # Here the committed objects still hold their values (the
                # commit expires them right after), though the session can
                # run no SQL.
                report(models_committed, app, changes=list(level.changes.values()))
        if level.callbacks or errors:
            # The session is usable again only at the end of the transaction.
            session.info[_COMMITTED] = _Committed(root, level.callbacks, errors)

    def _after_transaction_end(
        self, session: orm.Session, transaction: orm.SessionTransaction
    ) -> None:
        end_level(session.info.get(_LEVELS), transaction, _Level)
        if transaction.parent is not None:
            return
        for connection in session.info.pop(_GUARDED, ()):
            allow_commit(connection)
        committed: _Committed | None = session.info.pop(_COMMITTED, None)
        if committed is not None and committed.transaction is transaction:
            self._finish_commit(session, committed)

    def _finish_commit(self, session: orm.Session, committed: _Committed) -> None:
        """Run the ``on_commit`` callbacks of a committed transaction, now
        that it has ended and its session can be used again, then raise the
        first receiver error that no running session operation will raise.

        This is the end of every way to commit: ``Session.commit()``,
        ``with session.begin():``, ``session.get_transaction().commit()``,
        and so :meth:`SessionExt.transaction`, ``session_scope()`` and the
        teardown commit.
        """
        errors = committed.errors
        app = self._app()
        if committed.callbacks and app is not None:
            with collect_receiver_errors() as more, outside_transaction_block(session):
                self._run_callbacks(app, committed.callbacks)
            errors = [*errors, *more]
        if errors:
            raise errors[0]

    def _run_callbacks(self, app: Flask, callbacks: list[Callback]) -> None:
        """Run ``on_commit`` callbacks in an app context of ``app``."""
        current = app_context_or_none()
        ctx = app.app_context() if current is None or current.app is not app else None
        if ctx is not None:
            ctx.push()
        try:
            for func, args, kwargs in callbacks:
                if not run(
                    app, "on_commit", strong((func,)), args, kwargs, propagate=False
                ):
                    return
        finally:
            if ctx is not None:
                ctx.pop()


class OnCommit(Feature):
    """``db.on_commit`` callbacks of one app, kept and run by the handlers
    of its :class:`ModelChanges` (the levels they share).
    """

    name = "on_commit callbacks"
    listens = ("after_begin", "after_commit", "after_transaction_end")
    deferred = True
    raises_after = frozenset({"commit"})

    def __init__(self, parts: Parts, rank: int) -> None:
        super().__init__(parts, rank)
        self._changes: ModelChanges | None = None

    def start(self, app: Flask) -> None:
        """Find the app's :class:`ModelChanges`, which keeps the callbacks."""
        self._changes = self.parts.feature(ModelChanges)

    def on_commit(self, session: orm.Session, callback: Callback) -> None:
        """Run ``callback`` after the outermost commit of ``session``."""
        assert self._changes is not None, "started in init_app"
        self._changes.on_commit(session, callback)

    def may_raise(self) -> bool:
        """Whether a callback was ever registered on the app."""
        return self._changes is not None and self._changes.callbacks
