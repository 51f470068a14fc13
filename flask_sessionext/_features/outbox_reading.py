"""Where a listener is in the outbox, what comes next, and what it can no
longer deliver.

A reader reads one channel through a DBAPI connection of the listener's own
(no SQLAlchemy ``Connection``: the app's statement events and recording never
see it) and hands each publication, in order, to ``deliver``; when it finds
that something it should deliver is gone, it calls ``lost`` once with the
reason and goes on from what is there. Its :attr:`position` is one immutable
value, replaced after each delivery, so that a child forked at any moment
copies a consistent one and goes on from there.

A reader starts at :attr:`since` (naive UTC): it delivers what was published
from then on, give or take the clocks of the publishing machines.
"""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa

from .outbox import OUTBOX, TICKS, pg_tick, utcnow

#: Rows read per query, and ticks per query.
BATCH = 500
TICK_BATCH = 50
#: How far before :attr:`since` a starting reader looks for a tick to start
#: from: the ticks' times are those of other machines' clocks.
CLOCK_MARGIN = timedelta(seconds=60)

#: ``deliver(sequence, payload)`` and ``lost(reason)``.
Deliver = Callable[[int, str], None]
Lost = Callable[[str], None]

PRUNED = "pruned"
RECREATED = "outbox re-created"
LATE_START = "started after 'keep'"


class Database:
    """Runs the reader's statements on a DBAPI connection, compiled once
    for its dialect.
    """

    def __init__(self, dbapi_connection: t.Any, dialect: sa.Dialect) -> None:
        self.dbapi_connection = dbapi_connection
        self.dialect = dialect
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def rows(self, sql: str, **params: t.Any) -> Sequence[tuple[t.Any, ...]]:
        """The rows of ``sql``, an SQLAlchemy ``text()`` with ``:name``
        parameters.
        """
        compiled = self._compiled.get(sql)
        if compiled is None:
            statement = sa.text(sql).compile(dialect=self.dialect)
            order = tuple(statement.positiontup or ()) if statement.positional else None
            compiled = self._compiled[sql] = (statement.string, order)
        text, order = compiled
        values = {name: self._value(value) for name, value in params.items()}
        cursor = self.dbapi_connection.cursor()
        try:
            cursor.execute(
                text, values if order is None else tuple(values[n] for n in order)
            )
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def run(self, sql: str) -> None:
        """Run ``sql``, a statement without parameters."""
        cursor = self.dbapi_connection.cursor()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()

    def _value(self, value: t.Any) -> t.Any:
        if isinstance(value, datetime) and self.dialect.name == "sqlite":
            # As SQLAlchemy's DateTime stores it: the text is what compares.
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        return value


