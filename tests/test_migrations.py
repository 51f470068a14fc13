"""Flask-Migrate's templates, unchanged, on ``db.metadata`` and ``db.metadatas``."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_migrate import Migrate  # type: ignore[import-untyped]
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_sessionext import SessionExt

from models import AuditBase, Base, OtherBase

METADATAS = [Base.metadata, OtherBase.metadata, AuditBase.metadata]


@contextmanager
def _migrations(app: Flask, tmp_path: Path) -> Iterator[SessionExt]:
    """The extension with every test model's metadata and Flask-Migrate on
    ``app``; the tables and Alembic's version table dropped afterwards.
    """
    db = SessionExt(app, metadata=METADATAS)
    Migrate(app, db, directory=str(tmp_path / "migrations"))
    # env.py calls logging.config.fileConfig, which disables every logger
    # that exists; the other tests of this process need theirs.
    loggers = {
        name: logger.disabled
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    handlers = logging.root.handlers[:]
    level = logging.root.level
    yield db
    with app.app_context():
        db.drop_all()
        for engine in db.engines.values():
            with engine.begin() as conn:
                conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
            engine.dispose()
    for name, disabled in loggers.items():
        logging.getLogger(name).disabled = disabled
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


@pytest.fixture
def migrated(app: Flask, tmp_path: Path) -> Iterator[SessionExt]:
    """:func:`_migrations` with broadcast off."""
    with _migrations(app, tmp_path) as db:
        yield db


@pytest.fixture(params=[None, "other"])
def outbox_bind(request: pytest.FixtureRequest) -> str | None:
    """The bind of the outbox, ``SESSIONEXT_BROADCAST``'s ``bind`` setting."""
    bind: str | None = request.param
    return bind


@pytest.fixture
def broadcast_migrated(
    app: Flask, tmp_path: Path, outbox_bind: str | None
) -> Iterator[SessionExt]:
    """:func:`_migrations` with broadcast on, its outbox in ``outbox_bind``."""
    app.config["SESSIONEXT_BROADCAST"] = {"bind": outbox_bind}
    with _migrations(app, tmp_path) as db:
        yield db


def _flask(app: Flask, *args: str) -> str:
    """Run ``flask ARGS`` on ``app`` and return its output, failing on an error."""
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _tables(app: Flask, db: SessionExt, key: str | None) -> set[str]:
    """The names of the tables in the database of bind ``key``."""
    with app.app_context():
        return set(sa.inspect(db.get_engine(key)).get_table_names())


def _script(tmp_path: Path) -> str:
    """The text of the only migration script."""
    (script,) = (tmp_path / "migrations" / "versions").glob("*.py")
    return script.read_text()


#: The names of the outbox tables.
OUTBOX_TABLES = set(SessionExt.outbox_metadata.tables)


def _created(script: str) -> set[str]:
    """The names of the tables that a migration script creates."""
    return set(re.findall(r"op\.create_table\('(\w+)'", script))


def test_single_database(app: Flask, migrated: SessionExt, tmp_path: Path) -> None:
    """``db init``, ``migrate`` and ``upgrade`` create the default bind's tables."""
    _flask(app, "db", "init")
    _flask(app, "db", "migrate", "-m", "users")
    script = _script(tmp_path)
    assert "op.create_table('users'" in script
    assert "'entries'" not in script
    assert not _created(script) & OUTBOX_TABLES
    assert "users" not in _tables(app, migrated, None)
    _flask(app, "db", "upgrade")
    assert {"users", "alembic_version"} <= _tables(app, migrated, None)


