"""The outbox tables of ``SESSIONEXT_BROADCAST``, and the SQL that writes,
ticks and prunes them.

``sessionext_outbox`` holds one row per publication: the net row changes of
one committed transaction on one channel (see :mod:`.outbox_payload`). How a
listener finds the rows in commit order, without any lock on the writers,
depends on the database:

- **PostgreSQL**, after PgQ: each row carries ``txid``, the id of the
  transaction that wrote it. Listeners take turns, under the channel's
  advisory lock held for one server-side statement only, to write a *tick*
  (``sessionext_outbox_ticks``): a snapshot of which transactions had
  committed. The rows between two consecutive ticks are those whose
  transaction is visible in the second snapshot and not in the first; every
  listener reads the same ticks, so every process delivers the same batches,
  each in id order. A transaction still running at a tick is in a later
  batch: nothing is skipped, and no writer waits for another.
- **SQLite** runs one writing transaction at a time, so ids are in commit
  order; each row carries ``previous_id``, the channel's row before it, so
  that a listener can tell rows pruned while it was away from ids that
  other channels used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing as t
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from .._config.passwords import mask_url

Operation = t.Literal["insert", "update", "delete"]

#: The names of the outbox tables.
OUTBOX = "sessionext_outbox"
TICKS = "sessionext_outbox_ticks"

#: The outbox tables, alone on their MetaData, which ``db.metadata`` and
#: ``db.metadatas`` include for the outbox bind while broadcast is on.
outbox_metadata = sa.MetaData()
_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
outbox_table = sa.Table(
    OUTBOX,
    outbox_metadata,
    sa.Column("id", _BIGINT, primary_key=True, autoincrement=True),
    # Deployments that share the table, each on a channel of its own, read
    # only their own rows.
    sa.Column("channel", sa.String(63), nullable=False),
    # Naive UTC, on the publishing process's clock: compared as such when
    # pruning and when a listener starts.
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    # PostgreSQL: the writing transaction's id (pg_current_xact_id()).
    sa.Column("txid", sa.BigInteger(), nullable=True),
    # SQLite: the id of the channel's row before this one.
    sa.Column("previous_id", _BIGINT, nullable=True),
    # Named here, as every index and constraint of the outbox tables: copied
    # next to the app's tables for Alembic (see SessionExt.metadatas), a name
    # left to a naming convention would follow the app's.
    sa.Index(f"ix_{OUTBOX}_created_at", "created_at"),
    sa.Index(f"ix_{OUTBOX}_channel_txid", "channel", "txid"),
    # Ids are never reused, also once every row was pruned: a listener that
    # read up to an id would otherwise skip the new rows under it.
    sqlite_autoincrement=True,
)
ticks_table = sa.Table(
    TICKS,
    outbox_metadata,
    sa.Column("id", _BIGINT, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(63), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    # pg_current_snapshot() as text: "xmin:xmax:xip,xip,...".
    sa.Column("snapshot", sa.Text(), nullable=False),
    sqlite_autoincrement=True,
)

_MISSING_TABLE = (
    f"The outbox tables {OUTBOX!r} and {TICKS!r} of 'SESSIONEXT_BROADCAST' are"
    " missing, or lack a column, in the database {url}. Create them with"
    " 'flask sessionext create-outbox', or with a migration (see the"
    " 'Broadcast' page of the documentation)."
)


@dataclasses.dataclass(frozen=True)
class CommittedChange:
    """One row changed by a committed transaction, as
    :data:`~flask_sessionext.signals.models_committed_anywhere` tells it to
    every process: what changed, never the values.
    """

    #: The mapped class in the receiving process, or ``None`` when that
    #: process maps no class of this name and table.
    model: type | None
    #: The name of the class's table.
    table: str
    #: The primary key, with the types it has in the committing process: a
    #: UUID, Decimal, date, datetime, time or bytes value comes back as such,
    #: and an Enum value as its member of the receiving process's mapped
    #: class (its name, when that process does not map the class).
    primary_key: tuple[t.Any, ...]
    #: ``"insert"``, ``"update"`` or ``"delete"``: the net change of the row
    #: over the transaction.
    operation: Operation
    #: For an update, the names of the changed columns; empty otherwise.
    columns: frozenset[str] = frozenset()
    #: For an update that changed the primary key, the key the row had
    #: before the transaction; ``None`` otherwise.
    previous_primary_key: tuple[t.Any, ...] | None = None


def advisory_lock_key(channel: str) -> int:
    """The PostgreSQL advisory lock key of ``channel``'s ticks, a signed
    64-bit int.
    """
    digest = hashlib.blake2b(channel.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def is_missing_table(error: BaseException) -> bool:
    """Whether ``error`` says that an outbox table, or a column of it, does
    not exist.
    """
    text = str(getattr(error, "orig", None) or error).lower()
    return OUTBOX in text and (
        "does not exist" in text or "no such" in text or "has no column" in text
    )


def missing_table(url: sa.URL) -> RuntimeError:
    """The error of a missing outbox table in the database of ``url``."""
    return RuntimeError(_MISSING_TABLE.format(url=repr(mask_url(url))))


def utcnow() -> datetime:
    """Now, in naive UTC, as ``created_at`` holds it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _timestamp(value: datetime) -> str:
    """``value`` as a PostgreSQL timestamp literal."""
    return f"'{value.isoformat(sep=' ')}'::timestamp"


