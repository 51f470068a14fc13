"""``SESSIONEXT_BROADCAST``: ``models_committed_anywhere``, the committed
changes of every process of the deployment.

Publishing is part of the committing transaction: in the ``before_commit``
of the outermost transaction of a session of the app, after its last flush,
the net changes of the published models go into one row of the outbox table
``sessionext_outbox``, on the session's own connection to the outbox bind.
A transaction or SAVEPOINT that rolls back takes its row with it. The insert
takes no lock and notifies nobody (see :mod:`.outbox` for how listeners find
the rows in commit order without either); once the transaction committed,
it wakes this process's listener, which tells the others.
"""

from __future__ import annotations

import datetime
import os
import typing as t
import weakref

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import Flask, appcontext_pushed
from sqlalchemy import orm

from .._config.settings import Settings
from ..signals import models_committed_anywhere
from . import outbox_commit
from . import outbox_listener as _outbox_listener
from .base import Feature, Parts
from .levels import end_level, mark_released
from .outbox import (
    PG_PUBLISH,
    SQLITE_PUBLISH,
    is_missing_table,
    missing_table,
    outbox_metadata,
    prune,
    utcnow,
)
from .outbox_payload import Summary, encode, entity_name

#: How many publications of a process go between two prunings by it, at most.
PRUNE_EVERY = 1000

#: The key of ``session.info`` holding what each transaction level collected.
_LEVELS = "sessionext.broadcast"

#: The key of ``session.info`` that says the transaction published.
_PUBLISHED = "sessionext.broadcast.published"

#: The databases whose outbox can be read in commit order (see
#: :mod:`.outbox`).
DIALECTS = ("postgresql", "sqlite")

#: ``PG_PUBLISH`` compiled once per dialect: the statement in the driver's
#: parameter style and, for a positional style, the names in their order.
#: ``exec_driver_sql`` runs it without the compiled-cache lookup and result
#: set-up of ``Connection.execute``, which were a third of the time
#: publishing spent in Python (its parameters are untyped: no processing to
#: skip); the statement events and query recording still see it.
_PG_COMPILED: weakref.WeakKeyDictionary[sa.Dialect, tuple[str, tuple[str, ...] | None]]
_PG_COMPILED = weakref.WeakKeyDictionary()


def _pg_publish(dialect: sa.Dialect) -> tuple[str, tuple[str, ...] | None]:
    compiled = _PG_COMPILED.get(dialect)
    if compiled is None:
        statement = PG_PUBLISH.compile(dialect=dialect)
        order = tuple(statement.positiontup or ()) if statement.positional else None
        compiled = _PG_COMPILED[dialect] = (statement.string, order)
    return compiled


class _Level:
    """The net row changes of one transaction level, by ``(table, pk)``."""

    __slots__ = ("changes", "released")

    def __init__(self) -> None:
        #: (table, pk) -> [entity, table, pk, operation, columns, previous pk]
        self.changes: dict[tuple[str, tuple[t.Any, ...]], list[t.Any]] = {}
        self.released = False

    def record(
        self,
        entity: str,
        table: str,
        pk: tuple[t.Any, ...],
        operation: str,
        columns: set[str],
        previous: tuple[t.Any, ...] | None = None,
    ) -> None:
        """Fold ``operation`` into the net change of the row; ``previous`` is
        the key of an update that changed it.
        """
        if previous is not None:
            moved = self.changes.pop((table, previous), None)
            if moved is not None and moved[3] == "insert":
                # Inserted in this transaction: nobody saw the old key.
                operation, columns, previous = "insert", set(), None
            elif moved is not None:
                columns = columns | moved[4]
                previous = moved[5] if moved[5] is not None else previous
        key = (table, pk)
        current = self.changes.get(key)
        if current is None:
            self.changes[key] = [entity, table, pk, operation, set(columns), previous]
        elif current[3] == "insert":
            if operation == "delete":
                del self.changes[key]  # inserted, then deleted: nothing happened
        elif current[3] == "update" and operation == "update":
            current[4] |= columns
        else:
            current[3] = operation
            current[4] = set(columns) if operation == "update" else set()

    def absorb(self, child: _Level) -> None:
        """Take over the level of a released SAVEPOINT."""
        for entity, table, pk, operation, columns, previous in child.changes.values():
            self.record(entity, table, pk, operation, set(columns), previous)


