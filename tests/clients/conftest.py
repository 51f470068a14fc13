"""The ``app`` fixture of the client tests: the test module's own
``create_app(config)`` factory on the parametrized database, with the tables
of :mod:`._shared` created for the test and dropped after it.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator, Mapping

import pytest
from flask import Flask

from flask_sessionext.signals import models_committed

from ._shared import Base, Commits


class CreateApp(t.Protocol):
    """The application factory that each test module defines."""

    def __call__(self, config: Mapping[str, t.Any]) -> Flask: ...


@pytest.fixture
def config(database_uris: dict[str | None, str]) -> dict[str, t.Any]:
    """The configuration handed to the test module's ``create_app``."""
    return {
        "TESTING": True,
        "SECRET_KEY": "client-tests",
        "SESSIONEXT_DATABASE_URI": database_uris[None],
    }


@pytest.fixture
def app(request: pytest.FixtureRequest, config: dict[str, t.Any]) -> Iterator[Flask]:
    """The app that the test module's ``create_app`` makes, with the tables
    created, and dropped and the engines disposed after the test.
    """
    create_app: CreateApp = request.module.create_app
    app = create_app(config)
    engine = app.extensions["sessionext"].engines[None]
    Base.metadata.create_all(engine)
    yield app
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def commits(app: Flask) -> Iterator[Commits]:
    """The ``changes`` of each ``models_committed`` that ``app`` sends."""
    sent: Commits = []

    def receiver(sender: Flask, changes: list[tuple[object, str]]) -> None:
        sent.append(changes)

    with models_committed.connected_to(receiver, sender=app):
        yield sent
