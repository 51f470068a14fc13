"""The outbox table of ``SESSIONEXT_BROADCAST`` and what its rows hold.

Each row is one publication on one channel: the net row changes of one committed
transaction, as JSON (``{"origin": ..., "changes": [[entity, table, pk,
operation, columns], ...]}``), never row values. A primary key value that
JSON does not hold keeps its type as ``{"uuid": "..."}``, ``{"date": ...}``
and so on. Its id, drawn from the
table's sequence, is the publication's sequence number.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import json
import typing as t
import uuid
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
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    # Named here, as every index and constraint of the outbox tables: copied
    # next to the app's tables for Alembic (see SessionExt.metadatas), a name
    # left to a naming convention would follow the app's.
    sa.Index(f"ix_{OUTBOX}_created_at", "created_at"),
    # Ids are never reused, also once every row was pruned: a listener that
    # read up to an id would otherwise skip the new rows under it.
    sqlite_autoincrement=True,
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


#: A change as the payload holds it: entity, table, pk, operation, columns,
#: and the previous pk of an update that changed it (else ``None``).
Summary = tuple[
    str, str, tuple[t.Any, ...], str, frozenset[str], "tuple[t.Any, ...] | None"
]


class EnumName(str):
    """The name of an Enum member of a primary key, until the receiving
    process finds the member in the class it maps.
    """


#: The JSON form of a key value that JSON does not hold, by type: the first
#: matching type (``datetime`` before ``date``, its base) and its encoder.
_TAGGED: tuple[tuple[str, type, t.Callable[[t.Any], str]], ...] = (
    ("enum", enum.Enum, lambda value: str(value.name)),
    ("uuid", uuid.UUID, str),
    ("decimal", decimal.Decimal, str),
    ("datetime", dt.datetime, dt.datetime.isoformat),
    ("date", dt.date, dt.date.isoformat),
    ("time", dt.time, dt.time.isoformat),
    ("bytes", bytes, lambda value: base64.b64encode(value).decode()),
)
_DECODERS: dict[str, t.Callable[[str], t.Any]] = {
    "enum": EnumName,
    "uuid": uuid.UUID,
    "decimal": decimal.Decimal,
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "bytes": base64.b64decode,
    "str": str,
}


def _encode_value(value: t.Any) -> t.Any:
    """A primary key value as JSON holds it: as it is for JSON's own types,
    else ``{tag: text}``.
    """
    if value is None or (
        isinstance(value, (str, int, float)) and not isinstance(value, enum.Enum)
    ):
        return value
    for tag, kind, encoder in _TAGGED:
        if isinstance(value, kind):
            return {tag: encoder(value)}
    return {"str": str(value)}


def _decode_value(value: t.Any) -> t.Any:
    """Undo :func:`_encode_value`."""
    if isinstance(value, dict) and len(value) == 1:
        ((tag, text),) = value.items()
        decoder = _DECODERS.get(tag)
        if decoder is not None and isinstance(text, str):
            return decoder(text)
    return value


def encode(origin: str, changes: t.Iterable[Summary]) -> str:
    """The payload of one publication."""
    return json.dumps(
        {
            "origin": origin,
            "changes": [
                [
                    entity,
                    table,
                    [_encode_value(value) for value in pk],
                    operation,
                    sorted(columns),
                    *(
                        ()
                        if previous is None
                        else ([_encode_value(value) for value in previous],)
                    ),
                ]
                for entity, table, pk, operation, columns, previous in changes
            ],
        },
        separators=(",", ":"),
    )


def decode(payload: str) -> tuple[str, list[Summary]]:
    """The origin and the changes of a payload.

    :raise ValueError: it is not a payload of :func:`encode`.
    """
    data = json.loads(payload)
    try:
        changes = [
            (
                str(entity),
                str(table),
                tuple(_decode_value(value) for value in pk),
                str(operation),
                frozenset(columns),
                tuple(_decode_value(value) for value in rest[0]) if rest else None,
            )
            for entity, table, pk, operation, columns, *rest in data["changes"]
        ]
        return str(data["origin"]), changes
    except (KeyError, TypeError, ValueError) as e:
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
