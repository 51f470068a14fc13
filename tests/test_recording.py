"""Query recording, slow-query reports, Server-Timing and ``flask sessionext check``."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
import subprocess
import sys
import threading
import typing as t
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask, Response, stream_with_context
from flask.ctx import AppContext

from flask_sessionext import QueryRecord, SessionExt, signals
from flask_sessionext._features.recording import (
    CONTEXT_PARAMETER_BYTES,
    PARAMETER_LENGTH,
)
from flask_sessionext.testing import capture_signal, rollback

from _postgres import APP_PASSWORD, PostgresServer
from models import Item, User

Config = dict[str, t.Any]

#: A statement that really takes a while: 0.1 s on PostgreSQL, a million
#: rows of a recursive CTE on SQLite.
SLOW = {
    "postgresql": "SELECT pg_sleep(0.1)",
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
    " WHERE x < 1000000) SELECT count(*) FROM c",
}
SLOW_THRESHOLD = 0.05
TIMING_RE = re.compile(r'db;dur=(\d+\.\d);desc="(\d+) quer(?:y|ies)"')


@pytest.fixture
def config() -> Config:
    """Configuration keys a test sets before ``init_app`` reads them."""
    return {}


@pytest.fixture
def app(app: Flask, config: Config) -> Flask:
    """The app of conftest (testing, so recording is on) with ``config``."""
    app.config.update(config)
    return app


def here() -> int:
    """The line number of the caller's next line."""
    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno + 1


def plain_app(
    tmp_path: Path, config: Config, root_path: str | None = None
) -> tuple[Flask, SessionExt]:
    """An app on in-memory SQLite with ``config``, outside conftest's."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"), root_path=root_path)
    app.config.update(SESSIONEXT_DATABASE_URI="sqlite://", **config)
    return app, SessionExt(app)


def test_records_every_bind_in_order(app_ctx: AppContext, db: SessionExt) -> None:
    """Queries of the session on both binds, of a session_scope() session and
    of plain connections are recorded in order, with their bind and a
    positive duration.
    """
    db.session.execute(sa.select(User.id))
    db.session.execute(sa.select(Item.id))
    with db.session_scope() as session:
        session.execute(sa.select(User.name))
    with db.engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    with db.get_engine("other").connect() as conn:
        conn.execute(sa.text("SELECT 2"))

    records = db.get_recorded_queries()
    assert [(r.statement.split("FROM")[-1].strip(), r.bind_key) for r in records] == [
        ("users", None),
        ("items", "other"),
        ("users", None),
        ("SELECT 1", None),
        ("SELECT 2", "other"),
    ]
    for record in records:
        assert isinstance(record, QueryRecord)
        assert record.duration > 0
        assert record.end_time - record.start_time == record.duration
    assert [r.start_time for r in records] == sorted(r.start_time for r in records)
    assert db.dropped_query_count == 0


def test_location_is_the_calling_line(app_ctx: AppContext, db: SessionExt) -> None:
    """A record's location is the test's own line, relative to the app's
    root path, through scoped_session, transaction() and contextlib.
    """
    name = "test_location_is_the_calling_line"
    select_line = here()
    db.session.execute(sa.select(User.id))
    commit_line = here()
    with db.transaction():  # the INSERT runs in the commit, in __exit__
        db.session.add(User(name="a"))
    locations = [r.location for r in db.get_recorded_queries()]
    assert locations[0] == f"test_recording.py:{select_line} ({name})"
    assert locations[-1] == f"test_recording.py:{commit_line} ({name})"
    assert Path(app_ctx.app.root_path) == Path(__file__).parent


def test_location_outside_root_path_is_absolute(tmp_path: Path) -> None:
    """Code outside the app's root path is located by its absolute path."""
    app, db = plain_app(tmp_path, {"SESSIONEXT_RECORD_QUERIES": True}, str(tmp_path))
    with app.app_context():
        line = here()
        db.session.execute(sa.text("SELECT 1"))
        (record,) = db.get_recorded_queries()
        engine = db.engine
    engine.dispose()
    expected = f"{os.path.abspath(__file__)}:{line}"
    assert (
        record.location == f"{expected} (test_location_outside_root_path_is_absolute)"
    )


