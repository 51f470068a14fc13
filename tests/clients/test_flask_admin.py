"""Flask-Admin's ``ModelView(User, db.session)``, added in the application
factory, lists, creates, edits and deletes rows through its HTML forms.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_admin import Admin
from flask_admin.contrib.sqla import ModelView

from ._shared import Commits, Team, User, db, names

# Flask-Admin 2.2 deprecates passing a session: it wants a Flask-SQLAlchemy
# (or -Lite) db object for ModelView(User, db), and recognises no other, so
# ModelView(User, db.session) is the form that works with this extension.
# WTForms 3.3 deprecates the choice tuples that Flask-Admin's select fields
# still yield, when a form is rendered: between those two libraries.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Passing a session object directly is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Yielding raw tuples from iter_choices:DeprecationWarning"
    ),
]


def create_app(config: Mapping[str, t.Any]) -> Flask:
    """The application factory, as Flask-Admin's documentation shows it."""
    app = Flask(__name__)
    app.config.from_mapping(config)
    db.init_app(app)
    admin = Admin(app, name="clients")
    admin.add_view(ModelView(Team, db.session))
    admin.add_view(ModelView(User, db.session))
    return app


def test_create_list_edit_delete(app: Flask, commits: Commits) -> None:
    """Each form that Flask-Admin accepts commits one change, and the list
    view shows the rows.
    """
    client = app.test_client()
    response = client.post("/admin/team/new/", data={"name": "red"})
    assert response.status_code == 302
    response = client.post(
        "/admin/user/new/", data={"name": "ada", "email": "ada@example.com"}
    )
    assert response.status_code == 302
    assert names(app, "client_users") == ["ada"]

    listing = client.get("/admin/user/")
    assert listing.status_code == 200
    assert b"ada@example.com" in listing.data

    with app.app_context():
        user_id = db.session.scalar(sa.select(User.id))
        team_id = db.session.scalar(sa.select(Team.id))
    response = client.post(
        f"/admin/user/edit/?id={user_id}",
        data={"name": "ada lovelace", "email": "ada@example.com", "team": team_id},
    )
    assert response.status_code == 302
    assert names(app, "client_users") == ["ada lovelace"]
    with app.app_context():
        user = db.session.get(User, user_id)
        assert user is not None
        assert user.team is not None
        assert user.team.name == "red"

    response = client.post("/admin/user/delete/", data={"id": str(user_id)})
    assert response.status_code == 302
    assert names(app, "client_users") == []
    assert [[(type(obj).__name__, op) for obj, op in c] for c in commits] == [
        [("Team", "insert")],
        [("User", "insert")],
        [("User", "update")],
        [("User", "delete")],
    ]


def test_refused_form_commits_nothing(app: Flask, commits: Commits) -> None:
    """A form that a validator refuses is shown again and commits nothing."""
    client = app.test_client()
    response = client.post("/admin/user/new/", data={"name": "", "email": "x@y.z"})
    assert response.status_code == 200
    assert b"This field is required." in response.data
    assert names(app, "client_users") == []
    assert commits == []