#: PostgreSQL: inserts the outbox row with its transaction's id. No lock, no
#: notification: PostgreSQL takes a lock of the whole database to queue the
#: notifications of a committing transaction and holds it while the commit
#: is flushed, which would serialise every publishing commit again.
PG_PUBLISH = sa.text(
    f"INSERT INTO {OUTBOX} (channel, created_at, payload, txid)"
    " VALUES (:channel, :created_at, :payload, pg_current_xact_id()::text::bigint)"
    " RETURNING id"
)

#: SQLite: inserts the outbox row with the id of the channel's previous row;
#: the write lock of the transaction keeps both in commit order.
SQLITE_PUBLISH = outbox_table.insert().values(
    previous_id=sa.select(sa.func.max(outbox_table.c.id))
    .where(outbox_table.c.channel == sa.bindparam("previous_channel"))
    .scalar_subquery()
)

#: Whether a transaction id (``txid``, bigint) is visible in a snapshot
#: (text): committed when the snapshot was taken.
_VISIBLE = "pg_visible_in_snapshot({txid}::text::xid8, {snapshot}::pg_snapshot)"


def pg_tick(channel: str, now: datetime) -> str:
    """One statement that writes the next tick of ``channel``, and notifies
    the channel, when rows committed since the last tick; nothing otherwise.

    A ``DO`` block, so that the server runs it whole without waiting for the
    client: the advisory lock that puts the ticks in order is held for this
    statement only, and a listener stopped while it waits for the answer
    holds nothing. The snapshot is taken once the lock is held (each
    statement of a ``DO`` block takes a new one), so a tick written later
    sees everything an earlier one saw. A tick needs no durability: it is
    committed without waiting for the disk.
    """
    visible_new = _VISIBLE.format(txid="o.txid", snapshot="snap")
    visible_old = _VISIBLE.format(txid="o.txid", snapshot="last_snap")
    return f"""DO $sessionext$
DECLARE
  last_snap text;
  snap text;
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  PERFORM pg_advisory_xact_lock({advisory_lock_key(channel)});
  SELECT snapshot INTO last_snap FROM {TICKS} WHERE channel = '{channel}'
    ORDER BY id DESC LIMIT 1;
  snap := pg_current_snapshot()::text;
  IF last_snap IS NULL OR EXISTS (
    SELECT 1 FROM {OUTBOX} o WHERE o.channel = '{channel}'
      AND o.txid >= pg_snapshot_xmin(last_snap::pg_snapshot)::text::bigint
      AND {visible_new} AND NOT {visible_old}
  ) THEN
    INSERT INTO {TICKS} (channel, created_at, snapshot)
      VALUES ('{channel}', {_timestamp(now)}, snap);
    PERFORM pg_notify('{channel}', '');
  END IF;
END $sessionext$"""