def test_multidb(app: Flask, migrated: SessionExt, tmp_path: Path) -> None:
    """With ``--multidb`` a ``__bind_key__`` model's table lands in its own bind."""
    _flask(app, "db", "init", "--multidb")
    _flask(app, "db", "migrate", "-m", "all")
    script = _script(tmp_path)
    default, other = script.split("def upgrade_other():")
    assert "op.create_table('users'" in default
    assert "op.create_table('entries'" in other
    assert "op.create_table('items'" in other
    assert "'entries'" not in default
    assert not _created(script) & OUTBOX_TABLES
    _flask(app, "db", "upgrade")
    assert "entries" not in _tables(app, migrated, None)
    assert "users" in _tables(app, migrated, None)
    assert {"entries", "items"} <= _tables(app, migrated, "other")
    assert "users" not in _tables(app, migrated, "other")


def _migrate_again(app: Flask, tmp_path: Path) -> None:
    """A second ``db migrate`` finds no change and writes no script."""
    _flask(app, "db", "migrate", "-m", "again")
    assert len(list((tmp_path / "migrations" / "versions").glob("*.py"))) == 1


def _autoincrement(app: Flask, db: SessionExt, key: str | None) -> None:
    """On SQLite, the outbox table of bind ``key`` never reuses ids."""
    with app.app_context(), db.get_engine(key).connect() as conn:
        if conn.dialect.name == "sqlite":
            sql = conn.scalar(
                sa.text(
                    "SELECT sql FROM sqlite_master WHERE name = 'sessionext_outbox'"
                )
            )
            assert "AUTOINCREMENT" in sql


@pytest.mark.parametrize("outbox_bind", [None], indirect=True)
def test_single_database_broadcast(
    app: Flask, broadcast_migrated: SessionExt, tmp_path: Path
) -> None:
    """With broadcast on, the stock template creates the outbox tables once,
    then finds no change.
    """
    _flask(app, "db", "init")
    _flask(app, "db", "migrate", "-m", "users and outbox")
    script = _script(tmp_path)
    assert _created(script) == {"users", *OUTBOX_TABLES}
    assert "sqlite_autoincrement=True" in script
    assert "drop_table" not in script.split("def downgrade")[0]
    _flask(app, "db", "upgrade")
    assert {"users", "alembic_version", *OUTBOX_TABLES} <= _tables(
        app, broadcast_migrated, None
    )
    _autoincrement(app, broadcast_migrated, None)
    _migrate_again(app, tmp_path)


def test_multidb_broadcast(
    app: Flask,
    broadcast_migrated: SessionExt,
    tmp_path: Path,
    outbox_bind: str | None,
) -> None:
    """With broadcast on, the stock ``--multidb`` template creates the outbox
    tables once, in the outbox bind only, then finds no change.
    """
    _flask(app, "db", "init", "--multidb")
    _flask(app, "db", "migrate", "-m", "all")
    script = _script(tmp_path)
    default, other = script.split("def upgrade_other():")
    outbox, elsewhere = (default, other) if outbox_bind is None else (other, default)
    assert _created(outbox) >= OUTBOX_TABLES
    assert not _created(elsewhere) & OUTBOX_TABLES
    assert _created(default) == {"users", *(OUTBOX_TABLES if outbox is default else ())}
    upgrades = [part.split("def downgrade")[0] for part in script.split("def upgrade")]
    assert not any("drop_table" in part for part in upgrades)
    _flask(app, "db", "upgrade")
    assert _tables(app, broadcast_migrated, outbox_bind) >= OUTBOX_TABLES
    other_bind = "other" if outbox_bind is None else None
    assert not OUTBOX_TABLES & _tables(app, broadcast_migrated, other_bind)
    _autoincrement(app, broadcast_migrated, outbox_bind)
    _migrate_again(app, tmp_path)


@pytest.mark.parametrize("outbox_bind", [None], indirect=True)
def test_existing_outbox_is_kept(
    app: Flask, broadcast_migrated: SessionExt, tmp_path: Path
) -> None:
    """An outbox made by ``create-outbox`` before the first migration is
    neither created again nor dropped by autogenerate.
    """
    _flask(app, "sessionext", "create-outbox")
    _flask(app, "db", "init")
    _flask(app, "db", "migrate", "-m", "users")
    script = _script(tmp_path)
    assert _created(script) == {"users"}
    assert "sessionext_outbox" not in script


