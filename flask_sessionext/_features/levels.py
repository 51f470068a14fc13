"""Transaction levels: what a feature keeps per level of a session's
transaction, its outermost transaction and each SAVEPOINT, in
``session.info``, shared by model changes and broadcast.

A released SAVEPOINT hands its level to the enclosing one; a rolled-back
SAVEPOINT, or a rolled-back transaction, drops its level. SQLAlchemy fires
``after_commit`` for a SAVEPOINT release as for the real commit, so the
release is told apart by the session still having a nested transaction.
"""

from __future__ import annotations

import typing as t

from sqlalchemy import orm


class _Absorbing(t.Protocol):
    """What :func:`mark_released` and :func:`end_level` need of a level."""

    released: bool

    def absorb(self, child: t.Any) -> None: ...


_L = t.TypeVar("_L", bound=_Absorbing)


def mark_released(
    levels: dict[orm.SessionTransaction, _L] | None, session: orm.Session
) -> None:
    """At an ``after_commit`` that releases a SAVEPOINT: mark its level, which
    its ``after_transaction_end`` hands to the enclosing level.
    """
    nested = session.get_nested_transaction()
    if nested is not None and levels and nested in levels:
        levels[nested].released = True


def end_level(
    levels: dict[orm.SessionTransaction, _L] | None,
    transaction: orm.SessionTransaction,
    new_level: t.Callable[[], _L],
) -> _L | None:
    """At the ``after_transaction_end`` of ``transaction``: drop its level, or,
    for a released SAVEPOINT, fold it into the enclosing level; at the end of
    the outermost transaction, drop whatever a rollback left behind. Returns
    the level of ``transaction``, if it had one.
    """
    if not levels:
        return None
    level = levels.pop(transaction, None)
    if level is not None and level.released and transaction.parent is not None:
        parent = _level_of(transaction.parent)
        levels.setdefault(parent, new_level()).absorb(level)
    if transaction.parent is None:
        levels.clear()
    return level


def _level_of(transaction: orm.SessionTransaction) -> orm.SessionTransaction:
    """The SAVEPOINT or outermost transaction that ``transaction`` is part of."""
    while not transaction.nested and transaction.parent is not None:
        transaction = transaction.parent
    return transaction