@pytest.mark.parametrize(
    "config",
    [{"SESSIONEXT_RECORD_PARAMETERS": True}, {"SESSIONEXT_RECORD_PARAMETERS": False}],
    ids=["parameters", "no-parameters"],
)
def test_parameters_by_config(
    app_ctx: AppContext, db: SessionExt, config: Config
) -> None:
    """Parameters are kept only with SESSIONEXT_RECORD_PARAMETERS."""
    db.session.execute(sa.select(User).where(User.name == "needle"))
    (record,) = db.get_recorded_queries()
    if config["SESSIONEXT_RECORD_PARAMETERS"]:
        values = record.parameters
        values = values.values() if isinstance(values, dict) else values
        assert "needle" in values
    else:
        assert record.parameters is None


@pytest.mark.parametrize("config", [{"SESSIONEXT_RECORD_PARAMETERS": True}])
def test_records_hold_plain_values(app_ctx: AppContext, db: SessionExt) -> None:
    """A record holds strings, numbers and the parameters: no password, no
    connection, cursor or context of the driver.
    """
    db.session.execute(sa.select(User).where(User.id == 5))
    (record,) = db.get_recorded_queries()
    values = dataclasses.astuple(record)
    assert {type(v) for v in values} <= {str, float, tuple, dict, type(None)}
    assert APP_PASSWORD not in repr(record)
    with pytest.raises(dataclasses.FrozenInstanceError, match="statement"):
        record.statement = "changed"  # type: ignore[misc]


def test_defaults_follow_debug_and_testing(tmp_path: Path) -> None:
    """Recording is on with app.testing or app.debug, parameters only with
    app.debug, and no app installs a cursor listener for it.
    """
    for config, records, parameters in (
        ({"TESTING": True}, 1, False),
        ({"DEBUG": True}, 1, True),
        ({}, 0, False),
    ):
        app, db = plain_app(tmp_path, config)
        with app.app_context():
            db.session.execute(sa.select(sa.literal(7)))
            recorded = db.get_recorded_queries()
            assert len(recorded) == records
            assert all((r.parameters is not None) is parameters for r in recorded)
            assert len(db.engine.dispatch.after_cursor_execute) == 0
            assert db.engine._has_events is False
            engine = db.engine
        engine.dispose()


@pytest.mark.parametrize("config", [{"SESSIONEXT_RECORD_QUERIES_LIMIT": 3}])
def test_limit_keeps_newest(app: Flask, db: SessionExt) -> None:
    """The limit keeps the newest records of each app context and counts the
    dropped ones.
    """
    with app.app_context():
        for i in range(5):
            db.session.execute(sa.text(f"SELECT {i}"))
        assert [r.statement for r in db.get_recorded_queries()] == [
            "SELECT 2",
            "SELECT 3",
            "SELECT 4",
        ]
        assert db.dropped_query_count == 2
        with app.app_context():
            assert db.get_recorded_queries() == []
            assert db.dropped_query_count == 0
    with app.app_context():
        assert db.get_recorded_queries() == []


@pytest.mark.parametrize("config", [{"SESSIONEXT_RECORD_PARAMETERS": True}])
def test_executemany_is_one_query(app_ctx: AppContext, db: SessionExt) -> None:
    """An executemany is one record, holding every parameter set."""
    with db.engine.begin() as conn:
        conn.execute(sa.insert(User), [{"name": "a"}, {"name": "b"}, {"name": "c"}])
    (record,) = db.get_recorded_queries()
    assert record.statement.startswith("INSERT INTO users")
    assert len(record.parameters) == 3


def test_begin_is_not_a_query(app_ctx: AppContext, db: SessionExt) -> None:
    """A transaction's BEGIN (the SQLite fix's, on SQLite) is not recorded."""
    with db.transaction():
        db.session.add(User(name="a"))
    (record,) = db.get_recorded_queries()
    assert record.statement.startswith("INSERT INTO users")


def test_dialect_setup_is_not_a_query(
    database_uris: dict[str | None, str], tmp_path: Path
) -> None:
    """The dialect's own queries at an engine's first connection (server
    version, settings) are not recorded, and later queries are.
    """
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(SESSIONEXT_DATABASE_URI=database_uris[None], TESTING=True)
    db = SessionExt(app)
    with app.app_context():
        db.session.execute(sa.text("SELECT 1"))
        db.session.execute(sa.text("SELECT 2"))
        statements = [r.statement for r in db.get_recorded_queries()]
        engine = db.engine
    engine.dispose()
    assert statements == ["SELECT 1", "SELECT 2"]