class SplitBase(DeclarativeBase):
    """One MetaData whose models live in two binds."""


class Note(SplitBase):
    """A row in the default database."""

    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)


class Tag(SplitBase):
    """A row in the ``other`` database, by ``__bind_key__``."""

    __tablename__ = "tags"
    __bind_key__ = "other"
    id: Mapped[int] = mapped_column(primary_key=True)


class CrossBase(DeclarativeBase):
    """A foreign key from the ``other`` bind to the default one."""


class Owner(CrossBase):
    """A row in the default database."""

    __tablename__ = "owners"
    id: Mapped[int] = mapped_column(primary_key=True)


class Pet(CrossBase):
    """A row in the ``other`` database that refers to an owner."""

    __tablename__ = "pets"
    __bind_key__ = "other"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("owners.id"))


def test_metadatas_keep_single_bind_metadata(app: Flask) -> None:
    """A MetaData whose tables all go to one bind is used as it is."""
    db = SessionExt(app, metadata=METADATAS)
    with app.app_context():
        assert db.metadata is Base.metadata
        assert set(db.metadatas) == {None, "other"}
        assert set(db.metadatas["other"].tables) == {"items", "entries"}
        assert db.bind_names() == ["other"]


def test_metadatas_split_one_metadata(app: Flask) -> None:
    """A MetaData spanning two binds is split by ``__bind_key__``."""
    db = SessionExt(app, metadata=SplitBase.metadata)
    with app.app_context():
        assert set(db.metadata.tables) == {"notes"}
        assert set(db.metadatas["other"].tables) == {"tags"}
        assert db.metadatas["other"].tables["tags"] is not Tag.__table__


def test_metadatas_read_only(app: Flask) -> None:
    """``db.metadatas`` cannot be changed."""
    db = SessionExt(app, metadata=Base.metadata)
    with app.app_context():
        metadatas = db.metadatas
        assert set(metadatas["other"].tables) == set()
        with pytest.raises(TypeError, match="does not support item assignment"):
            metadatas["x"] = sa.MetaData()  # type: ignore[index]


def test_foreign_key_across_binds(app: Flask) -> None:
    """A foreign key from one bind to another is a ValueError naming it."""
    db = SessionExt(app, metadata=CrossBase.metadata)
    with (
        app.app_context(),
        pytest.raises(ValueError, match=r"'owners\.id' of table 'pets'.*'other'"),
    ):
        dict(db.metadatas)


def test_unknown_bind_key(app: Flask) -> None:
    """A table of an unconfigured bind, defined after ``init_app``, is a
    KeyError naming table and keys.
    """
    metadata = sa.MetaData(info={"bind_key": "archive"})
    db = SessionExt(app, metadata=metadata)
    sa.Table("old", metadata, sa.Column("id", sa.Integer, primary_key=True))
    with (
        app.app_context(),
        pytest.raises(
            KeyError, match=r"table 'old' names the bind key 'archive'.*None, 'other'"
        ),
    ):
        dict(db.metadatas)


@pytest.mark.parametrize("value", ["Base.metadata", Base, [Base.metadata, 3]])
def test_metadata_wrong_type(value: object) -> None:
    """A ``metadata`` that is not MetaData is a TypeError naming the argument."""
    with pytest.raises(TypeError, match=r"'metadata' must be a sqlalchemy\.MetaData"):
        SessionExt(metadata=value)  # type: ignore[arg-type]


def test_no_metadata(app: Flask) -> None:
    """Without ``metadata`` the schema helpers say how to pass it."""
    db = SessionExt(app)
    with (
        app.app_context(),
        pytest.raises(RuntimeError, match=r"SessionExt\(metadata=Base\.metadata\)"),
    ):
        db.create_all()


