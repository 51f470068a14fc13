"""factory_boy's ``SQLAlchemyModelFactory`` with ``sqlalchemy_session =
db.session`` or ``sqlalchemy_session_factory``, committing, inside the
``sessionext_rollback`` fixture: the rows are there during the test and gone
after it.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator, Mapping

import factory
import pytest
import sqlalchemy as sa
from factory.alchemy import SQLAlchemyModelFactory
from flask import Flask

from ._shared import Commits, Team, User, db, names


class TeamFactory(SQLAlchemyModelFactory):
    """Teams, in the session that ``sqlalchemy_session_factory`` returns."""

    class Meta:
        model = Team
        sqlalchemy_session_factory = db.session
        sqlalchemy_session_persistence = "commit"

    name = factory.Sequence(lambda n: f"team {n}")


class UserFactory(SQLAlchemyModelFactory):
    """Users in a team, in ``db.session``."""

    class Meta:
        model = User
        sqlalchemy_session = db.session
        sqlalchemy_session_persistence = "commit"

    name = factory.Sequence(lambda n: f"user {n}")
    email = factory.LazyAttribute(lambda user: f"{user.name.replace(' ', '')}@b.c")
    team = factory.SubFactory(TeamFactory)


def create_app(config: Mapping[str, t.Any]) -> Flask:
    """A bare app with the extension."""
    app = Flask(__name__)
    app.config.from_mapping(config)
    db.init_app(app)
    return app


@pytest.fixture
def rows_gone_after(app: Flask) -> Iterator[None]:
    """After the test and its rollback, no row is left in either table, as a
    connection of its own sees them.
    """
    yield
    assert names(app, "client_users") == []
    assert names(app, "client_teams") == []


@pytest.mark.usefixtures("rows_gone_after", "sessionext_rollback")
def test_factories_commit_and_are_rolled_back(app: Flask, commits: Commits) -> None:
    """Each factory call commits its rows, which the test sees; a user's
    team is committed by its sub-factory first.
    """
    with app.app_context():
        users = UserFactory.create_batch(2)
        team = TeamFactory.create()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 2
        teams = db.session.scalars(sa.select(Team).order_by(Team.id)).all()
        assert teams == [users[0].team, users[1].team, team]
    assert [sorted(type(obj).__name__ for obj, _ in c) for c in commits] == [
        ["Team"],
        ["User"],
        ["Team"],
        ["User"],
        ["Team"],
    ]