def test_no_record_outside_the_app_context(app: Flask, db: SessionExt) -> None:
    """Queries with no app context, on a thread without one, or in another
    app's context are not recorded, and raise nothing.
    """
    with app.app_context():
        engine = db.engine
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1

    def run() -> None:
        with engine.connect() as conn:
            results.append(conn.execute(sa.text("SELECT 2")).scalar())

    results: list[object] = []
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert results == [2]
    with Flask("other").app_context(), engine.connect() as conn:
        conn.execute(sa.text("SELECT 3"))
    with app.app_context():
        assert db.get_recorded_queries() == []


def test_recorded_in_rollback_block(app: Flask, db: SessionExt) -> None:
    """Queries inside testing.rollback() are recorded like any other."""
    with rollback(app), app.app_context():
        db.session.add(User(name="a"))
        db.session.commit()
        statements = [r.statement for r in db.get_recorded_queries()]
    assert any(s.startswith("INSERT INTO users") for s in statements)


def test_get_recorded_queries_outside_app_context(db: SessionExt) -> None:
    """Reading the records needs an app context, as the session does."""
    with pytest.raises(RuntimeError, match=r"app\.app_context"):
        db.get_recorded_queries()


@pytest.mark.parametrize(
    "config",
    [
        {
            "SESSIONEXT_SLOW_QUERY_THRESHOLD": 0,
            "SESSIONEXT_SERVER_TIMING": True,
            "SESSIONEXT_RECORD_QUERIES": True,
        }
    ],
)
def test_no_cursor_listener_for_any_feature(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """Recording, slow queries and Server-Timing install no cursor listener
    (the engine stays off SQLAlchemy's per-statement event path); a receiver
    of the application gets its one listener per cursor event and engine.
    """
    for engine in db.engines.values():
        assert len(engine.dispatch.before_cursor_execute) == 0
        assert len(engine.dispatch.after_cursor_execute) == 0
        assert engine._has_events is False
        assert engine.dialect._has_events is False
    with capture_signal(signals.after_cursor_execute, app_ctx.app) as sent:
        for engine in db.engines.values():
            assert len(engine.dispatch.after_cursor_execute) == 1
        db.session.execute(sa.text("SELECT 1"))
    assert len(sent) == 1
    assert len(db.get_recorded_queries()) == 1


@pytest.mark.parametrize("config", [{"SESSIONEXT_RECORD_QUERIES": False}])
def test_nothing_installed_when_off(app_ctx: AppContext, db: SessionExt) -> None:
    """With every feature off there is no listener, no session wrapper and no
    after_request function, and nothing is recorded.
    """
    db.session.execute(sa.text("SELECT 1"))
    assert db.get_recorded_queries() == []
    assert db.dropped_query_count == 0
    for engine in db.engines.values():
        assert len(engine.dispatch.before_cursor_execute) == 0
        assert len(engine.dispatch.after_cursor_execute) == 0
        assert engine._has_events is False
    assert "execute" not in vars(type(db.session()))
    assert not app_ctx.app.after_request_funcs


@pytest.mark.parametrize(
    "config",
    [{"SESSIONEXT_SLOW_QUERY_THRESHOLD": 0, "SESSIONEXT_RECORD_QUERIES": False}],
)
def test_slow_query_threshold_zero(
    app_ctx: AppContext, db: SessionExt, caplog: pytest.LogCaptureFixture
) -> None:
    """With threshold 0 every query sends slow_query and logs one warning
    line, with recording off; the statement is shortened to 200 characters.
    """
    columns = ", ".join(f"{i} AS column_{i}" for i in range(40))
    statement = f"SELECT {columns}\nFROM users"
    with (
        capture_signal(signals.slow_query, app_ctx.app) as sent,
        caplog.at_level(logging.WARNING),
    ):
        line = here()
        db.session.execute(sa.text(statement))
    (sender, kwargs) = sent[0]
    assert len(sent) == 1
    assert sender is app_ctx.app
    record: QueryRecord = kwargs["query"]
    assert record.statement == statement
    assert (
        record.location == f"test_recording.py:{line} (test_slow_query_threshold_zero)"
    )
    assert db.get_recorded_queries() == []
    (log,) = [r for r in caplog.records if r.name == app_ctx.app.logger.name]
    message = log.getMessage()
    assert log.levelno == logging.WARNING
    assert "\n" not in message
    assert f"ms at {record.location}: " in message
    shortened = message.split(": ", 1)[1].split(": ", 1)[1]
    assert len(shortened) == 200
    assert shortened == statement.replace("\n", " ")[:197] + "..."


@pytest.mark.parametrize(
    "config", [{"SESSIONEXT_SLOW_QUERY_THRESHOLD": SLOW_THRESHOLD}]
)
def test_real_slow_statement(
    app_ctx: AppContext,
    db: SessionExt,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A statement that really takes longer than the threshold is reported,
    a fast one is not.
    """
    with capture_signal(signals.slow_query, app_ctx.app) as sent:
        db.session.execute(sa.text("SELECT 1"))
        line = here()
        db.session.execute(sa.text(SLOW[database]))
    (record,) = [kwargs["query"] for _, kwargs in sent]
    assert record.statement == SLOW[database]
    assert record.duration > SLOW_THRESHOLD
    assert record.location == f"test_recording.py:{line} (test_real_slow_statement)"
    assert len(db.get_recorded_queries()) == 2
    assert [r.getMessage()[:11] for r in caplog.records] == ["Slow query:"]


@pytest.mark.parametrize("config", [{"SESSIONEXT_SLOW_QUERY_THRESHOLD": 0}])
def test_slow_query_receiver_error(app_ctx: AppContext, db: SessionExt) -> None:
    """A slow_query receiver's error is raised after the session operation
    in testing; the session defers errors to the end of its operations only
    while such a receiver is connected.
    """
    session_class = type(db.session())

    def fail(sender: Flask, query: QueryRecord) -> None:
        raise LookupError(f"slow: {query.statement}")

    assert "execute" not in session_class._sessionext_deferring
    with (
        signals.slow_query.connected_to(fail, sender=app_ctx.app),
        pytest.raises(LookupError, match="slow: SELECT 1"),
    ):
        assert "execute" in session_class._sessionext_deferring
        db.session.execute(sa.text("SELECT 1"))
    assert "execute" not in session_class._sessionext_deferring
    assert db.session.execute(sa.text("SELECT 2")).scalar() == 2


@pytest.mark.parametrize("config", [{"SESSIONEXT_SLOW_QUERY_THRESHOLD": 0}])
def test_slow_query_receiver_querying_does_not_loop(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """A slow_query receiver that runs a query is not told about its own."""
    seen: list[str] = []

    def log_to_database(sender: Flask, query: QueryRecord) -> None:
        seen.append(query.statement)
        db.session.execute(sa.text("SELECT 'logged'"))

    with signals.slow_query.connected_to(log_to_database, sender=app_ctx.app):
        db.session.execute(sa.text("SELECT 1"))
    assert seen == ["SELECT 1"]
    assert len(db.get_recorded_queries()) == 2


def _timing_app(app: Flask, db: SessionExt) -> list[QueryRecord]:
    """Add the views of the Server-Timing tests to ``app``; the returned list
    gets the records of each request, as ``after_request`` sees them.
    """
    kept: list[QueryRecord] = []

    @app.get("/<int:n>")
    def queries(n: int) -> str:
        for i in range(n):
            db.session.execute(sa.text(f"SELECT {i}"))
        return "ok"

    @app.get("/existing")
    def existing() -> Response:
        db.session.execute(sa.text("SELECT 1"))
        return Response("ok", headers={"Server-Timing": "app;dur=1.5"})

    @app.get("/stream")
    def stream() -> Response:
        db.session.execute(sa.text("SELECT 1"))

        def body() -> Iterator[str]:
            yield str(db.session.execute(sa.text("SELECT 2")).scalar())

        return Response(stream_with_context(body()))

    @app.after_request  # runs before the extension's, registered earlier
    def keep(response: Response) -> Response:
        kept[:] = db.get_recorded_queries()
        return response

    return kept


@pytest.mark.parametrize(
    "config",
    [
        {"SESSIONEXT_SERVER_TIMING": True},
        {"SESSIONEXT_SERVER_TIMING": True, "SESSIONEXT_RECORD_QUERIES": False},
    ],
    ids=["recording", "not-recording"],
)
def test_server_timing(app: Flask, db: SessionExt, config: Config) -> None:
    """Every response gets the header, with or without recording: 0, 1 and
    several queries, in milliseconds, joined to an existing value, and for a
    streamed response what was known when the headers were sent.
    """
    kept = _timing_app(app, db)
    client = app.test_client()
    for n, desc in ((0, "0 queries"), (1, "1 query"), (3, "3 queries")):
        value = client.get(f"/{n}").headers["Server-Timing"]
        match = TIMING_RE.fullmatch(value)
        assert match is not None, value
        assert value.endswith(f';desc="{desc}"')
        if config.get("SESSIONEXT_RECORD_QUERIES", True):
            assert len(kept) == n
            assert match[1] == f"{sum(r.duration for r in kept) * 1000:.1f}"
        else:
            assert kept == []
    value = client.get("/existing").headers["Server-Timing"]
    assert value.startswith("app;dur=1.5, db;dur=")
    assert value.endswith(';desc="1 query"')
    response = client.get("/stream")
    assert response.get_data(as_text=True) == "2"
    assert response.headers["Server-Timing"].endswith(';desc="1 query"')


def test_no_server_timing_by_default(app: Flask, db: SessionExt) -> None:
    """Without SESSIONEXT_SERVER_TIMING there is no header and no
    after_request function of the extension.
    """
    assert not app.after_request_funcs
    _timing_app(app, db)
    response = app.test_client().get("/1")
    assert response.status_code == 200
    assert "Server-Timing" not in response.headers


SERVER = """
import sqlalchemy as sa
from flask import Flask
from waitress.server import create_server

from flask_sessionext import SessionExt

app = Flask("served")
app.config.from_prefixed_env()
app.config["SESSIONEXT_SERVER_TIMING"] = True
db = SessionExt(app)


@app.get("/")
def index():
    for i in range(3):
        db.session.execute(sa.text(f"SELECT {i}"))
    return "ok"


server = create_server(app, host="127.0.0.1", port=0, threads=1)
print(server.effective_port, flush=True)
server.run()
"""


def test_server_timing_through_a_wsgi_server(
    database_uris: dict[str | None, str], tmp_path: Path
) -> None:
    """A real WSGI server on 127.0.0.1 sends the header."""
    env = {**os.environ, "FLASK_SESSIONEXT_DATABASE_URI": database_uris[None]}
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, env=env, cwd=tmp_path
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=10) as response:
            value = response.headers["Server-Timing"]
            assert response.read() == b"ok"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    match = TIMING_RE.fullmatch(value)
    assert match is not None, value
    assert match[2] == "3"


@pytest.mark.parametrize(
    ("key", "value", "error", "match"),
    [
        ("SESSIONEXT_RECORD_QUERIES", "yes", TypeError, "must be True or False"),
        ("SESSIONEXT_RECORD_PARAMETERS", 1, TypeError, "must be True or False"),
        ("SESSIONEXT_SERVER_TIMING", None, TypeError, "must be True or False"),
        ("SESSIONEXT_RECORD_QUERIES_LIMIT", "10", TypeError, "an int of at least 1"),
        ("SESSIONEXT_RECORD_QUERIES_LIMIT", True, TypeError, "an int of at least 1"),
        ("SESSIONEXT_RECORD_QUERIES_LIMIT", 0, ValueError, "RECORD_QUERIES' to False"),
        ("SESSIONEXT_SLOW_QUERY_THRESHOLD", "1", TypeError, "a number of seconds"),
        ("SESSIONEXT_SLOW_QUERY_THRESHOLD", -0.5, ValueError, "at least 0"),
        ("SESSIONEXT_SLOW_QUERY_THRESHOLD", float("nan"), ValueError, "not nan"),
    ],
)
def test_bad_config(
    tmp_path: Path, key: str, value: object, error: type[Exception], match: str
) -> None:
    """Bad recording keys fail in init_app, naming the key, the value and
    what is accepted.
    """
    with pytest.raises(error, match=re.escape(f"'{key}' must be")) as info:
        plain_app(tmp_path, {key: value})
    assert re.search(re.escape(match), str(info.value))
    assert repr(value) in str(info.value)


def test_unlimited_records(tmp_path: Path) -> None:
    """A limit of None keeps every record."""
    config = {
        "SESSIONEXT_RECORD_QUERIES": True,
        "SESSIONEXT_RECORD_QUERIES_LIMIT": None,
    }
    app, db = plain_app(tmp_path, config)
    with app.app_context():
        for _ in range(1005):
            db.session.execute(sa.text("SELECT 1"))
        assert len(db.get_recorded_queries()) == 1005
        assert db.dropped_query_count == 0
        engine = db.engine
    engine.dispose()


def test_check_good_binds(app: Flask, db: SessionExt, database: str) -> None:
    """``flask sessionext check`` prints one line per bind and exits 0."""
    result = app.test_cli_runner().invoke(args=["sessionext", "check"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == ["(default)", "other"]
    for line, engine in zip(lines, db_engines(app)):
        assert engine.url.render_as_string(hide_password=True) in line
        assert re.search(rf"  {database} \d+(\.\d+)+  \d+\.\d\d ms$", line), line
    assert APP_PASSWORD not in result.output


def db_engines(app: Flask) -> list[sa.Engine]:
    """The app's engines, default first."""
    return list(app.extensions["sessionext"].engines.values())


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("host", "Connection refused"),
        ("password", "password authentication failed"),
        ("directory", "The directory '/nonexistent-dir' does not exist."),
    ],
)
def test_check_bad_bind(
    tmp_path: Path, request: pytest.FixtureRequest, case: str, expected: str
) -> None:
    """A bind that cannot connect makes ``check`` exit 1 with a message that
    names the bind, and never shows the password.
    """
    secret = "s3cret-pw"
    if case == "host":
        url = f"postgresql+psycopg://sessionext:{secret}@127.0.0.1:1/x"
    elif case == "password":
        server: PostgresServer | None = request.getfixturevalue("postgres")
        if server is None:
            pytest.skip("the PostgreSQL server binaries are not installed")
        secret = "wrong-pw-4711"
        url = sa.make_url(server.url()).set(password=secret).render_as_string(False)
    else:
        url = "sqlite:////nonexistent-dir/x.db"
    app, _ = plain_app(tmp_path, {"SESSIONEXT_BINDS": {"broken": url}})
    result = app.test_cli_runner().invoke(args=["sessionext", "check"])
    for engine in db_engines(app):
        engine.dispose()
    assert result.exit_code == 1
    assert result.output.startswith("(default)  sqlite://  sqlite ")
    (error,) = [line for line in result.output.splitlines() if "Error" in line]
    assert error.startswith("Error: Cannot connect to bind 'broken' (")
    assert expected in error
    assert secret not in result.output


