"""The outbox row of a transaction sent with its COMMIT, in one round trip.

A publication inserted as a statement of its own costs a round trip to the
server on every publishing commit, which is a third of a small transaction.
With psycopg, a statement without parameters is sent with the simple query
protocol, which runs several statements at once: the connection's ``commit``
event (fired just before SQLAlchemy asks the driver to commit) sends
``INSERT ...; COMMIT`` instead, and the driver's own commit that follows
finds the transaction ended and sends nothing. The values are literals,
quoted by psycopg for the connection (``psycopg.sql.Literal``); the
statement events and query recording see the statement as any other.

Only where the session's commit is the connection's: a session joined to an
outer transaction (a SAVEPOINT, as the test plugin joins it) or committing
in two phases inserts the row as a statement of its own, at once.
"""

from __future__ import annotations

import typing as t
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import orm

from .outbox import OUTBOX

#: The key of ``Connection.info`` holding the row to send with the COMMIT.
PENDING = "sessionext.broadcast.pending"

#: The drivers whose statements without parameters may hold several.
DRIVERS = ("psycopg",)

_INSERT = (
    f"INSERT INTO {OUTBOX} (channel, created_at, payload, txid)"
    " VALUES ({}, {}, {}, pg_current_xact_id()::text::bigint); COMMIT"
)


def rides(connection: sa.Connection, session: orm.Session) -> bool:
    """Whether a publication on ``connection`` can go with its COMMIT."""
    return (
        connection.dialect.driver in DRIVERS
        and not connection.in_nested_transaction()
        and not session.twophase
    )


def hold(connection: sa.Connection, channel: str, at: datetime, payload: str) -> None:
    """Keep the row for the COMMIT of ``connection``'s transaction."""
    connection.info[PENDING] = (channel, at, payload)


def drop(info: dict[t.Any, t.Any]) -> None:
    """Forget a row held for a COMMIT that will not come, in the ``info`` of
    its connection, which outlives the checkout.
    """
    info.pop(PENDING, None)


def send(connection: sa.Connection) -> None:
    """Insert the held row, if any, and commit, in one round trip: the
    handler of the connection's ``commit`` event.
    """
    pending = connection.info.pop(PENDING, None)
    if pending is None:
        return
    from psycopg import sql

    channel, at, payload = pending
    statement = sql.SQL(_INSERT).format(
        sql.Literal(channel), sql.Literal(at), sql.Literal(payload)
    )
    # psycopg quotes for the connection: the async one, under an async engine.
    dbapi_connection: t.Any = connection.connection.driver_connection
    # Without parameters: SQLAlchemy runs it with the driver's execute() of
    # no parameters, psycopg with the simple query protocol; errors come
    # wrapped as SQLAlchemy's, as a failing COMMIT's would.
    connection.exec_driver_sql(statement.as_string(dbapi_connection))
