"""Bind routing never falls back silently: ORM and Core statements on a
bound model's tables go to its bind, and an unknown bind key is an error that
names the model, the key and the known keys.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_sessionext import SessionExt

from helpers import count_rows
from models import Entry, User


class TypoBase(DeclarativeBase):
    """Models whose bind keys name no configured bind."""


class Misspelt(TypoBase):
    """A model whose ``__bind_key__`` has a typo."""

    __tablename__ = "misspelt"
    __bind_key__ = "othr"
    id: Mapped[int] = mapped_column(primary_key=True)


class Numbered(TypoBase):
    """A model whose ``__bind_key__`` is not a string."""

    __tablename__ = "numbered"
    __bind_key__ = 2
    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.fixture
def single_bind_app(tmp_path: Path) -> Flask:
    """An app with the default bind only."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True, SESSIONEXT_DATABASE_URI=f"sqlite:///{tmp_path / 'one.db'}"
    )
    return app


def test_core_statements_on_a_bound_table_use_its_bind(
    app: Flask, db: SessionExt
) -> None:
    """Core ``insert``/``select``/``update``/``delete`` on the table of a
    ``__bind_key__`` model go to its bind, as ORM statements on it do.
    """
    table = t.cast(sa.Table, Entry.__table__)
    with app.app_context():
        db.session.execute(sa.insert(table).values(text="core"))
        db.session.add(Entry(text="orm"))
        db.session.commit()
        assert db.session.scalars(sa.select(table.c.text).order_by("text")).all() == [
            "core",
            "orm",
        ]
        joined = sa.select(table.c.text).join_from(
            table, table.alias("e2"), table.c.id == sa.literal_column("e2.id")
        )
        assert len(db.session.scalars(joined).all()) == 2
        db.session.execute(sa.update(table).values(text="changed"))
        assert db.session.scalars(sa.select(Entry.text)).all() == ["changed"] * 2
        db.session.execute(sa.delete(table).where(table.c.id == 1))
        db.session.commit()
        assert count_rows(db.get_engine("other"), "entries") == 1
        assert not sa.inspect(db.engine).has_table("entries")


@pytest.mark.parametrize(
    ("model", "key"), [(Misspelt, "'othr'"), (Numbered, "2")], ids=["typo", "int"]
)
def test_unknown_key_in_a_single_bind_app(
    single_bind_app: Flask, model: type[TypoBase], key: str
) -> None:
    """An app with one bind does not ignore ``__bind_key__``: an unknown key
    is a KeyError naming the model, the key and the known keys, and nothing
    is written to the default database.
    """
    db = SessionExt(single_bind_app)
    with single_bind_app.app_context():
        TypoBase.metadata.create_all(db.engine)
        db.session.add(model())
        with pytest.raises(
            KeyError,
            match=rf"model '{model.__name__}' names the bind key {key}, which is"
            r" not configured; the known bind keys are None\.",
        ):
            db.session.commit()
        db.session.rollback()
        assert count_rows(db.engine, model.__tablename__) == 0


def test_unknown_key_in_a_multi_bind_app(app: Flask, db: SessionExt) -> None:
    """With several binds, ORM and Core statements on a model with an
    unknown key are a KeyError naming the model and the known keys.
    """
    message = r"model 'Misspelt'.* bind key 'othr'.* known bind keys are None, 'other'"
    with app.app_context():
        with pytest.raises(KeyError, match=message):
            db.session.scalars(sa.select(Misspelt)).all()
        with pytest.raises(KeyError, match=message):
            db.session.execute(sa.select(Misspelt.__table__.c.id))
        assert db.session.scalars(sa.select(User)).all() == []


def test_unknown_key_checked_at_start(single_bind_app: Flask) -> None:
    """A model of the extension's ``metadata`` with an unknown key fails
    ``init_app``, before any engine is made.
    """
    db = SessionExt(metadata=TypoBase.metadata)
    with pytest.raises(KeyError, match=r"model 'Misspelt' \(table 'misspelt'\)"):
        db.init_app(single_bind_app)
    assert "sessionext" not in single_bind_app.extensions
