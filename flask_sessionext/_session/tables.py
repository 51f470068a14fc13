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
    MetaData for that bind, with the naming convention of the first source.

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
        result[key] = _copy(
            tables, sources_of_key, {"bind_key": key} if key else {}, key
        )
    return MappingProxyType(result)


def add_feature_tables(
    metadatas: Mapping[str | None, sa.MetaData],
    features: Mapping[sa.MetaData, tuple[str | None, str]],
) -> Mapping[str | None, sa.MetaData]:
    """``metadatas`` with the tables that the app's features need in each
    bind, for tools that read one ``MetaData`` per bind (Alembic through
    Flask-Migrate's ``env.py``).

    The tables of a bind and those of its features are copied into one new
    ``MetaData``, with the naming convention of the bind's, so that the given
    ones stay as they are; a feature's ``MetaData`` alone in its bind is used
    as it is.

    :param features: each feature's ``MetaData``, and its bind key and the
        feature's name.
    :raise ValueError: a table has the name of a table of a feature in its
        bind.
    """
    result = dict(metadatas)
    for extra, (key, feature) in features.items():
        own = result[key]
        if not own.tables:
            result[key] = extra
            continue
        clash = sorted(own.tables.keys() & extra.tables.keys())
        if clash:
            raise ValueError(
                f"The table {clash[0]!r} of {_label(key)} has the name of a table"
                f" that the {feature!r} feature of the extension needs there."
                " Rename your table, or give the feature another bind."
            )
        tables = [*own.sorted_tables, *extra.sorted_tables]
        result[key] = _copy(tables, [own], own.info, key)
    return MappingProxyType(result)


def _label(key: str | None) -> str:
    return "the default bind" if key is None else f"bind {key!r}"


def _copy(
    tables: Iterable[sa.Table],
    sources: Sequence[sa.MetaData],
    info: Mapping[str, object],
    key: str | None,
) -> sa.MetaData:
    """A new MetaData with copies of ``tables``, named by the naming
    convention of the first of ``sources``: a column's ``index=True`` and
    ``unique=True`` are named again in the copy, as in the original.

    :raise ValueError: two of ``tables`` have one name.
    """
    convention = sources[0].naming_convention if sources else None
    target = sa.MetaData(naming_convention=convention, info=dict(info))
    for table in tables:
        if table.key in target.tables:
            raise ValueError(
                f"Two tables of 'metadata' named {table.key!r} go to"
                f" {_label(key)}. Rename one, or give them different binds."
            )
        table.to_metadata(target)
    return target


def with_features(
    metadatas: Mapping[str | None, sa.MetaData],
    features: Mapping[sa.MetaData, tuple[str | None, str]],
) -> dict[str | None, list[sa.MetaData]]:
    """The ``MetaData`` of each bind that has tables, then those of the
    features in that bind, as :func:`create_all` and :func:`drop_all` take
    them: each is created as it is, with its own DDL events.
    """
    result = {key: [metadata] for key, metadata in metadatas.items() if metadata.tables}
    for extra, (key, _) in features.items():
        result.setdefault(key, []).append(extra)
    return result


def create_all(
    schema: Mapping[str | None, Sequence[sa.MetaData]],
    engines: Mapping[str | None, sa.Engine],
) -> None:
    """Create the missing tables of every bind (see :func:`with_features`)."""
    for key, metadatas in schema.items():
        for metadata in metadatas:
            metadata.create_all(engines[key])


def drop_all(
    schema: Mapping[str | None, Sequence[sa.MetaData]],
    engines: Mapping[str | None, sa.Engine],
) -> None:
    """Drop the existing tables of every bind (see :func:`with_features`)."""
    for key, metadatas in schema.items():
        for metadata in reversed(metadatas):
            metadata.drop_all(engines[key])
