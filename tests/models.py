"""The mapped classes that every test module shares."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Models of the default bind."""


class User(Base):
    """A row in the default database."""

    __tablename__ = "users"
    # Ids are never reused, so a row's id names one instance for good.
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    active: Mapped[bool] = mapped_column(default=True)


class OtherBase(DeclarativeBase):
    """Models of the ``other`` bind, routed by their metadata."""

    metadata = sa.MetaData(info={"bind_key": "other"})


class Item(OtherBase):
    """A row in the ``other`` database."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(50))


class AuditBase(DeclarativeBase):
    """Models of the ``other`` bind, routed by ``__bind_key__``."""

    __bind_key__ = "other"


class Entry(AuditBase):
    """An audit row in the ``other`` database."""

    __tablename__ = "entries"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(50))
