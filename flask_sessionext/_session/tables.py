"""The app's schema per bind: ``metadata=``, ``db.metadatas``, create and drop."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import sqlalchemy as sa

from .session import bind_key_of, class_bind_keys, unknown_bind

#: The message of every use of the schema when ``metadata=`` was not given.
NO_METADATA = (
    "This SessionExt was given no metadata. Pass your declarative base's"
    " metadata: 'SessionExt(metadata=Base.metadata)'."
)


def check_metadata(
    value: sa.MetaData | Sequence[sa.MetaData] | None,
) -> tuple[sa.MetaData, ...]:
    """The ``metadata=`` argument of :class:`SessionExt` as a tuple.

    :raise TypeError: it is neither a ``MetaData``, a sequence of them, nor
        ``None``.
    """
    if value is None:
        return ()
    if isinstance(value, sa.MetaData):
        return (value,)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        wrong = [item for item in value if not isinstance(item, sa.MetaData)]
        if not wrong:
            return tuple(value)
        value = wrong[0]
    raise TypeError(
        "'metadata' must be a sqlalchemy.MetaData (such as 'Base.metadata'), a"
        f" sequence of them, or None, not {type(value).__name__} {value!r}."
    )


def _bind_of(
    table: sa.Table,
    by_class: Mapping[sa.Table, tuple[str, str]],
    known: list[str | None],
) -> str | None:
    key, owner = bind_key_of(table, by_class)
    if key not in known:
        raise KeyError(unknown_bind(known, key, owner))
    return key


def check_bind_keys(
    sources: Iterable[sa.MetaData], bind_keys: Iterable[str | None]
) -> None:
    """Check that every table of ``sources`` goes to a configured bind.

    :raise KeyError: a table, or the model that maps it, names a bind that is
        not configured; the message names them, the key and the known keys.
    """
    known = list(bind_keys)
    by_class = class_bind_keys()
    for metadata in sources:
        for table in metadata.tables.values():
            _bind_of(table, by_class, known)


def split_by_bind(
    sources: Iterable[sa.MetaData], bind_keys: Iterable[str | None]
) -> Mapping[str | None, sa.MetaData]:
    """One ``MetaData`` per bind key, with the tables of that bind.

    A table belongs to the bind of its mapped class's ``__bind_key__``, else
    of its MetaData's ``info["bind_key"]``, else to the default bind, as
    the session routes it. A source MetaData whose tables all go to one bind,
    and that is the only one for it, is used as it is; otherwise the tables
    are copied with :meth:`~sqlalchemy.schema.Table.to_metadata` into a new
    MetaData for that bind.

    :raise KeyError: a table names a bind that is not configured.
    :raise ValueError: a foreign key refers to a table of another bind.
    """
    known = list(bind_keys)
    by_class = class_bind_keys()
    groups: dict[str | None, list[sa.Table]] = {key: [] for key in known}
    owners: dict[str | None, list[sa.MetaData]] = {key: [] for key in known}
    where: dict[sa.Table, str | None] = {}
    for metadata in sources:
        for table in metadata.sorted_tables:
            key = where[table] = _bind_of(table, by_class, known)
            groups[key].append(table)
            if metadata not in owners[key]:
                owners[key].append(metadata)
    for table, key in where.items():
        for fk in table.foreign_keys:
            other = fk.column.table
            if isinstance(other, sa.Table) and where.get(other, key) != key:
                raise ValueError(
                    f"The foreign key {fk.target_fullname!r} of table"
                    f" {table.name!r} (bind {key!r}) refers to bind"
                    f" {where[other]!r}; a foreign key cannot span two"
                    " databases. Remove it, or put both tables in one bind."
                )
    result: dict[str | None, sa.MetaData] = {}
    for key, tables in groups.items():
        sources_of_key = owners[key]
        if len(sources_of_key) == 1 and len(tables) == len(sources_of_key[0].tables):
            result[key] = sources_of_key[0]
            continue
        target = sa.MetaData(info={"bind_key": key} if key else {})
        for table in tables:
            table.to_metadata(target)
        result[key] = target
    return MappingProxyType(result)


def create_all(
    metadatas: Mapping[str | None, sa.MetaData],
    engines: Mapping[str | None, sa.Engine],
) -> None:
    """Create the missing tables of every bind that has tables."""
    for key, metadata in metadatas.items():
        if metadata.tables:
            metadata.create_all(engines[key])


def drop_all(
    metadatas: Mapping[str | None, sa.MetaData],
    engines: Mapping[str | None, sa.Engine],
) -> None:
    """Drop the existing tables of every bind that has tables."""
    for key, metadata in metadatas.items():
        if metadata.tables:
            metadata.drop_all(engines[key])
