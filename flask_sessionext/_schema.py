"""The app's schema per bind: ``metadata=``, ``db.metadatas``, create and drop."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import sqlalchemy as sa

from ._compat import all_registries

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


def _class_bind_keys() -> dict[sa.Table, str]:
    """The ``__bind_key__`` of every mapped class that has one, by table."""
    keys: dict[sa.Table, str] = {}
    for registry in all_registries():
        for mapper in registry.mappers:
            key = getattr(mapper.class_, "__bind_key__", None)
            if key is None:
                continue
            for table in mapper.tables:
                if isinstance(table, sa.Table):
                    keys.setdefault(table, key)
    return keys


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
    by_class = _class_bind_keys()
    groups: dict[str | None, list[sa.Table]] = {key: [] for key in known}
    owners: dict[str | None, list[sa.MetaData]] = {key: [] for key in known}
    where: dict[sa.Table, str | None] = {}
    for metadata in sources:
        for table in metadata.sorted_tables:
            key = by_class.get(table, metadata.info.get("bind_key"))
            if key not in groups:
                names = ", ".join(repr(k) for k in known)
                raise KeyError(
                    f"Table {table.name!r} names the bind key {key!r}, which"
                    f" is not configured; the known keys are {names}."
                    " Add it to 'SESSIONEXT_BINDS'."
                )
            where[table] = key
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
