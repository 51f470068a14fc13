"""The database password appears nowhere: not in logs at DEBUG with echo on,
recorded queries, reprs, debug error pages or ``flask sessionext check``.
"""

from __future__ import annotations

import logging
import traceback
import typing as t
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.debug import DebuggedApplication
from werkzeug.test import Client

from flask_sessionext import SessionExt
from flask_sessionext.cli import cli

from ._webapp import free_port
from _postgres import APP_PASSWORD, APP_ROLE, PostgresServer
from models import Base, User

#: The password of a bind that connects with the wrong one.
WRONG_PASSWORD = "wr0ng-pw-x7"
SECRETS = (APP_PASSWORD, WRONG_PASSWORD)


def leaked(text: str) -> list[str]:
    """The secrets that ``text`` quotes."""
    return [secret for secret in SECRETS if secret in text]


@pytest.fixture
def secret_app(
    postgres: PostgresServer | None, tmp_path: Path
) -> Iterator[tuple[Flask, SessionExt]]:
    """An app on PostgreSQL with a password, a bind whose password is wrong
    and one whose server is down (its URL has the password too), with echo,
    recording and slow-query reports on.
    """
    if postgres is None:
        pytest.skip("the PostgreSQL server binaries are not installed")
    url = sa.make_url(postgres.url())
    app = Flask("secrets", instance_path=str(tmp_path / "instance"))
    app.config.update(
        SESSIONEXT_DATABASE_URI=postgres.url(),
        SESSIONEXT_BINDS={
            "wrong": url.set(password=WRONG_PASSWORD),
            "down": url.set(port=free_port()),
        },
        SESSIONEXT_ECHO=True,
        SESSIONEXT_ENGINE_OPTIONS={"echo_pool": "debug"},
        SESSIONEXT_RECORD_QUERIES=True,
        SESSIONEXT_RECORD_PARAMETERS=True,
        SESSIONEXT_SLOW_QUERY_THRESHOLD=0,
        SESSIONEXT_SERVER_TIMING=True,
    )
    db = SessionExt(app)
    engines = app.extensions["sessionext"].engines

    @app.post("/users/<name>")
    def add(name: str) -> str:
        with db.transaction() as session:
            session.add(User(name=name))
        return "added"

    @app.post("/users/<int:ident>/again")
    def add_again(ident: int) -> str:
        with db.transaction() as session:
            session.add(User(id=ident, name="again"))  # IntegrityError
        return "added"

    @app.get("/users")
    def names() -> dict[str, t.Any]:
        found = db.session.scalars(sa.select(User.name)).all()
        return {"names": found, "queries": repr(db.get_recorded_queries())}

    @app.get("/binds/<key>")
    def ping(key: str) -> str:
        bind = db.get_engine(key)
        return str(
            db.session.execute(sa.select(1), bind_arguments={"bind": bind}).scalar()
        )

    Base.metadata.create_all(engines[None])
    yield app, db
    Base.metadata.drop_all(engines[None])
    for engine in engines.values():
        engine.dispose()


def request_cycle(app: Flask) -> list[int]:
    """A write, a read, a failing commit and the two failing binds."""
    client = app.test_client()
    return [
        client.post("/users/ada").status_code,
        client.get("/users").status_code,
        client.post("/users/1/again").status_code,
        client.get("/binds/wrong").status_code,
        client.get("/binds/down").status_code,
    ]


