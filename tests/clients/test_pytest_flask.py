"""pytest-flask's ``app`` and ``client`` fixtures with the ``sessionext``
plugin's ``sessionext_rollback``, in a pytest run of their own: pytest-flask
is off in this test suite (see ``addopts`` in ``pyproject.toml``), because it
pushes a request context for every test that uses a fixture named ``app``.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

import pytest
import sqlalchemy as sa
from flask import Flask

from ._shared import User, db, names


def create_app(config: Mapping[str, t.Any]) -> Flask:
    """An app that adds users, committing at once or leaving the commit to
    ``SESSIONEXT_COMMIT_ON_TEARDOWN``, and lists them.
    """
    app = Flask(__name__)
    app.config.from_mapping(config)
    db.init_app(app)

    @app.post("/users/<name>")
    def add_user(name: str) -> tuple[str, int]:
        db.session.add(User(name=name, email=f"{name}@example.com"))
        if not app.config.get("SESSIONEXT_COMMIT_ON_TEARDOWN"):
            db.session.commit()
        return "created", 201

    @app.get("/users")
    def list_users() -> list[str]:
        return list(db.session.scalars(sa.select(User.name).order_by(User.id)))

    return app


CONFTEST = """
import pytest

from clients.test_pytest_flask import create_app


@pytest.fixture
def app():
    return create_app({config!r})


@pytest.fixture(autouse=True)
def _rollback(sessionext_rollback):
    pass
"""

TESTS = """
import pytest
from flask import url_for

from flask_sessionext.signals import models_committed


def test_add_user(client):
    sent = []
    with models_committed.connected_to(lambda app, changes: sent.append(changes)):
        assert client.post(url_for("add_user", name="ada")).status_code == 201
        assert client.post(url_for("add_user", name="grace")).status_code == 201
    assert client.get("/users").json == ["ada", "grace"]
    assert len(sent) == {commits}


def test_add_only(client):
    assert client.post("/users/lin").status_code == 201


def test_each_test_starts_empty(client):
    assert client.get("/users").json == []
    assert client.post("/users/lin").status_code == 201
    assert client.get("/users").json == ["lin"]
"""


def run_pytest_flask(
    pytester: pytest.Pytester, config: dict[str, t.Any], commits: int
) -> pytest.RunResult:
    """Run the tests above with pytest-flask, on an app made with ``config``."""
    pytester.makeconftest(CONFTEST.format(config=config))
    pytester.makepyfile(test_with_pytest_flask=TESTS.format(commits=commits))
    # pytest-flask's plugin loads through its entry point, as in a project
    # that installs it; the tests use its ``client`` and its request context.
    return pytester.runpytest("-p", "no:cacheprovider")


def test_client_in_rollback(
    app: Flask, config: dict[str, t.Any], pytester: pytest.Pytester
) -> None:
    """Requests of pytest-flask's ``client`` commit inside the test, and
    nothing of it is left after the test.
    """
    result = run_pytest_flask(pytester, config, commits=2)
    result.assert_outcomes(passed=3)
    assert names(app, "client_users") == []


def test_client_in_rollback_commit_on_teardown(
    app: Flask, config: dict[str, t.Any], pytester: pytest.Pytester
) -> None:
    """With ``SESSIONEXT_COMMIT_ON_TEARDOWN``, all requests of a test share
    pytest-flask's app context, so their session, and the commit comes at the
    end of the test: nothing of it is left after the test.
    """
    config = {**config, "SESSIONEXT_COMMIT_ON_TEARDOWN": True}
    result = run_pytest_flask(pytester, config, commits=0)
    result.assert_outcomes(passed=3)
    assert names(app, "client_users") == []
