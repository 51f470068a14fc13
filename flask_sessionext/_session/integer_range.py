"""Whether a lookup of ``get_or_404``, ``first_or_404`` or ``one_or_404``
compares an integer column with a value that the column cannot hold, such as
the id ``9223372036854775808`` of a URL.

Sent to the database, such a value is an error rather than "no row": SQLite's
driver raises ``OverflowError`` beyond 64 bits, and PostgreSQL refuses a
value beyond the column's type (``NumericValueOutOfRange``) and aborts the
transaction with it, so the request's session could run no other statement.
The check runs before the query, from the column types alone, so it costs no
round trip and no SAVEPOINT, and the session is untouched.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator

import sqlalchemy as sa
import sqlalchemy.orm as orm
from sqlalchemy.sql import visitors

#: Bits of a signed integer type, on databases other than SQLite, the most
#: specific type first (``BigInteger`` and ``SmallInteger`` are ``Integer``s).
_BITS: tuple[tuple[type[sa.Integer], int], ...] = (
    (sa.SmallInteger, 16),
    (sa.BigInteger, 64),
    (sa.Integer, 32),
)


def ident_out_of_range(session: orm.Session, entity: type, ident: object) -> bool:
    """Whether a part of the primary key ``ident`` of ``entity`` (as
    :meth:`~sqlalchemy.orm.Session.get` takes it: a value, a tuple, or a dict
    by attribute name) is an ``int`` that its column cannot hold.
    """
    mapper: object = sa.inspect(entity, raiseerr=False)
    if not isinstance(mapper, orm.Mapper):
        return False  # Session.get() reports it
    columns = mapper.primary_key
    if isinstance(ident, dict):
        pairs = [
            (column, ident[key])
            for column in columns
            for key in {mapper.get_property_by_column(column).key, column.key}
            if key in ident
        ]
    elif isinstance(ident, (tuple, list)):
        pairs = list(zip(columns, ident))
    else:
        pairs = [(columns[0], ident)]
    dialect = session.get_bind(mapper=mapper).dialect
    return any(_out_of_range(column.type, value, dialect) for column, value in pairs)


def statement_out_of_range(session: orm.Session, statement: sa.Executable) -> bool:
    """Whether a bound parameter of ``statement`` of an integer type (a
    column's, in ``Model.id == value``) has an ``int`` value, or a list of
    them for ``in_()``, that the type cannot hold.
    """
    binds = list(_bind_parameters(statement))
    if not binds:
        return False
    dialect = session.get_bind(clause=t.cast(sa.ClauseElement, statement)).dialect
    for bind in binds:
        value = bind.effective_value
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(_out_of_range(bind.type, each, dialect) for each in values):
            return True
    return False


def _bind_parameters(statement: sa.Executable) -> Iterator[sa.BindParameter[t.Any]]:
    """The bound parameters of ``statement`` whose type is an integer type."""
    for element in visitors.iterate(t.cast(visitors.ExternallyTraversible, statement)):
        if isinstance(element, sa.BindParameter) and isinstance(
            element.type, sa.Integer
        ):
            yield element


def _out_of_range(type_: object, value: object, dialect: sa.Dialect) -> bool:
    """Whether ``value`` is an ``int`` that a column of ``type_`` cannot hold
    on ``dialect``; ``False`` for types that are not integer types.
    """
    if not isinstance(type_, sa.Integer) or not isinstance(value, int):
        return False
    if isinstance(value, bool):
        return False
    if dialect.name == "sqlite":
        bits = 64  # every integer of SQLite
    else:
        bits = next(bits for cls, bits in _BITS if isinstance(type_, cls))
    if getattr(type_, "unsigned", False):
        return not 0 <= value < 2**bits
    return not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)
