"""The outbox table of ``SESSIONEXT_BROADCAST`` and what its rows hold.

Each row is one publication on one channel: the net row changes of one committed
transaction, as JSON (``{"origin": ..., "changes": [[entity, table, pk,
operation, columns], ...]}``), never row values. Its id, drawn from the
table's sequence, is the publication's sequence number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing as t
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from .._config.passwords import mask_url

Operation = t.Literal["insert", "update", "delete"]

#: The name of the outbox table.
OUTBOX = "sessionext_outbox"

#: The outbox table, alone on its MetaData, so that Alembic autogenerate sees
#: it when ``env.py`` lists this MetaData in ``target_metadata``.
outbox_metadata = sa.MetaData()
outbox_table = sa.Table(
    OUTBOX,
    outbox_metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    # Deployments that share the table, each on a channel of its own, read
    # only their own rows; ids are in commit order within a channel.
    sa.Column("channel", sa.String(63), nullable=False),
    # Naive UTC: the same on every dialect, and compared as such when pruning.
    sa.Column("created_at", sa.DateTime(), nullable=False, index=True),
    sa.Column("payload", sa.Text(), nullable=False),
)

_MISSING_TABLE = (
    f"The outbox table {OUTBOX!r} of 'SESSIONEXT_BROADCAST' does not exist in"
    " the database {url}. Create it with 'flask sessionext create-outbox', or"
    " with a migration (see the 'Broadcast' page of the documentation)."
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
    #: The primary key, as JSON gives it back (a value that JSON cannot hold,
    #: such as a UUID or a date, is sent as its ``str()``).
    primary_key: tuple[t.Any, ...]
    #: ``"insert"``, ``"update"`` or ``"delete"``: the net change of the row
    #: over the transaction.
    operation: Operation
    #: For an update, the names of the changed columns; empty otherwise.
    columns: frozenset[str] = frozenset()


#: A change as the payload holds it: entity, table, pk, operation, columns.
Summary = tuple[str, str, tuple[t.Any, ...], str, frozenset[str]]


def encode(origin: str, changes: t.Iterable[Summary]) -> str:
    """The payload of one publication."""
    return json.dumps(
        {
            "origin": origin,
            "changes": [
                [entity, table, list(pk), operation, sorted(columns)]
                for entity, table, pk, operation, columns in changes
            ],
        },
        default=str,
        separators=(",", ":"),
    )


def decode(payload: str) -> tuple[str, list[Summary]]:
    """The origin and the changes of a payload.

    :raise ValueError: it is not a payload of :func:`encode`.
    """
    data = json.loads(payload)
    try:
        changes = [
            (str(entity), str(table), tuple(pk), str(operation), frozenset(columns))
            for entity, table, pk, operation, columns in data["changes"]
        ]
        return str(data["origin"]), changes
    except (KeyError, TypeError) as e:
        raise ValueError(f"not an outbox payload: {payload[:80]!r}") from e


def advisory_lock_key(channel: str) -> int:
    """The PostgreSQL advisory lock key of ``channel``, a signed 64-bit int."""
    digest = hashlib.blake2b(channel.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def entity_name(cls: type) -> str:
    """How a payload names a mapped class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def is_missing_table(error: BaseException) -> bool:
    """Whether ``error`` says that the outbox table does not exist."""
    text = str(getattr(error, "orig", None) or error).lower()
    return OUTBOX in text and ("does not exist" in text or "no such table" in text)


def missing_table(url: sa.URL) -> RuntimeError:
    """The error of a missing outbox table in the database of ``url``."""
    return RuntimeError(_MISSING_TABLE.format(url=repr(mask_url(url))))


def utcnow() -> datetime:
    """Now, in naive UTC, as ``created_at`` holds it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def prune(
    connection: sa.Connection, channel: str, keep: float, now: datetime | None = None
) -> int:
    """Delete the outbox rows of ``channel`` older than ``keep`` seconds;
    return how many.
    """
    cutoff = (now or utcnow()) - timedelta(seconds=keep)
    result = connection.execute(
        outbox_table.delete().where(
            outbox_table.c.channel == channel, outbox_table.c.created_at < cutoff
        )
    )
    return result.rowcount
