"""Flask-Migrate's templates, unchanged, on ``db.metadata`` and ``db.metadatas``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_migrate import Migrate  # type: ignore[import-untyped]
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_sessionext import SessionExt

from models import AuditBase, Base, OtherBase

METADATAS = [Base.metadata, OtherBase.metadata, AuditBase.metadata]


@pytest.fixture
def migrated(app: Flask, tmp_path: Path) -> Iterator[SessionExt]:
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


def test_single_database(app: Flask, migrated: SessionExt, tmp_path: Path) -> None:
    """``db init``, ``migrate`` and ``upgrade`` create the default bind's tables."""
    _flask(app, "db", "init")
    _flask(app, "db", "migrate", "-m", "users")
    script = _script(tmp_path)
    assert "op.create_table('users'" in script
    assert "'entries'" not in script
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
    _flask(app, "db", "upgrade")
    assert "entries" not in _tables(app, migrated, None)
    assert "users" in _tables(app, migrated, None)
    assert {"entries", "items"} <= _tables(app, migrated, "other")
    assert "users" not in _tables(app, migrated, "other")


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
