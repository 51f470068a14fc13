"""SQLite files shared by threads and processes: the PRAGMAs, transactions
that begin at the first write, ``immediate=True``, and the lock error.
"""

from __future__ import annotations

import sqlite3
import time
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import Flask, current_app

from flask_sessionext import SessionExt, signals

from helpers import fork
from models import Base, User


def make_db(
    tmp_path: Path, uri: str | None = None, **config: t.Any
) -> tuple[Flask, SessionExt]:
    """A new app and its extension with the test tables, on a SQLite file."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True,
        SESSIONEXT_DATABASE_URI=uri or f"sqlite:///{tmp_path / 'app.sqlite3'}",
        **config,
    )
    db = SessionExt(app)
    Base.metadata.create_all(app.extensions["sessionext"].engines[None])
    return app, db


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[SessionExt]:
    """The extension on a SQLite file, inside an app context."""
    app, db = make_db(tmp_path)
    with app.app_context():
        yield db
        db.session.remove()
        db.engine.dispose()


def pragmas(engine: sa.Engine) -> dict[str, object]:
    """The PRAGMAs the extension sets, and the busy timeout, of a new
    connection of ``engine``.
    """
    names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
    with engine.connect() as conn:
        return {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in names}


def raw_in_transaction(db: SessionExt) -> bool:
    """Whether the driver connection of ``db.session`` is in a transaction."""
    dbapi_connection = db.session.connection().connection.dbapi_connection
    return bool(t.cast("sqlite3.Connection", dbapi_connection).in_transaction)


def test_file_database_pragmas(sqlite_db: SessionExt) -> None:
    """A SQLite file gets WAL, synchronous=NORMAL, foreign keys and the
    driver's busy timeout of 5 seconds.
    """
    assert pragmas(sqlite_db.engine) == {
        "journal_mode": "wal",
        "synchronous": 1,
        "foreign_keys": 1,
        "busy_timeout": 5000,
    }


def test_pragmas_changed_and_unset(tmp_path: Path) -> None:
    """The sqlite_pragmas engine option changes a PRAGMA, leaves one unset
    with None, and connect_args' timeout sets the busy timeout.
    """
    app, db = make_db(
        tmp_path,
        SESSIONEXT_ENGINE_OPTIONS={
            "sqlite_pragmas": {"journal_mode": None, "synchronous": "FULL"},
            "connect_args": {"timeout": 30},
        },
    )
    with app.app_context():
        assert pragmas(db.engine) == {
            "journal_mode": "delete",
            "synchronous": 2,
            "foreign_keys": 1,
            "busy_timeout": 30000,
        }
        db.engine.dispose()


def test_memory_database_gets_no_pragmas(tmp_path: Path) -> None:
    """An in-memory database keeps SQLite's own settings."""
    app, db = make_db(tmp_path, "sqlite://")
    with app.app_context():
        assert pragmas(db.engine)["foreign_keys"] == 0
        db.engine.dispose()


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("WAL", TypeError, r"'sqlite_pragmas' = str 'WAL'; give a mapping"),
        (
            {"journal mode": "WAL"},
            ValueError,
            r"'sqlite_pragmas' with the PRAGMA name str 'journal mode'",
        ),
        (
            {"synchronous": 1.5},
            TypeError,
            r"'sqlite_pragmas' with 'synchronous' = float 1.5; give a str",
        ),
        (
            {"synchronous": "OFF; DROP"},
            ValueError,
            r"'sqlite_pragmas' with 'synchronous' = 'OFF; DROP'; give a word",
        ),
    ],
)
def test_bad_pragmas(
    tmp_path: Path, value: object, error: type[Exception], match: str
) -> None:
    """A sqlite_pragmas option that is not a mapping of names to words or
    numbers is refused at init_app, naming where it was set.
    """
    with pytest.raises(error, match=r"'SESSIONEXT_ENGINE_OPTIONS' has " + match):
        make_db(tmp_path, SESSIONEXT_ENGINE_OPTIONS={"sqlite_pragmas": value})


