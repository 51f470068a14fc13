"""Transactions on SQLite with the standard ``sqlite3`` driver that several
threads and processes can share without "database is locked".

SQLite has one writer at a time. A transaction that began with a plain
(deferred) ``BEGIN`` and read takes a read snapshot; its first write must
then upgrade to the write lock, and when another connection writes (or, in
WAL mode, has committed since the snapshot) SQLite refuses at once with
``SQLITE_BUSY``: the busy timeout does not apply to an upgrade, which could
deadlock. So the extension never begins a transaction before its first
write: reads run on their own, each seeing the latest commit, and the first
write begins the transaction, which takes the write lock, waiting for it
under the busy timeout. ``sqlite3`` (in its legacy transaction control, the
default) does exactly that before ``INSERT``, ``UPDATE``, ``DELETE`` and
``REPLACE``; this module adds what it lacks:

- a SAVEPOINT that is the first statement of a transaction first emits
  ``BEGIN IMMEDIATE``, or the driver would run it outside a transaction and
  its work would survive the rollback (the problem of SQLAlchemy's
  documented pysqlite recipe, without the recipe's early ``BEGIN``);
- :func:`take_write_locks` begins the transaction with ``BEGIN IMMEDIATE``
  for a unit of work that reads, then writes what it read
  (``immediate=True`` of ``transaction()`` and ``session_scope()``).

Both go straight to the driver from the dialect's ``do_savepoint`` hook and
from the unit of work: per SAVEPOINT or unit, nothing per statement, and no
query of the application: not recorded, not timed, no cursor signal.
"""

from __future__ import annotations

import time
import typing as t
from collections.abc import Iterable, Mapping

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy import orm
from sqlalchemy.pool import ConnectionPoolEntry

from .._features.base import Feature

if t.TYPE_CHECKING:
    from flask import Flask

#: sqlite3.LEGACY_TRANSACTION_CONTROL, the only ``autocommit`` mode (and the
#: only one before Python 3.12) in which the driver needs this fix.
_LEGACY = -1

#: Added to a "database is locked" error of SQLite, as its cause and fix.
LOCKED_NOTE = (
    "SQLite allows one writer at a time, and another connection held the"
    " write lock for longer than the busy timeout, or a transaction that"
    " had read could not take it (another process committed since its"
    " snapshot). Keep write transactions short; raise the timeout with"
    " SESSIONEXT_ENGINE_OPTIONS={'connect_args': {'timeout': 30}}; run a"
    " unit that reads then writes in db.transaction(immediate=True) or"
    " db.session_scope(immediate=True), which takes the write lock first;"
    " or move to a server database such as PostgreSQL."
)


def needs_fix(engine: sa.Engine) -> bool:
    """Whether ``engine`` uses the ``sqlite3`` driver, itself or under
    ``aiosqlite`` (the sync engine of an async engine).
    """
    dialect = engine.dialect
    return dialect.name == "sqlite" and dialect.driver in ("pysqlite", "aiosqlite")


