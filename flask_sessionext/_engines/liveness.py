"""Dead pooled PostgreSQL connections found at checkout without a round trip.

``pool_pre_ping`` sends ``SELECT 1`` on every checkout, most of the cost of a
short request. A server that closes a connection (a restart,
``pg_terminate_backend``, ``idle_session_timeout``) first sends an error
message on it and closes its end, so while no query is pending the socket of
that connection reads as ready. A connection idle in the pool whose socket is
ready is therefore pinged (the data may also be a harmless notification) and
replaced if the ping fails; one whose socket is quiet is taken as alive,
unless it has been idle longer than ``SESSIONEXT_PING_AFTER_IDLE``, long
enough for a silent network drop, when it is pinged too.

Only psycopg (3) connections are checked this way; other drivers keep
``pool_pre_ping``.
"""

from __future__ import annotations

import select
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from .._features.base import Feature

if t.TYPE_CHECKING:
    from flask import Flask

    from .._config.settings import Settings

#: The key of ``ConnectionPoolEntry.info`` that holds the monotonic time at
#: which the connection was last checked in; SQLAlchemy clears ``info`` when
#: it replaces the connection.
CHECKED_IN = "sessionext.checked_in"

#: ``psycopg.pq.TransactionStatus.UNKNOWN``: the connection is bad.
_UNKNOWN = 4


class Liveness(Feature):
    """The check at checkout of the pooled connections of the app's engines
    whose settings say it replaces ``pool_pre_ping``.
    """

    name = "liveness check"
    listens = ("checkout", "checkin")

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        """Whether a bind of ``settings`` gets the check."""
        return any(bind.liveness for bind in settings.binds.values())

    def start(self, app: Flask) -> None:
        """Check the connections of each engine whose settings say so."""
        self.add_engines(app, list(self.parts.engines.items()))

    def add_engines(
        self, app: Flask, engines: t.Sequence[tuple[str | None, sa.Engine]]
    ) -> None:
        """Check the connections of each of ``engines`` whose settings say so."""
        settings = self.parts.settings
        for key, engine in engines:
            # The sync engine under an async one too: psycopg's async
            # connection has the sync one's state and socket.
            if settings.binds[key].liveness and engine.dialect.driver == "psycopg":
                self._install(engine, settings.ping_after_idle)

    def _install(self, engine: sa.Engine, after_idle: float) -> None:
        """Check each connection of ``engine``'s pool at checkout: replace it
        when the server has closed it, and ping it when it has been idle for
        more than ``after_idle`` seconds.
        """
        dialect = engine.dialect
        # The psycopg connection itself, also under SQLAlchemy's adapter of
        # an async engine's.
        is_async = dialect.is_async

        def checkin(dbapi_connection: t.Any, record: ConnectionPoolEntry) -> None:
            if dbapi_connection is not None:
                record.info[CHECKED_IN] = time.monotonic()

        def checkout(
            dbapi_connection: t.Any,
            record: ConnectionPoolEntry,
            proxy: PoolProxiedConnection,
        ) -> None:
            checked_in = record.info.get(CHECKED_IN)
            if checked_in is None:  # a new connection, not used yet
                return
            driver: t.Any = proxy.driver_connection if is_async else dbapi_connection
            if (
                driver.closed
                or driver.broken
                or driver.pgconn.transaction_status == _UNKNOWN
            ):
                raise sa_exc.DisconnectionError("the connection is closed")
            if _readable(driver) or time.monotonic() - checked_in > after_idle:
                ping(dialect, dbapi_connection)

        # Before any receiver of the checkout signal (the features' order):
        # they see live connections.
        self.listen(engine, "checkout", checkout)
        self.listen(engine, "checkin", checkin)


def ping(dialect: Dialect, dbapi_connection: t.Any) -> None:
    """Send the dialect's ping on ``dbapi_connection``.

    :raise sqlalchemy.exc.DisconnectionError: the ping failed, so the pool
        replaces the connection.
    """
    try:
        dialect.do_ping(dbapi_connection)
    except dialect.loaded_dbapi.Error as e:
        # Even an error that is not a disconnection leaves a connection that
        # cannot run SELECT 1; the pool replaces it with a new one, which is
        # not pinged, so a real problem shows in the query that follows.
        raise sa_exc.DisconnectionError(f"the ping failed: {e}") from e


def _readable(dbapi_connection: t.Any) -> bool:
    """Whether the socket of an idle connection has data or an end of file
    waiting, which only the server's closing it, or a notification, puts
    there. A connection without a socket is lost.
    """
    try:
        fd = dbapi_connection.pgconn.socket
    except dbapi_connection.OperationalError:
        return True
    return _poll(fd)


def _poll_with_poll(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _poll_with_select(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


# select() cannot take a descriptor above FD_SETSIZE (1024), which a busy
# server may have; poll() can, and exists everywhere but on Windows, whose
# select() has no such limit.
_poll = _poll_with_poll if hasattr(select, "poll") else _poll_with_select
