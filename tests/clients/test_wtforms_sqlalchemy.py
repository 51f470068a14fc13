"""WTForms-SQLAlchemy's ``model_form(User, db_session=db.session)`` made at
import time, and a ``QuerySelectField`` whose query uses ``db.session``.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

import pytest
import sqlalchemy as sa
from flask import Flask, request
from wtforms import Form
from wtforms_sqlalchemy.fields import QuerySelectField
from wtforms_sqlalchemy.orm import model_form

from ._shared import Commits, Team, User, db, names

# WTForms 3.3 deprecates the choice tuples that WTForms-SQLAlchemy 0.4's
# select fields still yield, when a form is rendered or validated.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Yielding raw tuples from iter_choices:DeprecationWarning"
)

UserForm = model_form(User, db_session=db.session)


def teams() -> list[Team]:
    """The choices of :class:`TeamChoiceForm`."""
    return list(db.session.scalars(sa.select(Team).order_by(Team.name)))


class TeamChoiceForm(Form):
    """A form with a hand-written ``QuerySelectField``."""

    team = QuerySelectField(query_factory=teams, get_label="name")


def create_app(config: Mapping[str, t.Any]) -> Flask:
    """An app whose views validate the forms and commit what they hold."""
    app = Flask(__name__)
    app.config.from_mapping(config)
    db.init_app(app)

    @app.post("/users")
    def add_user() -> tuple[str, int]:
        form = UserForm(request.form)
        if not form.validate():
            return str(form.errors), 400
        user = User()
        form.populate_obj(user)
        db.session.add(user)
        db.session.commit()
        return str(user.id), 201

    @app.post("/users/<int:user_id>/team")
    def set_team(user_id: int) -> tuple[str, int]:
        form = TeamChoiceForm(request.form)
        if not form.validate():
            return str(form.errors), 400
        user = db.get_or_404(User, user_id)
        user.team = form.team.data
        db.session.commit()
        return "", 204

    @app.get("/teams/choices")
    def team_choices() -> str:
        return str(TeamChoiceForm().team())

    return app


def test_model_form_creates_a_row(app: Flask, commits: Commits) -> None:
    """The model form, with its relationship field, adds a user in a team."""
    with app.app_context():
        db.session.add(Team(name="red"))
        db.session.commit()
        team_id = db.session.scalar(sa.select(Team.id))
    response = app.test_client().post(
        "/users", data={"name": "ada", "email": "ada@example.com", "team": team_id}
    )
    assert response.status_code == 201
    assert names(app, "client_users") == ["ada"]
    with app.app_context():
        user = db.session.get(User, int(response.text))
        assert user is not None
        assert user.team is not None
        assert user.team.name == "red"
    assert [[op for _, op in c] for c in commits] == [["insert"], ["insert"]]


def test_query_select_field(app: Flask, commits: Commits) -> None:
    """The ``QuerySelectField`` offers the teams of ``db.session``, accepts
    one of them, and refuses an id that is not among them.
    """
    with app.app_context():
        db.session.add_all(
            [Team(name="red"), Team(name="blue"), User(name="ada", email="a@b.c")]
        )
        db.session.commit()
        red = db.session.scalars(sa.select(Team).filter_by(name="red")).one()
        red_id, user_id = red.id, db.session.scalar(sa.select(User.id))
    client = app.test_client()
    choices = client.get("/teams/choices").text
    assert choices.index(">blue<") < choices.index(">red<")

    assert (
        client.post(f"/users/{user_id}/team", data={"team": "999"}).status_code == 400
    )
    assert len(commits) == 1

    response = client.post(f"/users/{user_id}/team", data={"team": str(red_id)})
    assert response.status_code == 204
    assert [[(type(obj).__name__, op) for obj, op in c] for c in commits[1:]] == [
        [("User", "update")]
    ]
    with app.app_context():
        user = db.session.get(User, user_id)
        assert user is not None
        assert user.team_id == red_id