@contextmanager
def every_logger_at_debug() -> Iterator[list[logging.LogRecord]]:
    """Collect the records of every logger at DEBUG; restore the loggers'
    levels and handlers afterwards.
    """
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(logging.DEBUG)
    manager = logging.root.manager
    loggers = [
        logging.root,
        *(v for v in manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    saved = [
        (logger, logger.level, logger.disabled, list(logger.handlers))
        for logger in loggers
    ]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        if logger is logging.root or not logger.propagate:
            logger.addHandler(keep)
    try:
        yield records
    finally:
        for logger, level, disabled, handlers in saved:
            logger.setLevel(level)
            logger.disabled = disabled
            logger.handlers[:] = handlers
        for new in manager.loggerDict.values():
            if isinstance(new, logging.Logger) and new not in loggers:
                new.handlers[:] = [h for h in new.handlers if h is not keep]


def test_no_password_in_logs(
    secret_app: tuple[Flask, SessionExt], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every logger at DEBUG, with echo on, through a request cycle with a
    commit, a failing commit and failing connections: no record, traceback
    or output quotes a password.
    """
    app, _ = secret_app
    with every_logger_at_debug() as records:
        assert request_cycle(app) == [200, 200, 500, 500, 500]
    formatter = logging.Formatter()
    texts = [formatter.format(record) + repr(record.args) for record in records]
    assert len(texts) > 20
    assert any("INSERT INTO users" in text for text in texts)  # echo was on
    assert any("password authentication failed" in text for text in texts)
    assert [text for text in texts if leaked(text)] == []
    out, err = capsys.readouterr()
    assert leaked(out + err) == []


def test_no_password_in_recorded_queries_or_reprs(
    secret_app: tuple[Flask, SessionExt],
) -> None:
    """Recorded queries, with parameters, and the reprs of the extension,
    its state and its engines quote no password.
    """
    app, db = secret_app
    response = app.test_client().get("/users")
    assert "SELECT" in response.json["queries"]  # type: ignore[index]
    with app.app_context():
        db.session.execute(sa.select(User).where(User.name == "x")).all()
        with pytest.raises(sa.exc.OperationalError, match="password authentication"):
            db.session.execute(
                sa.select(1), bind_arguments={"bind": db.get_engine("wrong")}
            )
        records = db.get_recorded_queries()
        texts = [repr(records), *(str(value) for r in records for value in vars_of(r))]
        texts += [repr(db), repr(app.extensions), repr(dict(db.engines))]
        texts += [str(engine.url) for engine in db.engines.values()]
    assert records
    assert [text for text in texts if leaked(text)] == []


def vars_of(record: object) -> list[object]:
    """The field values of a (slotted) dataclass instance."""
    return [getattr(record, name) for name in record.__dataclass_fields__]  # type: ignore[attr-defined]


@pytest.mark.parametrize("bind", ["wrong", "down"])
def test_no_password_in_debug_error_pages(
    secret_app: tuple[Flask, SessionExt], bind: str
) -> None:
    """In debug mode an OperationalError of a bind whose URL has a password
    shows no password: not in Flask's error page, not in the Werkzeug
    debugger's traceback page, not in the traceback the server would print.
    """
    app, _ = secret_app
    app.debug = True

    with pytest.raises(sa.exc.OperationalError, match="connection failed") as info:
        app.test_client().get(f"/binds/{bind}")
    assert leaked("".join(traceback.format_exception(info.value))) == []

    debugger = Client(DebuggedApplication(app, evalex=True))
    page = debugger.get(f"/binds/{bind}")
    assert page.status_code == 500
    assert "OperationalError" in page.text
    assert leaked(page.text) == []

    app.config["PROPAGATE_EXCEPTIONS"] = False
    page = app.test_client().get(f"/binds/{bind}")
    assert page.status_code == 500
    assert leaked(page.text) == []


def test_no_password_in_check_command(secret_app: tuple[Flask, SessionExt]) -> None:
    """``flask sessionext check`` reports the failing binds and quotes no
    password.
    """
    if "check" not in cli.commands:
        pytest.skip("'flask sessionext check' is not there yet")
    app, _ = secret_app
    result = app.test_cli_runner().invoke(args=["sessionext", "check"])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 1
    assert f"{APP_ROLE}:***@" in output
    assert "bind 'wrong'" in output
    assert "bind 'down'" in output
    assert leaked(output) == []
