"""The PRAGMAs that file SQLite databases get on every new connection, so
that several threads and processes share one file: the ``sqlite_pragmas``
engine option.
"""

from __future__ import annotations

import re
import time
import typing as t
from collections.abc import Mapping
from types import MappingProxyType

import sqlalchemy as sa
from sqlalchemy.pool import ConnectionPoolEntry

from ._listeners import Listeners
from ._passwords import describe
from ._sqlite_transactions import is_locked

#: The engine option that changes the PRAGMAs; not one of ``create_engine()``.
OPTION = "sqlite_pragmas"

#: What a file database gets, in this order (journal_mode needs no
#: transaction, so it goes first):
#:
#: - ``journal_mode=WAL``: readers do not block the writer, nor it them;
#: - ``synchronous=NORMAL``: in WAL mode, durable except for the last
#:   commits at a power loss, never corrupt, and no fsync per commit;
#: - ``foreign_keys=ON``: the ``FOREIGN KEY`` constraints are enforced.
DEFAULTS: Mapping[str, str] = MappingProxyType(
    {"journal_mode": "WAL", "synchronous": "NORMAL", "foreign_keys": "ON"}
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VALUE = re.compile(r"-?[A-Za-z0-9_]+\Z")


def read_pragmas(where: str, value: object, *, file: bool) -> Mapping[str, str]:
    """The PRAGMAs of a SQLite bind: :data:`DEFAULTS` for a file database
    (none for an in-memory one), updated by ``value``, the ``sqlite_pragmas``
    option set in ``where``; a PRAGMA whose value is ``None`` is not set.

    :raise TypeError: ``value`` is not a mapping of names to strings,
        integers or ``None``.
    :raise ValueError: a name or value is not a plain word or number.
    """
    pragmas = dict(DEFAULTS) if file else {}
    if value is None:
        return MappingProxyType(pragmas)
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{where} has '{OPTION}' = {describe(value)}; give a mapping of"
            " PRAGMA names to values, such as {'journal_mode': 'DELETE'},"
            " where None leaves a PRAGMA unset."
        )
    for name, setting in value.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"{where} has '{OPTION}' with the PRAGMA name {describe(name)};"
                " give a PRAGMA name such as 'journal_mode' or 'cache_size'."
            )
        if setting is None:
            pragmas.pop(name, None)
            continue
        if isinstance(setting, bool) or not isinstance(setting, (str, int)):
            raise TypeError(
                f"{where} has '{OPTION}' with {name!r} = {describe(setting)};"
                " give a string or an integer, or None to leave it unset."
            )
        if not _VALUE.match(str(setting)):
            raise ValueError(
                f"{where} has '{OPTION}' with {name!r} = {setting!r}; give a"
                " word or a number, such as 'WAL', 'NORMAL', 'ON' or -64000."
            )
        pragmas[name] = str(setting)
    return MappingProxyType(pragmas)


def install(
    listeners: Listeners, engine: sa.Engine, pragmas: Mapping[str, str]
) -> None:
    """Set ``pragmas`` on every new connection of ``engine``."""
    if not pragmas:
        return
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

    listeners.add(engine, "connect", connect)


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
