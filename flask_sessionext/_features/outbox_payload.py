"""What an outbox row's payload holds, and its JSON form.

A payload is ``{"origin": ..., "changes": [[entity, table, pk, operation,
columns(, previous pk)], ...]}``: the net row changes of one committed
transaction, never row values. A primary key value that JSON does not hold
keeps its type as ``{"uuid": "..."}``, ``{"date": ...}`` and so on.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import json
import typing as t
import uuid

import sqlalchemy as sa

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


def entity_name(cls: type) -> str:
    """How a payload names a mapped class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def typed_key(model: type | None, pk: tuple[t.Any, ...]) -> tuple[t.Any, ...]:
    """``pk`` with the names of Enum members replaced by the members of the
    Enum types of ``model``'s primary key columns; plain names where this
    process does not map the class or the member.
    """
    if not any(isinstance(value, EnumName) for value in pk):
        return pk
    columns: list[sa.Column[t.Any]] = (
        list(sa.inspect(model).primary_key) if model is not None else []
    )
    typed = []
    for i, value in enumerate(pk):
        if isinstance(value, EnumName):
            column_type = columns[i].type if i < len(columns) else None
            enum_class = getattr(column_type, "enum_class", None)
            members = getattr(enum_class, "__members__", {})
            value = members[value] if value in members else str(value)
        typed.append(value)
    return tuple(typed)
