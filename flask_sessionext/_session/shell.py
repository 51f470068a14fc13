"""What ``flask shell`` has in its namespace: ``db`` and the mapped classes
of the metadata given to the extension.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from .._sqlalchemy_private import all_registries


def shell_context(db: object, metadatas: Sequence[sa.MetaData]) -> dict[str, object]:
    """``db`` and each mapped class whose table is in one of ``metadatas``,
    by class name; of two classes with one name, the first mapped wins.
    """
    namespace: dict[str, object] = {}
    tables = {table for metadata in metadatas for table in metadata.tables.values()}
    if tables:
        for registry in all_registries():
            for mapper in registry.mappers:
                if mapper.local_table in tables:
                    namespace.setdefault(mapper.class_.__name__, mapper.class_)
    namespace["db"] = db
    return namespace
