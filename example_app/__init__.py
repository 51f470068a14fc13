"""A small notes board that shows Flask-SessionExt at work.

Run it with ``flask --app example_app run``; it keeps its data in
``instance/app.sqlite3`` unless ``SESSIONEXT_DATABASE_URI`` says otherwise.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Flask, redirect, render_template, request, url_for
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.wrappers import Response

from flask_sessionext import SessionExt

db = SessionExt()


class Base(DeclarativeBase):
    """The example's models."""


class Note(Base):
    """A note on the board."""

    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200))
    done: Mapped[bool] = mapped_column(default=False)


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """The application factory."""
    app = Flask(__name__)
    app.config.from_prefixed_env()  # e.g. FLASK_SESSIONEXT_DATABASE_URI=...
    app.config.update(config or {})
    db.init_app(app)
    with app.app_context():
        Base.metadata.create_all(db.engine)
        if db.session.scalar(sa.select(sa.func.count(Note.id))) == 0:
            db.session.add_all(
                [Note(text="Try Flask-SessionExt"), Note(text="Read the README")]
            )
            db.session.commit()

    @app.get("/")
    def index() -> str:
        notes = db.session.scalars(sa.select(Note).order_by(Note.id)).all()
        return render_template("index.html", notes=notes)

    @app.post("/notes")
    def create() -> Response:
        with db.transaction():
            db.session.add(Note(text=request.form["text"][:200]))
        return redirect(url_for("index"))

    @app.post("/notes/<int:ident>/toggle")
    def toggle(ident: int) -> Response:
        with db.transaction():
            note = db.get_or_404(Note, ident)
            note.done = not note.done
        return redirect(url_for("index"))

    return app
