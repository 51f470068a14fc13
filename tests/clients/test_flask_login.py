"""Flask-Login's ``user_loader`` returning ``db.session.get(User, int(id))``:
``current_user`` lives in each request's own session.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

import sqlalchemy as sa
from flask import Flask, request
from flask_login import LoginManager, current_user, login_required, login_user

from ._shared import Commits, User, db, names

login_manager = LoginManager()


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """The user of the session cookie, from ``db.session``."""
    return db.session.get(User, int(user_id))


def create_app(config: Mapping[str, t.Any]) -> Flask:
    """An app with a login view and views that need a logged-in user."""
    app = Flask(__name__)
    app.config.from_mapping(config)
    db.init_app(app)
    login_manager.init_app(app)

    @app.post("/login")
    def login() -> tuple[str, int]:
        query = sa.select(User).filter_by(email=request.form["email"])
        user = db.session.scalars(query).first()
        if user is None:
            return "unknown user", 401
        login_user(user)
        return "logged in", 200

    @app.get("/me")
    @login_required
    def me() -> str:
        name: str = current_user.name
        return name

    @app.post("/me/name")
    @login_required
    def rename() -> tuple[str, int]:
        current_user.name = request.form["name"]
        db.session.commit()
        return "", 204

    return app


def test_login_and_login_required(app: Flask, commits: Commits) -> None:
    """A logged-in client's later requests load the user through the
    ``user_loader``, and a change to ``current_user`` commits.
    """
    with app.app_context():
        db.session.add(User(name="ada", email="ada@example.com"))
        db.session.commit()
    client = app.test_client()
    assert client.get("/me").status_code == 401
    assert client.post("/login", data={"email": "nobody@b.c"}).status_code == 401
    assert client.post("/login", data={"email": "ada@example.com"}).status_code == 200

    assert client.get("/me").text == "ada"
    assert client.post("/me/name", data={"name": "ada lovelace"}).status_code == 204
    assert client.get("/me").text == "ada lovelace"
    assert names(app, "client_users") == ["ada lovelace"]
    assert [[(type(obj).__name__, op) for obj, op in c] for c in commits] == [
        [("User", "insert")],
        [("User", "update")],
    ]