def test_pragmas_share_the_connect_listener(sqlite_db: SessionExt) -> None:
    """The PRAGMAs and the connect signal's receivers share one pool listener."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    pool = sqlite_db.engine.pool
    before = len(pool.dispatch.connect)

    def receiver(sender: Flask, **kwargs: object) -> None:
        """Receives nothing of interest."""

    with signals.connect.connected_to(receiver, sender=app):
        assert len(pool.dispatch.connect) == before


def test_reads_begin_no_transaction(sqlite_db: SessionExt) -> None:
    """Reads of a session hold no SQLite transaction; its first write begins
    one, which the rollback undoes.
    """
    sqlite_db.session.execute(sa.select(User))
    assert not raw_in_transaction(sqlite_db)
    sqlite_db.session.add(User(name="undone"))
    sqlite_db.session.flush()
    assert raw_in_transaction(sqlite_db)
    sqlite_db.session.rollback()
    assert sqlite_db.session.scalars(sa.select(User)).all() == []


def test_savepoint_after_reads_is_undone(sqlite_db: SessionExt) -> None:
    """A SAVEPOINT after reads begins the transaction, so a rollback undoes
    what was released into it.
    """
    sqlite_db.session.execute(sa.select(User))
    with sqlite_db.session.begin_nested():
        sqlite_db.session.add(User(name="released"))
    assert raw_in_transaction(sqlite_db)
    sqlite_db.session.rollback()
    assert sqlite_db.session.scalars(sa.select(User)).all() == []


def other_connection(db: SessionExt) -> sqlite3.Connection:
    """A driver connection of its own to the database of ``db``, which gives
    up on a lock at once.
    """
    path = db.engine.url.database
    assert path is not None
    return sqlite3.connect(path, timeout=0, isolation_level=None)


def test_transaction_immediate_takes_the_write_lock(sqlite_db: SessionExt) -> None:
    """transaction(immediate=True) holds the write lock from the start of the
    block, before any statement: another connection cannot write.
    """
    other = other_connection(sqlite_db)
    with sqlite_db.transaction(immediate=True) as session:
        assert raw_in_transaction(sqlite_db)
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")
        session.add(User(name="kept"))
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    other.close()
    assert sqlite_db.session.scalars(sa.select(User.name)).all() == ["kept"]


def test_session_scope_immediate_takes_the_write_lock(
    sqlite_db: SessionExt,
) -> None:
    """session_scope(immediate=True) holds the write lock from the start of
    the block, and commits.
    """
    other = other_connection(sqlite_db)
    with sqlite_db.session_scope(immediate=True) as session:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")
        session.add(User(name="kept"))
    other.close()
    assert sqlite_db.session.scalars(sa.select(User.name)).all() == ["kept"]


def test_nested_immediate_transaction_is_a_savepoint(sqlite_db: SessionExt) -> None:
    """immediate=True on a nested block takes the write lock and opens a
    SAVEPOINT whose rollback leaves the outer work.
    """
    with sqlite_db.transaction() as session:
        session.add(User(name="outer"))
        with (
            pytest.raises(KeyError, match="undo"),
            sqlite_db.transaction(immediate=True),
        ):
            session.add(User(name="inner"))
            session.flush()
            raise KeyError("undo")
    assert sqlite_db.session.scalars(sa.select(User.name)).all() == ["outer"]


def test_lock_error_names_cause_and_fix(tmp_path: Path) -> None:
    """A write that finds the write lock taken past the busy timeout fails
    with an error whose note names the cause and the fixes.
    """
    app, db = make_db(
        tmp_path, SESSIONEXT_ENGINE_OPTIONS={"connect_args": {"timeout": 0}}
    )
    with app.app_context():
        other = other_connection(db)
        other.execute("BEGIN IMMEDIATE")
        with (
            pytest.raises(
                sa_exc.OperationalError, match=r"(?s)database is locked.*immediate=True"
            ),
            db.transaction() as session,
        ):
            session.add(User(name="waits"))
        with (
            pytest.raises(
                sa_exc.OperationalError, match=r"(?s)BEGIN IMMEDIATE.*busy timeout"
            ),
            db.session_scope(immediate=True),
        ):
            pass
        other.execute("ROLLBACK")
        other.close()
        db.session.remove()
        db.engine.dispose()


def test_sqlite_begins_are_no_queries(sqlite_db: SessionExt) -> None:
    """The BEGIN IMMEDIATE of immediate=True and of a first SAVEPOINT reach
    no cursor event.
    """
    statements: list[str] = []
    # The engine is the test's own, so the listener goes with it.
    sa.event.listen(
        sqlite_db.engine,
        "before_cursor_execute",
        lambda *args: statements.append(args[2].split()[0]),
    )
    with sqlite_db.transaction(immediate=True) as session:
        session.execute(sa.select(User))
    with sqlite_db.session.begin_nested():
        sqlite_db.session.execute(sa.select(User))
    sqlite_db.session.rollback()
    assert statements == ["SELECT", "SAVEPOINT", "SELECT", "RELEASE"]


def test_processes_on_a_new_file_all_get_wal(tmp_path: Path) -> None:
    """Processes that open a new SQLite file at the same moment all connect,
    and in WAL mode, though only one of them can switch the file to it.
    """
    url = f"sqlite:///{tmp_path / 'new.sqlite3'}"
    start = time.time() + 1.0

    def child() -> str:
        app = Flask(__name__, instance_path=str(tmp_path / "instance"))
        app.config["SESSIONEXT_DATABASE_URI"] = url
        db = SessionExt(app)
        time.sleep(max(start - time.time(), 0))  # all connect together
        with app.app_context(), db.engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        return str(mode)

    children = [fork(child) for _ in range(6)]
    assert [c.result() for c in children] == ["wal"] * 6
