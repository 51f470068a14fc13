"""Correct transactions and SAVEPOINTs with the standard ``sqlite3`` driver.

``sqlite3`` begins transactions itself, only before DML, and so lets a
SAVEPOINT that is the first statement of a transaction run outside any
transaction. SQLAlchemy's documented recipe turns the driver's own
transaction handling off and emits ``BEGIN`` when SQLAlchemy begins one.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

from ._hooks import Hooks


def _on_connect(dbapi_connection: t.Any, connection_record: t.Any) -> None:
    dbapi_connection.isolation_level = None


def needs_fix(engine: sa.Engine) -> bool:
    """Whether ``engine`` uses the ``sqlite3`` driver."""
    return engine.dialect.name == "sqlite" and engine.dialect.driver == "pysqlite"


def install(hooks: Hooks, engine: sa.Engine, *, autocommit: bool) -> None:
    """Apply the fix to ``engine``: one ``connect`` and one ``begin`` handler.

    :param autocommit: the engine was created with
        ``isolation_level="AUTOCOMMIT"``, so it begins no transactions.
    """

    def on_begin(conn: sa.Connection) -> None:
        level = conn.get_execution_options().get("isolation_level")
        if level == "AUTOCOMMIT" or (level is None and autocommit):
            return
        dbapi_connection = conn.connection.driver_connection
        if dbapi_connection.isolation_level is not None:  # type: ignore[union-attr]
            # Resetting a connection that ran in AUTOCOMMIT turns the
            # driver's own transaction handling back on.
            dbapi_connection.isolation_level = None  # type: ignore[union-attr]
        # Straight on the DBAPI connection: this BEGIN is not a query of the
        # application, so it must not reach cursor events, recording or timing.
        dbapi_connection.execute("BEGIN")  # type: ignore[union-attr]

    hooks.add(engine, "connect", _on_connect)
    hooks.add(engine, "begin", on_begin)
