"""Fixtures of the reliability tests: PostgreSQL databases and servers, and
the app under load.
"""

from __future__ import annotations

import os
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_sessionext import SessionExt

from ._webapp import MakeApp, QuietFlask, create_app
from _postgres import REQUIRE_ENV, PostgresServer, find_pg_bin


@pytest.fixture
def postgres_url(postgres: PostgresServer | None) -> str:
    """The URL of the ``reliability`` database of the session's server."""
    if postgres is None:
        pytest.skip("the PostgreSQL server binaries are not installed")
    return postgres.create_database("reliability")


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this module's own, which its tests may stop."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        if os.environ.get(REQUIRE_ENV):
            raise RuntimeError(
                "PostgreSQL server binaries not found; install the 'postgresql' package"
            )
        pytest.skip("the PostgreSQL server binaries are not installed")
    with PostgresServer(bin_dir) as server:
        yield server


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[MakeApp]:
    """:func:`create_app` for the test, whose engines are disposed after it."""
    apps: list[QuietFlask] = []

    def make(url: str, **config: t.Any) -> tuple[QuietFlask, SessionExt]:
        app, db = create_app(url, str(tmp_path / "instance"), **config)
        apps.append(app)
        return app, db

    yield make
    for app in apps:
        for engine in app.extensions["sessionext"].engines.values():
            engine.dispose()