def _datetime(value: t.Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _starting(since: datetime | None, keep: timedelta, lost: Lost) -> datetime:
    """Where a reader starts; a loss when that is longer ago than ``keep``
    (what was published since may have been pruned).
    """
    start = since or utcnow()
    if start < utcnow() - keep:
        lost(LATE_START)
    return start


class Snapshot(t.NamedTuple):
    """A PostgreSQL snapshot: which transactions had committed."""

    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, running = text.split(":")
        return cls(
            int(xmin), int(xmax), frozenset(int(x) for x in running.split(",") if x)
        )

    def sees(self, txid: int) -> bool:
        """Whether transaction ``txid`` had committed (or ended) at it."""
        return txid < self.xmin or (txid < self.xmax and txid not in self.running)


class PgPosition(t.NamedTuple):
    """After tick ``tick`` (0: before every tick), and within the batch after
    it, after row ``after``.
    """

    tick: int
    snapshot: str
    after: int


class PgReader:
    """Reads a channel batch by batch between consecutive ticks (see
    :mod:`.outbox`): the same batches, in the same order, in every process.
    """

    def __init__(self, channel: str, keep: float, since: datetime) -> None:
        self.channel = channel
        self.keep = timedelta(seconds=keep)
        self.since: datetime | None = since
        self.position: PgPosition | None = None

    def tick(self, db: Database) -> None:
        """Write the next tick, when something committed since the last."""
        db.run(pg_tick(self.channel, utcnow()))

    def read(
        self, db: Database, deliver: Deliver, lost: Lost, going: Callable[[], bool]
    ) -> None:
        """Deliver every batch after :attr:`position`, while ``going()``."""
        if self.position is None:
            self._start(db, lost)
        while going():
            position = self.position
            assert position is not None
            ticks = db.rows(
                f"SELECT id, snapshot, created_at FROM {TICKS} WHERE channel = :channel"
                f" AND id >= :tick ORDER BY id LIMIT {TICK_BATCH}",
                channel=self.channel,
                tick=position.tick,
            )
            if position.tick:
                if not ticks or (ticks[0][0], ticks[0][1]) != position[:2]:
                    self._lost_tick(db, ticks, lost)
                    continue
                ticks = ticks[1:]
            for tick, snapshot, created_at in ticks:
                if not self._batch(db, snapshot, deliver, going):
                    return
                self.position = PgPosition(tick, snapshot, 0)
                if self.since is not None and _datetime(created_at) >= self.since:
                    self.since = None  # past the start: every row is after it
            if len(ticks) < TICK_BATCH - 1:
                return

    def _start(self, db: Database, lost: Lost) -> None:
        since = _starting(self.since, self.keep, lost)
        ticks = db.rows(
            f"SELECT id, snapshot FROM {TICKS} WHERE channel = :channel"
            " AND created_at < :before ORDER BY id DESC LIMIT 1",
            channel=self.channel,
            before=since - CLOCK_MARGIN,
        )
        tick, snapshot = ticks[0] if ticks else (0, "")
        self.position = PgPosition(int(tick), str(snapshot), 0)

    def _lost_tick(
        self, db: Database, ticks: Sequence[tuple[t.Any, ...]], lost: Lost
    ) -> None:
        """The tick of :attr:`position` is gone: pruned while this reader was
        away, or the table was created again. Go on from the newest tick.
        """
        assert self.position is not None
        newest = db.rows(
            f"SELECT id, snapshot FROM {TICKS} WHERE channel = :channel"
            " ORDER BY id DESC LIMIT 1",
            channel=self.channel,
        )
        recreated = (ticks and ticks[0][0] == self.position.tick) or (
            not newest or int(newest[0][0]) < self.position.tick
        )
        lost(RECREATED if recreated else PRUNED)
        self.since = None
        tick, snapshot = newest[0] if newest else (0, "")
        self.position = PgPosition(int(tick), str(snapshot), 0)

    def _batch(
        self, db: Database, snapshot: str, deliver: Deliver, going: Callable[[], bool]
    ) -> bool:
        """Deliver the rows committed between :attr:`position`'s tick and
        the tick of ``snapshot``, in id order; ``False`` once not going.
        """
        position = self.position
        assert position is not None
        new = Snapshot.parse(snapshot)
        old = Snapshot.parse(position.snapshot) if position.snapshot else None
        after = position.after
        while True:
            rows = db.rows(
                f"SELECT id, txid, created_at, payload FROM {OUTBOX}"
                " WHERE channel = :channel AND txid >= :low AND txid < :high"
                f" AND id > :after ORDER BY id LIMIT {BATCH}",
                channel=self.channel,
                low=old.xmin if old else 0,
                high=new.xmax,
                after=after,
            )
            for row_id, txid, created_at, payload in rows:
                if not going():
                    return False
                after = int(row_id)
                if not new.sees(txid) or (old is not None and old.sees(txid)):
                    continue
                if self.since is not None and _datetime(created_at) < self.since:
                    continue
                deliver(after, payload)
                self.position = PgPosition(position.tick, position.snapshot, after)
            if len(rows) < BATCH:
                return True


class SqlitePosition(t.NamedTuple):
    """After row ``id`` (0: before every row), published at ``created_at``."""

    id: int
    created_at: str


class SqliteReader:
    """Reads a channel in id order, which is commit order on SQLite."""

    def __init__(self, channel: str, keep: float, since: datetime) -> None:
        self.channel = channel
        self.keep = timedelta(seconds=keep)
        self.since: datetime | None = since
        self.position: SqlitePosition | None = None

    def tick(self, db: Database) -> None:
        """Nothing to do: ids are in commit order."""

    def read(
        self, db: Database, deliver: Deliver, lost: Lost, going: Callable[[], bool]
    ) -> None:
        """Deliver every row after :attr:`position`, while ``going()``."""
        if self.position is None:
            since = _starting(self.since, self.keep, lost)
            last = db.rows(
                f"SELECT id, created_at FROM {OUTBOX} WHERE channel = :channel"
                " AND created_at < :since ORDER BY id DESC LIMIT 1",
                channel=self.channel,
                since=since,
            )
            self.position = SqlitePosition(*last[0]) if last else SqlitePosition(0, "")
            self.since = None
        while going():
            position = self.position
            rows = db.rows(
                f"SELECT id, created_at, previous_id, payload FROM {OUTBOX}"
                " WHERE channel = :channel AND id >= :id"
                f" ORDER BY id LIMIT {BATCH}",
                channel=self.channel,
                id=position.id,
            )
            if position.id:
                first = rows[0] if rows else None
                if first is None or (
                    first[0] == position.id and str(first[1]) != position.created_at
                ):
                    # The channel's newest row is never pruned: the table
                    # was created again. Deliver what the new one holds.
                    lost(RECREATED)
                    self.position = SqlitePosition(0, "")
                    continue
                if first[0] == position.id:
                    rows = rows[1:]
                elif first[2] != position.id:
                    lost(PRUNED)
            for row_id, created_at, _, payload in rows:
                if not going():
                    return
                deliver(int(row_id), payload)
                self.position = SqlitePosition(int(row_id), str(created_at))
            if len(rows) < BATCH - 1:
                return


Reader = PgReader | SqliteReader