def pg_prune(channel: str, cutoff: datetime) -> str:
    """One statement that deletes the outbox rows and ticks of ``channel``
    older than ``cutoff`` that no listener can need, skipping rows that
    another transaction is deleting (it never waits).

    The newest tick always stays, and a row goes only once a remaining tick
    covers it, so a listener whose tick remains misses nothing. When no tick
    was written for longer than ``keep`` while rows came (no listener ran),
    the old rows go all the same, and every tick with them: a listener that
    stopped at one finds it gone and sends ``publications_lost``.
    """
    uncovered = _VISIBLE.format(txid="o.txid", snapshot="newest_snap")
    return f"""DO $sessionext$
DECLARE
  cutoff timestamp := {_timestamp(cutoff)};
  newest_id bigint;
  newest_at timestamp;
  newest_snap text;
  oldest_xmin bigint;
BEGIN
  SELECT id, created_at, snapshot INTO newest_id, newest_at, newest_snap
    FROM {TICKS} WHERE channel = '{channel}' ORDER BY id DESC LIMIT 1;
  IF (newest_id IS NULL OR newest_at < cutoff) AND EXISTS (
    SELECT 1 FROM {OUTBOX} o WHERE o.channel = '{channel}'
      AND o.created_at < cutoff
      AND (newest_id IS NULL OR NOT {uncovered})
  ) THEN
    DELETE FROM {TICKS} WHERE id IN (SELECT id FROM {TICKS}
      WHERE channel = '{channel}' FOR UPDATE SKIP LOCKED);
    DELETE FROM {OUTBOX} WHERE id IN (SELECT id FROM {OUTBOX}
      WHERE channel = '{channel}' AND created_at < cutoff FOR UPDATE SKIP LOCKED);
    RETURN;
  END IF;
  DELETE FROM {TICKS} WHERE id IN (SELECT id FROM {TICKS}
    WHERE channel = '{channel}' AND created_at < cutoff AND id < newest_id
    FOR UPDATE SKIP LOCKED);
  SELECT pg_snapshot_xmin(snapshot::pg_snapshot)::text::bigint INTO oldest_xmin
    FROM {TICKS} WHERE channel = '{channel}' ORDER BY id LIMIT 1;
  DELETE FROM {OUTBOX} WHERE id IN (SELECT id FROM {OUTBOX}
    WHERE channel = '{channel}' AND created_at < cutoff AND txid < oldest_xmin
    FOR UPDATE SKIP LOCKED);
END $sessionext$"""


def count(connection: sa.Connection, channel: str) -> int:
    """How many outbox rows ``channel`` has."""
    return int(
        connection.execute(
            sa.select(sa.func.count()).where(outbox_table.c.channel == channel)
        ).scalar_one()
    )


def prune(
    connection: sa.Connection, channel: str, keep: float, now: datetime | None = None
) -> None:
    """Delete the outbox rows of ``channel`` older than ``keep`` seconds that
    no listener can need.

    On SQLite the channel's newest row stays, so that a listener at it can
    tell that nothing after it was pruned.
    """
    cutoff = (now or utcnow()) - timedelta(seconds=keep)
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(pg_prune(channel, cutoff))
        return
    mine = outbox_table.c.channel == channel
    newest = sa.select(sa.func.max(outbox_table.c.id)).where(mine).scalar_subquery()
    connection.execute(
        outbox_table.delete().where(
            mine, outbox_table.c.created_at < cutoff, outbox_table.c.id < newest
        )
    )
