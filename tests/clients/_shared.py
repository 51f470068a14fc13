"""The extension and the models that the client libraries are tested with:
a module-level ``db`` and plain SQLAlchemy models, as an application has them.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Flask
from flask_login import UserMixin
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from flask_sessionext import SessionExt


class Base(DeclarativeBase):
    """The declarative base of the client tests' models."""


class Team(Base):
    """A team that users belong to."""

    __tablename__ = "client_teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)

    def __str__(self) -> str:
        return self.name


# Flask-Login ships no types, so its mixin is Any to mypy.
class User(UserMixin, Base):  # type: ignore[misc]
    """A user, optionally in a team, who can log in with Flask-Login."""

    __tablename__ = "client_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    email: Mapped[str] = mapped_column(sa.String(100))
    team_id: Mapped[int | None] = mapped_column(sa.ForeignKey("client_teams.id"))
    team: Mapped[Team | None] = relationship()


db = SessionExt(metadata=Base.metadata)

#: What a receiver of ``models_committed`` got: one list of changes per commit.
Commits = list[list[tuple[object, str]]]


def names(app: Flask, table: str) -> list[str]:
    """The ``name`` column of ``table``'s rows, ordered by id, read on a
    connection of the app's engine that no session uses.
    """
    engine: sa.Engine = app.extensions["sessionext"].engines[None]
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT name FROM {table} ORDER BY id"))
        return [row[0] for row in rows]
