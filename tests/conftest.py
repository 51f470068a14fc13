from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# pytester restores sys.modules after each of its tests, dropping modules
# first imported during one; imported again later, SQLAlchemy's PostgreSQL
# dialect registers its SQL functions twice and warns. Import it up front.
import sqlalchemy.dialects.postgresql  # noqa: F401
from flask import Flask
from flask.ctx import AppContext

from flask_sessionext import SessionExt

from _postgres import PostgresServer, start_for_session
from models import AuditBase, Base, OtherBase

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer | None]:
    """One throwaway PostgreSQL server per test session (per xdist worker)."""
    server = start_for_session()
    yield server
    if server is not None:
        server.close()


@pytest.fixture(scope="session")
def postgres_other(postgres: PostgresServer | None) -> str | None:
    """The URL of a second PostgreSQL database, for the ``other`` bind."""
    return None if postgres is None else postgres.create_database("other")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    """The name of the database the test runs on."""
    name: str = request.param
    if name == "postgresql" and request.getfixturevalue("postgres") is None:
        pytest.skip("the PostgreSQL server binaries are not installed")
    return name


@pytest.fixture
def database_uris(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str | None, str]:
    """URLs of the default bind (key ``None``) and the ``other`` bind."""
    if database == "sqlite":
        return {
            None: f"sqlite:///{tmp_path / 'default.sqlite3'}",
            "other": f"sqlite:///{tmp_path / 'other.sqlite3'}",
        }
    server: PostgresServer = request.getfixturevalue("postgres")
    other: str = request.getfixturevalue("postgres_other")
    return {None: server.url(), "other": other}


@pytest.fixture
def app(database_uris: dict[str | None, str], tmp_path: Path) -> Flask:
    """A Flask app configured for the parametrized database."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True,
        SESSIONEXT_DATABASE_URI=database_uris[None],
        SESSIONEXT_BINDS={"other": database_uris["other"]},
    )
    return app


@pytest.fixture
def db(app: Flask) -> Iterator[SessionExt]:
    """The extension on ``app``, with the test tables created, and dropped
    and the engines disposed after the test.
    """
    db = SessionExt(app)
    engines = app.extensions["sessionext"].engines
    Base.metadata.create_all(engines[None])
    OtherBase.metadata.create_all(engines["other"])
    AuditBase.metadata.create_all(engines["other"])
    yield db
    for metadata, key in ((Base.metadata, None), (OtherBase.metadata, "other")):
        metadata.drop_all(engines[key])
    AuditBase.metadata.drop_all(engines["other"])
    for engine in engines.values():
        engine.dispose()


@pytest.fixture
def app_ctx(app: Flask, db: SessionExt) -> Iterator[AppContext]:
    """An application context pushed for the test."""
    with app.app_context() as ctx:
        yield ctx
