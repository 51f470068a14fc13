"""Correct transactions and SAVEPOINTs with the standard ``sqlite3`` driver.

``sqlite3`` (before Python 3.12's ``autocommit``) begins transactions itself,
and only before data changes, so a SAVEPOINT that is the first statement of a
transaction runs outside any transaction and its work survives the rollback.
SQLAlchemy's documented recipe emits ``BEGIN`` whenever SQLAlchemy begins a
transaction; once a transaction is open, ``sqlite3`` adds no BEGIN of its own.

The recipe puts the BEGIN in a ``begin`` listener. Any connection-event
listener makes SQLAlchemy dispatch the (empty) events of every statement of
the engine, so the BEGIN is emitted from the dialect's ``do_begin`` hook
instead: per transaction, and nothing per statement. It goes straight to the
driver, so it is no query of the application: not recorded, not timed, and
no cursor signal sees it.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

from .._features.base import Feature

if t.TYPE_CHECKING:
    from flask import Flask

#: sqlite3.LEGACY_TRANSACTION_CONTROL, the only ``autocommit`` mode (and the
#: only one before Python 3.12) in which the driver needs this fix.
_LEGACY = -1


def needs_fix(engine: sa.Engine) -> bool:
    """Whether ``engine`` uses the ``sqlite3`` driver."""
    return engine.dialect.name == "sqlite" and engine.dialect.driver == "pysqlite"


def _do_begin(dbapi_connection: t.Any) -> None:
    if (
        getattr(dbapi_connection, "autocommit", _LEGACY) == _LEGACY
        # None is the AUTOCOMMIT isolation level: no transactions at all.
        and dbapi_connection.isolation_level is not None
        and not dbapi_connection.in_transaction
    ):
        dbapi_connection.execute("BEGIN")


def install(engine: sa.Engine) -> None:
    """Apply the fix to ``engine``'s dialect, which is the engine's own."""
    setattr(engine.dialect, "do_begin", _do_begin)  # noqa: B010


class SqliteTransactions(Feature):
    """The transaction fix on each of the app's engines that uses the
    ``sqlite3`` driver; it listens to no event.
    """

    name = "SQLite transactions"

    def start(self, app: Flask) -> None:
        """Apply the fix to each engine that needs it."""
        for engine in self.parts.engines.values():
            if needs_fix(engine):
                install(engine)