def is_locked(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's "database is locked" (or "busy")."""
    orig = getattr(error, "orig", error)
    return type(orig).__name__ == "OperationalError" and (
        "database is locked" in str(orig) or "database is busy" in str(orig)
    )


def explain(error: BaseException) -> None:
    """Add :data:`LOCKED_NOTE` to ``error`` when it is SQLite's "database is
    locked", once.
    """
    notes = getattr(error, "__notes__", ())
    add_note = getattr(error, "add_note", None)  # Python >= 3.11
    if add_note is not None and is_locked(error) and LOCKED_NOTE not in notes:
        add_note(LOCKED_NOTE)


def begin_immediate(dbapi_connection: t.Any, dbapi: t.Any) -> None:
    """Begin a transaction that holds the write lock, unless one is open (or
    the connection is in autocommit, or not in the driver's legacy mode).

    :raise sqlalchemy.exc.OperationalError: the write lock was not free
        within the busy timeout.
    """
    if (
        getattr(dbapi_connection, "autocommit", _LEGACY) == _LEGACY
        # None is the AUTOCOMMIT isolation level: no transactions at all.
        and dbapi_connection.isolation_level is not None
        and not dbapi_connection.in_transaction
    ):
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
        except dbapi.Error as e:
            error = sa_exc.DBAPIError.instance("BEGIN IMMEDIATE", None, e, dbapi.Error)
            explain(error)
            raise error from e


def install(engine: sa.Engine) -> None:
    """Apply the fix to ``engine``'s dialect, which is the engine's own."""
    dialect = engine.dialect
    savepoint, dbapi = dialect.do_savepoint, dialect.loaded_dbapi

    def do_savepoint(connection: sa.Connection, name: str) -> None:
        begin_immediate(connection.connection.dbapi_connection, dbapi)
        savepoint(connection, name)

    def do_savepoint_async(connection: sa.Connection, name: str) -> None:
        # aiosqlite's connection, in the greenlet of an async session.
        proxied = connection.connection
        driver: t.Any = proxied.driver_connection
        if driver.isolation_level is not None and not driver.in_transaction:
            cursor = t.cast(t.Any, proxied.dbapi_connection).cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
            finally:
                cursor.close()
        savepoint(connection, name)

    if dialect.is_async:
        do_savepoint = do_savepoint_async

    setattr(dialect, "do_savepoint", do_savepoint)  # noqa: B010


def take_write_locks(session: orm.Session, engines: Iterable[sa.Engine]) -> None:
    """Begin the transaction of ``session`` on each SQLite engine of
    ``engines`` with ``BEGIN IMMEDIATE``, where it has not begun yet.
    """
    router = getattr(type(session), "_sessionext_router", None)
    for engine in engines:
        if needs_fix(engine):
            target = router.stand_ins.get(engine, engine) if router else engine
            connection = session.connection(bind_arguments={"bind": target})
            dbapi_connection = connection.connection.dbapi_connection
            begin_immediate(dbapi_connection, engine.dialect.loaded_dbapi)


def pragmas_on_connect(
    pragmas: Mapping[str, str],
) -> t.Callable[[t.Any, ConnectionPoolEntry], None]:
    """A pool ``connect`` handler that sets ``pragmas`` on a new connection."""
    items = tuple(pragmas.items())

    def connect(dbapi_connection: t.Any, record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for name, value in items:
                if name == "journal_mode":
                    _set_journal_mode(cursor, value)
                else:
                    _pragma(cursor, f"{name} = {value}")
        finally:
            cursor.close()

    return connect


def _pragma(cursor: t.Any, text: str) -> list[t.Any]:
    cursor.execute(f"PRAGMA {text}")
    return list(cursor.fetchall())


def _set_journal_mode(cursor: t.Any, mode: str) -> None:
    """Set the journal mode of the file, unless it has it already.

    The mode is stored in the file, so only the first connection changes
    it; a change needs the file to itself, and SQLite refuses it at once,
    without its busy timeout, while another connection uses the file (as
    when several processes start on a new file together). Retry, then,
    until one of them has changed it, for up to the busy timeout.
    """
    timeout = int(_pragma(cursor, "busy_timeout")[0][0]) / 1000
    deadline = time.monotonic() + timeout
    while str(_pragma(cursor, "journal_mode")[0][0]).lower() != mode.lower():
        try:
            _pragma(cursor, f"journal_mode = {mode}")
            return
        except Exception as e:
            if not is_locked(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class SqliteTransactions(Feature):
    """What a SQLite engine of the app gets: the PRAGMAs of its bind on each
    new connection (file databases), and, with the ``sqlite3`` driver, the
    transaction fix of this module, which listens to no event.
    """

    name = "SQLite transactions and PRAGMAs"
    listens = ("connect",)

    def start(self, app: Flask) -> None:
        """Set each SQLite engine's PRAGMAs, and apply the fix where needed."""
        self.add_engines(app, list(self.parts.engines.items()))

    def add_engines(
        self, app: Flask, engines: t.Sequence[tuple[str | None, sa.Engine]]
    ) -> None:
        """Set the PRAGMAs of ``engines``, and apply the fix where needed."""
        binds = self.parts.settings.binds
        for key, engine in engines:
            pragmas = binds[key].pragmas
            if pragmas:
                self.listen(engine, "connect", pragmas_on_connect(pragmas))
            if needs_fix(engine):
                install(engine)