@pytest.mark.parametrize(
    "config",
    [{"SESSIONEXT_RECORD_PARAMETERS": True, "SESSIONEXT_RECORD_QUERIES_LIMIT": None}],
)
def test_parameter_bytes_are_bounded(app_ctx: AppContext, db: SessionExt) -> None:
    """A long parameter is cut with a marker, and an app context stops keeping
    parameters once it holds ``CONTEXT_PARAMETER_BYTES`` of them.
    """
    big = "x" * 200_000
    db.session.execute(sa.select(User).where(User.name == big))
    (record,) = db.get_recorded_queries()
    values = record.parameters
    values = list(values.values() if isinstance(values, dict) else values)
    kept = next(v for v in values if isinstance(v, str) and v.startswith("xxx"))
    assert (
        kept
        == "x" * PARAMETER_LENGTH + f"...<{200_000 - PARAMETER_LENGTH} more characters>"
    )
    for _ in range(CONTEXT_PARAMETER_BYTES // PARAMETER_LENGTH + 10):
        db.session.execute(sa.select(User).where(User.name == big))
    records = db.get_recorded_queries()
    total = sum(len(repr(r.parameters)) for r in records)
    assert total < 2 * CONTEXT_PARAMETER_BYTES
    assert records[-1].parameters == (
        "<parameters not kept: this app context has recorded 1024 KiB of parameters>"
    )
