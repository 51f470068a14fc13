"""marshmallow-sqlalchemy's ``SQLAlchemyAutoSchema`` with
``sqla_session = db.session`` in its ``Meta``, loading new and existing rows.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

from flask import Flask, request
from marshmallow import ValidationError
from marshmallow_sqlalchemy import SQLAlchemyAutoSchema

from ._shared import Commits, User, db, names


# marshmallow-sqlalchemy 1.x types its model parameter as a subclass of the
# legacy DeclarativeMeta, which no DeclarativeBase model is, and leaves the
# schema's __init__ untyped.
class UserSchema(SQLAlchemyAutoSchema[t.Any]):
    """The schema of :class:`User`, loading instances in ``db.session``."""

    class Meta:
        model = User
        load_instance = True
        sqla_session = db.session


user_schema = UserSchema()  # type: ignore[no-untyped-call]


def create_app(config: Mapping[str, t.Any]) -> Flask:
    """An app with a JSON API built on the schema."""
    app = Flask(__name__)
    app.config.from_mapping(config)
    db.init_app(app)

    @app.post("/users")
    def add_user() -> tuple[dict[str, t.Any], int]:
        try:
            user = user_schema.load(request.get_json())
        except ValidationError as e:
            return {"errors": e.messages}, 422
        db.session.add(user)
        db.session.commit()
        return user_schema.dump(user), 201

    @app.patch("/users/<int:user_id>")
    def update_user(user_id: int) -> dict[str, t.Any]:
        user = user_schema.load({**request.get_json(), "id": user_id}, partial=True)
        db.session.commit()
        return t.cast("dict[str, t.Any]", user_schema.dump(user))

    return app


def test_load_add_commit(app: Flask, commits: Commits) -> None:
    """A loaded instance is added and committed, and dumped with its id."""
    client = app.test_client()
    response = client.post("/users", json={"name": "ada", "email": "ada@example.com"})
    assert response.status_code == 201
    assert response.json == {"id": 1, "name": "ada", "email": "ada@example.com"}
    assert names(app, "client_users") == ["ada"]
    assert [[op for _, op in c] for c in commits] == [["insert"]]


def test_refused_load_commits_nothing(app: Flask, commits: Commits) -> None:
    """Data that the schema refuses commits nothing."""
    response = app.test_client().post("/users", json={"name": "ada"})
    assert response.status_code == 422
    assert response.json == {"errors": {"email": ["Missing data for required field."]}}
    assert names(app, "client_users") == []
    assert commits == []


def test_load_existing_row_by_key(app: Flask, commits: Commits) -> None:
    """Loading data with an existing primary key updates that row."""
    with app.app_context():
        db.session.add(User(name="ada", email="ada@example.com"))
        db.session.commit()
    response = app.test_client().patch("/users/1", json={"name": "ada lovelace"})
    assert response.json == {
        "id": 1,
        "name": "ada lovelace",
        "email": "ada@example.com",
    }
    assert names(app, "client_users") == ["ada lovelace"]
    assert [[(type(obj).__name__, op) for obj, op in c] for c in commits] == [
        [("User", "insert")],
        [("User", "update")],
    ]