def test_create_all_and_drop_all(app: Flask) -> None:
    """``create_all()`` and ``drop_all()`` work on every bind."""
    db = SessionExt(app, metadata=SplitBase.metadata)
    with app.app_context():
        db.create_all()
        try:
            assert "notes" in sa.inspect(db.engine).get_table_names()
            assert "tags" not in sa.inspect(db.engine).get_table_names()
            assert "tags" in sa.inspect(db.get_engine("other")).get_table_names()
        finally:
            db.drop_all()
        for engine in db.engines.values():
            names = set(sa.inspect(engine).get_table_names())
            assert not names & {"notes", "tags"}
            engine.dispose()


def _broadcast_app(tmp_path: Path, bind: str | None = None) -> Flask:
    """An app on SQLite files with broadcast on, its outbox in ``bind``."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SESSIONEXT_DATABASE_URI=f"sqlite:///{tmp_path / 'default.sqlite3'}",
        SESSIONEXT_BINDS={"other": f"sqlite:///{tmp_path / 'other.sqlite3'}"},
        SESSIONEXT_BROADCAST={"bind": bind},
    )
    return app


@pytest.mark.parametrize("bind", [None, "other"])
def test_metadatas_hold_the_outbox(tmp_path: Path, bind: str | None) -> None:
    """With broadcast on, the outbox bind's MetaData holds its tables and the
    outbox tables, in a new MetaData; the given ones are left as they are.
    """
    app = _broadcast_app(tmp_path, bind)
    db = SessionExt(app, metadata=METADATAS)
    before = {metadata: set(metadata.tables) for metadata in METADATAS}
    with app.app_context():
        metadatas = db.metadatas
        assert set(metadatas[None].tables) == {
            "users",
            *(OUTBOX_TABLES if bind is None else ()),
        }
        assert set(metadatas["other"].tables) == {
            "items",
            "entries",
            *(OUTBOX_TABLES if bind == "other" else ()),
        }
        assert metadatas[bind] not in (*METADATAS, SessionExt.outbox_metadata)
        assert (db.metadata is Base.metadata) is (bind == "other")
    assert {metadata: set(metadata.tables) for metadata in METADATAS} == before
    assert all(
        table.metadata is SessionExt.outbox_metadata
        for table in SessionExt.outbox_metadata.tables.values()
    )


def test_outbox_alone_in_its_bind(tmp_path: Path) -> None:
    """An outbox bind with no table of the app's holds the outbox tables as
    they are.
    """
    app = _broadcast_app(tmp_path, "other")
    db = SessionExt(app, metadata=Base.metadata)
    with app.app_context():
        assert db.metadatas["other"] is SessionExt.outbox_metadata
        assert db.metadata is Base.metadata


def test_outbox_metadata_given_too(tmp_path: Path) -> None:
    """``outbox_metadata`` given in ``metadata=`` goes to the outbox bind,
    once.
    """
    app = _broadcast_app(tmp_path, "other")
    db = SessionExt(app, metadata=[Base.metadata, SessionExt.outbox_metadata])
    with app.app_context():
        assert set(db.metadata.tables) == {"users"}
        assert set(db.metadatas["other"].tables) == OUTBOX_TABLES


def test_copies_keep_the_naming_convention(tmp_path: Path) -> None:
    """The copies follow the naming convention of the app's MetaData, and
    the outbox tables keep the names of their own indexes and constraints.
    """
    metadata = sa.MetaData(naming_convention={"ix": "%(column_0_label)s_idx"})
    sa.Table(
        "tasks",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(20), index=True),
    )
    app = _broadcast_app(tmp_path)
    db = SessionExt(app, metadata=metadata)
    with app.app_context():
        view = db.metadata
    assert view is not metadata
    assert view.naming_convention == metadata.naming_convention
    assert {index.name for index in view.tables["tasks"].indexes} == {"tasks_title_idx"}
    for table in SessionExt.outbox_metadata.tables.values():
        assert _names(view.tables[table.key]) == _names(table)


def _names(table: sa.Table) -> set[object]:
    """The names of the indexes and constraints of ``table``."""
    names: set[object] = {index.name for index in table.indexes}
    return names | {constraint.name for constraint in table.constraints}


def test_outbox_tables_are_named_explicitly() -> None:
    """The indexes and constraints of every outbox table keep their names
    under a naming convention (primary keys aside, which Alembic does not
    compare).
    """
    target = sa.MetaData(
        naming_convention={
            "ix": "i_%(column_0_label)s",
            "uq": "u_%(table_name)s_%(column_0_name)s",
            "ck": "c_%(table_name)s_%(constraint_name)s",
            "fk": "f_%(table_name)s_%(column_0_name)s",
        }
    )
    for table in SessionExt.outbox_metadata.sorted_tables:
        assert _names(table.to_metadata(target)) == _names(table)


def test_table_named_like_the_outbox(tmp_path: Path) -> None:
    """A table of the app with the name of an outbox table in the outbox
    bind is a ValueError naming it.
    """
    metadata = sa.MetaData()
    sa.Table(
        "sessionext_outbox", metadata, sa.Column("id", sa.Integer, primary_key=True)
    )
    app = _broadcast_app(tmp_path)
    db = SessionExt(app, metadata=metadata)
    with (
        app.app_context(),
        pytest.raises(
            ValueError,
            match=r"table 'sessionext_outbox' of the default bind has the name of a"
            r" table that the 'broadcast' feature",
        ),
    ):
        dict(db.metadatas)


def test_two_tables_of_one_name_in_a_bind(tmp_path: Path) -> None:
    """Two given tables of one name in one bind are a ValueError naming it."""
    first, second = sa.MetaData(), sa.MetaData()
    for metadata in (first, second):
        sa.Table("twice", metadata, sa.Column("id", sa.Integer, primary_key=True))
    app = _broadcast_app(tmp_path, "other")
    db = SessionExt(app, metadata=[first, second])
    with (
        app.app_context(),
        pytest.raises(
            ValueError,
            match=r"Two tables of 'metadata' named 'twice' go to the default",
        ),
    ):
        dict(db.metadatas)


def test_create_all_creates_the_outbox(app: Flask) -> None:
    """With broadcast on, ``create_all()`` and ``create-all`` create the
    outbox tables in the outbox bind, ``create-outbox`` then finds them, and
    ``drop_all()`` drops them.
    """
    app.config["SESSIONEXT_BROADCAST"] = {"bind": "other"}
    db = SessionExt(app, metadata=METADATAS)
    runner = app.test_cli_runner()
    with app.app_context():
        try:
            db.create_all()
            assert _tables(app, db, "other") >= OUTBOX_TABLES
            assert not OUTBOX_TABLES & _tables(app, db, None)
            created = {
                table for metadata in db.metadatas.values() for table in metadata.tables
            }
            assert created <= _tables(app, db, None) | _tables(app, db, "other")
            result = runner.invoke(args=["sessionext", "create-outbox"])
            assert "The outbox tables 'sessionext_outbox' and" in result.output
        finally:
            db.drop_all()
        assert not OUTBOX_TABLES & _tables(app, db, "other")
        result = runner.invoke(args=["sessionext", "create-all"])
        count = 2 + len(OUTBOX_TABLES)
        assert f"Created {count} table(s) in bind 'other' (0 already existed)." in (
            result.output
        )
        assert "Created 1 table(s) in the default bind" in result.output
        result = runner.invoke(args=["sessionext", "drop-all", "--yes"])
        assert f"Dropped {count} table(s) from bind 'other' (0 did not exist)." in (
            result.output
        )
        for engine in db.engines.values():
            engine.dispose()