def _previous_key(
    state: t.Any, mapper: orm.Mapper[t.Any], pk: tuple[t.Any, ...]
) -> tuple[t.Any, ...]:
    """The primary key of a flushed update's row before the flush: ``pk``
    unless the update changed a primary key column.
    """
    old = list(pk)
    for i, column in enumerate(mapper.primary_key):
        prop = mapper.get_property_by_column(column)
        deleted = state.attrs[prop.key].history.deleted
        if deleted and deleted[0] is not None:
            old[i] = deleted[0]
    return tuple(old)


def _levels(session: orm.Session) -> dict[orm.SessionTransaction, _Level]:
    levels: dict[orm.SessionTransaction, _Level] = session.info.setdefault(_LEVELS, {})
    return levels


class Broadcast(Feature):
    """The publishing and the receiving of one app.

    Its session listeners are installed while the setting is on, whoever
    listens: the other processes need the publications. Its listener thread
    runs while ``models_committed_anywhere`` has a receiver for the app: it
    starts when the first receiver connects and, in a forked child, at the
    child's first app context (or publication), found by a process id check
    that takes no lock. Nothing else of it runs per request.
    Last of the features: it publishes what the commit writes, after the
    receivers of ``before_commit`` and ``before_models_committed`` changed it.
    """

    name = "broadcast"
    # On while SESSIONEXT_BROADCAST is: the other processes need the
    # publications; the listener thread runs while the signal has a
    # receiver for the app.
    sends = ("models_committed_anywhere",)
    #: The handler of each is the method named like it.
    listens = ("after_flush", "before_commit", "after_commit", "after_transaction_end")
    # Sent after the commit, in every process, on its listener thread.
    deferred = True

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        """Whether ``SESSIONEXT_BROADCAST`` is on."""
        return settings.broadcast is not None

    def __init__(self, parts: Parts, rank: int) -> None:
        super().__init__(parts, rank)
        settings = parts.settings.broadcast
        assert settings is not None, "wanted() said so"
        self._app = parts.app
        self._session_class = parts.session_class
        self.settings = settings
        self.engine = parts.engines[settings.bind]
        dialect = self.engine.dialect.name
        if dialect not in DIALECTS:
            raise ValueError(
                f"'SESSIONEXT_BROADCAST' needs its outbox on PostgreSQL or SQLite,"
                f" where listeners can read it in commit order; its bind"
                f" {settings.bind!r} is on {dialect!r}. Point the 'bind' setting"
                " at a PostgreSQL or SQLite bind."
            )
        self._published = 0
        #: When this process last pruned the outbox (``created_at`` time).
        self._pruned_at: datetime.datetime | None = None
        self._keep = datetime.timedelta(seconds=settings.keep)
        #: Whether the app has a receiver of ``models_committed_anywhere``.
        self._receiving = False
        #: The listener of each process by its id: this process's, and in a
        #: forked child, until it starts its own, its parent's. A process
        #: claims its entry with one ``setdefault``, atomic without a lock.
        self._listeners_by_pid: dict[int, _outbox_listener.OutboxListener] = {}

    @property
    def listener(self) -> _outbox_listener.OutboxListener | None:
        """The listener of this process, while the app receives."""
        return self._listeners_by_pid.get(os.getpid())

    def tables(self) -> tuple[tuple[str | None, sa.MetaData], ...]:
        """The outbox tables, in the outbox bind."""
        return ((self.settings.bind, outbox_metadata),)

    def start(self, app: Flask) -> None:
        """Install the publishing listeners."""
        for name in self.listens:
            self.listen(self._session_class, name, getattr(self, f"_{name}"))
        self.add_engines(app, [(self.settings.bind, self.engine)])

    def add_engines(
        self, app: Flask, engines: t.Sequence[tuple[str | None, sa.Engine]]
    ) -> None:
        """Send the outbox row with the COMMIT on the outbox bind's engine,
        sync or under an async one.
        """
        for key, engine in engines:
            if key == self.settings.bind and engine.dialect.driver in (
                outbox_commit.DRIVERS
            ):
                self.listen(engine, "commit", self._commit)

    def refresh(self, app: Flask) -> None:
        """Start, or stop, receiving as receivers come and go."""
        if next(models_committed_anywhere.receivers_for(app), None) is not None:
            if not self._receiving:
                self._receiving = True
                # Weakly: the subscription goes with the runtime.
                appcontext_pushed.connect(self._context_pushed, sender=app)
            self._receive(app)
        elif self._receiving:
            self._receiving = False
            appcontext_pushed.disconnect(self._context_pushed, sender=app)
            self._stop_receiving()

    def _context_pushed(self, app: Flask, **kwargs: t.Any) -> None:
        # Only a forked child's first app context finds no listener of its
        # process (its parent's thread did not survive the fork) and starts
        # one; every other push costs this one check.
        if os.getpid() not in self._listeners_by_pid:
            self._receive(app)

    def _receive(self, app: Flask) -> None:
        """Start this process's listener, unless it runs."""
        pid = os.getpid()
        if pid in self._listeners_by_pid or not self._receiving:
            return
        candidate = _outbox_listener.OutboxListener(app, self.engine, self.settings)
        if self._listeners_by_pid.setdefault(pid, candidate) is not candidate:
            return  # another thread of this process started one meanwhile
        for other in list(self._listeners_by_pid):
            if other != pid:  # the parent's: its thread is not in this process
                parent = self._listeners_by_pid.pop(other, None)
                if parent is not None:
                    candidate.inherit(parent)
        candidate.start()
        if not self._receiving:  # the last receiver left meanwhile
            self._stop_receiving()

    def _stop_receiving(self) -> None:
        """Stop this process's listener, if it runs."""
        pid = os.getpid()
        listener = self._listeners_by_pid.pop(pid, None)
        if listener is not None and listener.pid == pid:
            listener.stop(join=False)

    def _published_class(self, cls: type, table: str) -> bool:
        settings = self.settings
        if settings.models is None and not settings.tables:
            return True
        if table in settings.tables:
            return True
        return any(issubclass(cls, model) for model in settings.models or ())

    def _after_flush(self, session: orm.Session, flush_context: object) -> None:
        # The session still shows its pre-flush state and history here.
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is None:
            return
        level: _Level | None = None
        for instances, operation in (
            (session.new, "insert"),
            (session.dirty, "update"),
            (session.deleted, "delete"),
        ):
            for instance in instances:
                state = sa.inspect(instance)
                mapper = state.mapper
                table = mapper.local_table
                name = table.name if isinstance(table, sa.Table) else str(table)
                if not self._published_class(mapper.class_, name):
                    continue
                columns: set[str] = set()
                if operation == "update":
                    if not session.is_modified(instance, include_collections=False):
                        continue
                    columns = {
                        column.name
                        for prop in mapper.column_attrs
                        if state.attrs[prop.key].history.has_changes()
                        for column in prop.columns
                        if isinstance(column, sa.Column)
                    }
                pk = tuple(mapper.primary_key_from_instance(instance))
                if level is None:
                    level = _levels(session).setdefault(transaction, _Level())
                previous = None
                if operation == "update":
                    old = _previous_key(state, mapper, pk)
                    previous = old if old != pk else None
                entity = entity_name(mapper.class_)
                level.record(entity, name, pk, operation, columns, previous)

    def _before_commit(self, session: orm.Session) -> None:
        if session.get_nested_transaction() is not None:
            return  # a SAVEPOINT release
        # SQLAlchemy flushes after this event: flush first, so that the
        # publication holds everything the commit writes.
        session.flush()
        root = session.get_transaction()
        levels = session.info.get(_LEVELS)
        level = levels.get(root) if levels and root is not None else None
        if level is None or not level.changes:
            return
        self._publish(
            session,
            [
                (entity, table, pk, operation, frozenset(columns), previous)
                for entity, table, pk, operation, columns, previous in (
                    level.changes.values()
                )
            ],
        )

    def _publish(self, session: orm.Session, changes: list[Summary]) -> None:
        """Insert the outbox row of ``changes`` in the session's transaction
        on the outbox bind.

        :raise RuntimeError: the outbox table does not exist.
        """
        payload = encode(_outbox_listener.origin(), changes)
        # The session's own engines: an AsyncSession's (the sync engines
        # under the async ones) differ from db.session's.
        router = getattr(type(session), "_sessionext_router", None)
        engine = router.engines[self.settings.bind] if router else self.engine
        target = router.stand_ins.get(engine, engine) if router else engine
        connection = session.connection(bind_arguments={"bind": target})
        now = utcnow()
        channel = self.settings.channel
        try:
            if outbox_commit.rides(connection, session):
                outbox_commit.hold(connection, channel, now, payload)
            elif connection.dialect.name == "postgresql":
                statement, order = _pg_publish(connection.dialect)
                parameters = {
                    "created_at": now,
                    "payload": payload,
                    "channel": channel,
                }
                connection.exec_driver_sql(
                    statement,
                    parameters
                    if order is None
                    else tuple(parameters[name] for name in order),
                )
            else:
                connection.execute(
                    SQLITE_PUBLISH,
                    {
                        "channel": channel,
                        "created_at": now,
                        "payload": payload,
                        "previous_channel": channel,
                    },
                )
            # The connection's info, kept by its pool record: the connection
            # itself is closed by the time the transaction's end is told.
            session.info[_PUBLISHED] = connection.info
            if self._receiving and self.listener is None:
                # A forked child, with no app context pushed yet.
                app = self._app()
                if app is not None:
                    self._receive(app)
            self._published += 1
            # By age, whatever the number of publications: a process that
            # publishes seldom (a CLI job, a worker restarted after a few
            # requests) prunes at its first publication, then whenever
            # 'keep' seconds have passed; one that publishes a lot, at every
            # PRUNE_EVERY-th too. It never waits for another transaction.
            if self._published % PRUNE_EVERY == 0 or (
                self._pruned_at is None or now - self._pruned_at >= self._keep
            ):
                self._pruned_at = now
                prune(connection, channel, self.settings.keep, now)
        except sa_exc.DBAPIError as e:
            if is_missing_table(e):
                raise missing_table(engine.url) from e
            raise

    def _commit(self, connection: sa.Connection) -> None:
        try:
            outbox_commit.send(connection)
        except sa_exc.DBAPIError as e:
            if is_missing_table(e):
                raise missing_table(connection.engine.url) from e
            raise

    def _after_commit(self, session: orm.Session) -> None:
        mark_released(session.info.get(_LEVELS), session)
        if session.get_nested_transaction() is not None:
            return
        info = session.info.pop(_PUBLISHED, None)
        if info is not None:
            outbox_commit.drop(info)
            listener = self.listener
            if listener is not None:
                listener.wake()

    def _after_transaction_end(
        self, session: orm.Session, transaction: orm.SessionTransaction
    ) -> None:
        end_level(session.info.get(_LEVELS), transaction, _Level)
        if transaction.parent is None:
            info = session.info.pop(_PUBLISHED, None)
            if info is not None:
                outbox_commit.drop(info)
