"""flask_sessionext.testing: the pytest plugin, rollback() and capture_signal()."""

from __future__ import annotations

from pathlib import Path

import blinker
import pytest
import sqlalchemy as sa
from flask import Flask, has_app_context
from flask.ctx import AppContext

from flask_sessionext import SessionExt, signals, testing
from flask_sessionext.testing import capture_signal, rollback

from _postgres import PostgresServer
from helpers import checked_out, count_rows, run_python
from models import Entry, Item, User

#: The app under test of the inner test sessions: two binds, a view that
#: commits, and a function that creates the tables.
INNER_APP = '''
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_sessionext import SessionExt

URIS = {uris!r}


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "plugin_rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)


class Note(Base):
    __tablename__ = "plugin_notes"
    __bind_key__ = "other"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(50))


db = SessionExt()


def create_app():
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SESSIONEXT_DATABASE_URI=URIS[None],
        SESSIONEXT_BINDS={{"other": URIS["other"]}},
    )
    db.init_app(app)

    @app.post("/rows/<name>")
    def add_row(name):
        with db.transaction():
            db.session.add(Row(name=name))
        return "created"

    return app


def create_tables():
    for uri in URIS.values():
        engine = sa.create_engine(uri)
        Base.metadata.create_all(engine)
        engine.dispose()


def counts():
    """The rows of both tables, on connections of db.engine and db.get_engine()."""
    with db.engine.connect() as conn:
        rows = conn.scalar(sa.select(sa.func.count()).select_from(Row))
    with db.get_engine("other").connect() as conn:
        notes = conn.scalar(sa.select(sa.func.count()).select_from(Note))
    return rows, notes
'''

#: The conftest of the inner sessions, as its README example has it.
INNER_CONFTEST = '''
import pytest

from inner_app import create_app, create_tables, db


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # once, not in each xdist worker
        create_tables()


@pytest.fixture(scope="session")
def app():
    app = create_app()
    yield app
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@pytest.fixture(autouse=True)
def _rollback(sessionext_rollback):
    """Every test runs in a transaction that is rolled back."""
'''

#: Tests that commit, fail, nest and use every kind of session and connection.
#: Every test that commits adds the same unique name: a leftover would fail it.
INNER_TESTS = """
import pytest
import sqlalchemy as sa

from flask_sessionext import signals
from flask_sessionext.testing import capture_signal
from inner_app import Note, Row, counts, db


def names():
    return db.session.scalars(sa.select(Row.name).order_by(Row.name)).all()


def test_commit(app):
    with app.app_context():
        db.session.add_all([Row(name="same"), Note(text="note")])
        db.session.commit()
        assert counts() == (1, 1)
    with app.app_context():
        assert names() == ["same"]


def test_fails_after_commit(app):
    with app.app_context():
        db.session.add_all([Row(name="same"), Note(text="note")])
        db.session.commit()
        assert counts() == (0, 0), "failed after committing"


def test_raises_after_commit(app):
    with app.app_context():
        db.session.add(Row(name="same"))
        db.session.commit()
        raise RuntimeError("raised after committing")


def test_request_commits(app):
    assert app.test_client().post("/rows/same").text == "created"
    with app.app_context():
        assert names() == ["same"]


def test_nested_savepoints(app):
    with app.app_context():
        with db.transaction():
            db.session.add(Row(name="same"))
            with pytest.raises(ValueError, match="inner"), db.transaction():
                db.session.add(Row(name="inner"))
                db.session.flush()
                raise ValueError("inner")
            with db.session.begin_nested():
                db.session.add(Row(name="nested"))
        assert names() == ["nested", "same"]


def test_session_scope(app):
    with app.app_context():
        with db.session_scope() as session:
            session.add_all([Row(name="same"), Note(text="scoped")])
        with pytest.raises(KeyError, match="lost"), db.session_scope() as session:
            session.add(Row(name="lost"))
            session.flush()
            raise KeyError("lost")
        assert names() == ["same"]
        assert counts() == (1, 1)


def test_engine_connect(app):
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(sa.insert(Row).values(name="same"))
        with db.get_engine("other").connect() as conn:
            conn.execute(sa.insert(Note).values(text="kept"))
            conn.commit()
            conn.execute(sa.insert(Note).values(text="undone"))
            conn.rollback()
        assert names() == ["same"]
        assert db.session.scalars(sa.select(Note.text)).all() == ["kept"]


def test_failed_commit_goes_on(app):
    with app.app_context():
        db.session.add(Row(name="same"))
        db.session.commit()
        db.session.add(Row(name="same"))
        with pytest.raises(sa.exc.IntegrityError, match="plugin_rows"):
            db.session.commit()
        db.session.rollback()
        with (
            pytest.raises(sa.exc.IntegrityError, match="plugin_rows"),
            db.engine.begin() as conn,
        ):
            conn.execute(sa.insert(Row).values(name="same"))
        assert names() == ["same"]


def test_signals_fire(app):
    outermost = []
    with app.app_context():
        session = db.session()
        sa.event.listen(
            session,
            "after_commit",
            lambda s: outermost.append(not s.in_nested_transaction()),
        )
        calls = []
        with (
            capture_signal(signals.after_commit, app) as sent,
            capture_signal(signals.models_committed, app) as committed,
        ):
            row = Row(name="same")
            db.session.add(row)
            db.on_commit(calls.append, "done")
            db.session.commit()
        assert sent == [(app, {"session": session})]
        assert outermost == [True]
        assert committed == [(app, {"changes": [(row, "insert")]})]
        assert calls == ["done"]


def test_nothing_left(app):
    with app.app_context():
        assert counts() == (0, 0)
        assert names() == []
"""

#: Tests for an xdist run: each commits the same unique name.
INNER_XDIST_TESTS = """
import pytest
import sqlalchemy as sa

from inner_app import Row, db


@pytest.mark.parametrize("n", range(6))
def test_same_name(app, n):
    with app.app_context():
        db.session.add(Row(name="same"))
        db.session.commit()
        assert db.session.scalars(sa.select(Row.name)).all() == ["same"]
"""


def inner_uris(
    database: str, name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str | None, str]:
    """Fresh databases for both binds of an inner session's app."""
    if database == "sqlite":
        return {
            None: f"sqlite:///{tmp_path / f'{name}.sqlite3'}",
            "other": f"sqlite:///{tmp_path / f'{name}_other.sqlite3'}",
        }
    server: PostgresServer = request.getfixturevalue("postgres")
    return {
        None: server.create_database(name),
        "other": server.create_database(f"{name}_other"),
    }


def make_inner_session(
    pytester: pytest.Pytester, uris: dict[str | None, str], tests: str
) -> None:
    """Write the app, conftest, ini and test file of an inner session."""
    pytester.makeini("[pytest]\nfilterwarnings = error\naddopts = -p no:cacheprovider")
    pytester.makepyfile(inner_app=INNER_APP.format(uris=uris))
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=tests)


def assert_empty(uris: dict[str | None, str]) -> None:
    """Both tables of the inner app hold no row, in both databases."""
    for uri in uris.values():
        engine = sa.create_engine(uri)
        try:
            assert count_rows(engine, "plugin_rows") == 0
            assert count_rows(engine, "plugin_notes") == 0
        finally:
            engine.dispose()


def test_plugin_rolls_back_every_test(
    pytester: pytest.Pytester,
    database: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Tests that commit, fail after committing, nest savepoints, use
    session_scope(), requests and engine.connect() leave nothing behind, and a
    second run of the same file gives the same results.
    """
    uris = inner_uris(database, "plugin_rollback", tmp_path, request)
    make_inner_session(pytester, uris, INNER_TESTS)
    for _ in range(2):
        result = pytester.runpytest_subprocess("-p", "no:xdist")
        result.assert_outcomes(passed=8, failed=2)
        result.stdout.fnmatch_lines(
            ["*failed after committing*", "*raised after committing*"]
        )
        assert_empty(uris)


def test_plugin_isolates_xdist_workers(
    pytester: pytest.Pytester,
    postgres: PostgresServer | None,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tests that commit the same unique row on two xdist workers at once
    each see exactly their own row, and leave none.
    """
    if postgres is None:
        pytest.skip("the PostgreSQL server binaries are not installed")
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    uris = inner_uris("postgresql", "plugin_xdist", tmp_path, request)
    make_inner_session(pytester, uris, INNER_XDIST_TESTS)
    result = pytester.runpytest_subprocess("-p", "xdist", "-n", "2", "-v")
    result.assert_outcomes(passed=6)
    for worker in ("gw0", "gw1"):
        result.stdout.re_match_lines([rf".*\[{worker}\].* PASSED "])
    assert_empty(uris)


def test_plugin_is_registered_and_inert(request: pytest.FixtureRequest) -> None:
    """The entry point registers the module as the ``sessionext`` plugin,
    which adds no option, no hook and no autouse fixture.
    """
    assert request.config.pluginmanager.get_plugin("sessionext") is testing
    assert "sessionext_rollback" not in request.fixturenames
    assert not [name for name in vars(testing) if name.startswith("pytest_")]


def test_import_is_light() -> None:
    """Importing the plugin imports nothing that pytest and the package do not
    import already.
    """
    code = (
        "import sys, pytest, flask_sessionext; before = set(sys.modules);"
        " import flask_sessionext.testing;"
        " print(sorted(set(sys.modules) - before))"
    )
    assert run_python(code).strip() == "['flask_sessionext.testing']"


def test_fixture_yields_app(
    db: SessionExt, app: Flask, sessionext_rollback: Flask
) -> None:
    """The fixture runs the test in a block on the ``app`` fixture's app."""
    assert sessionext_rollback is app
    assert app.extensions["sessionext"].engine_override is not None


def test_rollback_undoes_commits(app: Flask, db: SessionExt) -> None:
    """Rows committed on every bind are seen in the block and gone after it;
    the block pushes no app context and yields the app.
    """
    with rollback(app) as yielded:
        assert yielded is app
        assert not has_app_context()
        with app.app_context():
            db.session.add_all([User(name="a"), Item(title="b"), Entry(text="c")])
            db.session.commit()
        with app.app_context():
            assert db.session.scalars(sa.select(User.name)).all() == ["a"]
            assert count_rows(db.get_engine("other"), "entries") == 1
    engines = app.extensions["sessionext"].engines
    assert count_rows(engines[None], "users") == 0
    assert count_rows(engines["other"], "items") == 0
    assert count_rows(engines["other"], "entries") == 0
    assert checked_out(engines[None]) == checked_out(engines["other"]) == 0


def test_rollback_single_bind(
    database_uris: dict[str | None, str], tmp_path: Path
) -> None:
    """An app with one bind, whose Session class does no routing, is covered
    the same way.
    """
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["SESSIONEXT_DATABASE_URI"] = database_uris[None]
    db = SessionExt(app)
    engine = app.extensions["sessionext"].engines[None]
    User.metadata.create_all(engine)
    try:
        with rollback(app), app.app_context():
            db.session.add(User(name="a"))
            db.session.commit()
            with db.session_scope() as session:
                session.add(User(name="b"))
            with db.engine.begin() as conn:
                conn.execute(sa.insert(User).values(name="c"))
            assert count_rows(db.engine, "users") == 3
        assert count_rows(engine, "users") == 0
    finally:
        User.metadata.drop_all(engine)
        engine.dispose()


def test_rollback_on_error(app: Flask, db: SessionExt) -> None:
    """An exception leaves the block after rolling everything back."""
    with pytest.raises(KeyboardInterrupt, match="stop"), rollback(app):
        with app.app_context(), db.transaction():
            db.session.add(User(name="a"))
        raise KeyboardInterrupt("stop")
    assert count_rows(app.extensions["sessionext"].engines[None], "users") == 0


def test_rollback_session_scope(app_ctx: AppContext, db: SessionExt) -> None:
    """session_scope() work inside the request's transaction, and nested
    savepoints, are rolled back too.
    """
    with rollback(app_ctx.app):
        db.session.add(User(name="request"))
        db.session.flush()
        with db.session_scope() as session:
            session.add_all([User(name="a"), Item(title="b")])
            with session.begin_nested():
                session.add(User(name="c"))
        db.session.commit()
        assert count_rows(db.engine, "users") == 3
        assert count_rows(db.get_engine("other"), "items") == 1
    assert count_rows(db.engine, "users") == 0
    assert count_rows(db.get_engine("other"), "items") == 0


def test_rollback_engine_connect(app_ctx: AppContext, db: SessionExt) -> None:
    """Engines got in the block hand out connections in the outer
    transaction, whose commit and rollback act on a SAVEPOINT; the app's own
    engines are back after the block.
    """
    state = app_ctx.app.extensions["sessionext"]
    with rollback(app_ctx.app):
        engine = db.engine
        assert isinstance(engine, sa.Engine)
        assert engine is not state.engines[None]
        assert engine is db.engines[None]
        assert db.get_engine("other") is db.engines["other"]
        with engine.connect() as conn:
            conn.execute(sa.insert(User).values(name="kept"))
            conn.commit()
            conn.execute(sa.insert(User).values(name="undone"))
            conn.rollback()
        with engine.execution_options(logging_token="x").begin() as conn:
            conn.execute(sa.insert(User).values(name="options"))
        assert db.session.scalars(sa.select(User.name).order_by(User.name)).all() == [
            "kept",
            "options",
        ]
    assert db.engine is state.engines[None]
    assert db.engines is state.engines
    assert count_rows(db.engine, "users") == 0
    assert checked_out(db.engine) == 0


def test_rollback_closes_what_is_left(app_ctx: AppContext, db: SessionExt) -> None:
    """Sessions and connections still open at the end are closed, and the
    app's session uses the real database again after the block.
    """
    with rollback(app_ctx.app):
        db.session.add(User(name="in block"))
        db.session.commit()
        conn = db.engine.connect()
        conn.execute(sa.insert(User).values(name="left open"))
    assert conn.closed
    assert list(db.session()) == []
    assert not db.session().in_transaction()
    db.session.add(User(name="after"))
    db.session.commit()
    assert db.session.scalars(sa.select(User.name)).all() == ["after"]


def test_rollback_warns_on_uncovered_engine(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """A connection of an engine obtained before the block warns; one of an
    engine obtained in the block does not.
    """
    engine = db.engine
    with rollback(app_ctx.app):
        with pytest.warns(UserWarning, match="obtained, before the rollback block"):
            engine.connect().close()
        db.engine.connect().close()


def test_rollback_warns_on_session_from_before(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """A session created before the block warns when it begins in it, and is
    closed at the end.
    """
    session = db.session()
    session.add(User(name="a"))
    with rollback(app_ctx.app), pytest.warns(UserWarning, match="session created"):
        session.flush()
    assert not session.in_transaction()
    assert count_rows(db.engine, "users") == 0


def test_rollback_restores_sessionmaker(app: Flask, db: SessionExt) -> None:
    """The block leaves the sessionmaker's options and the listeners of the
    Session class and the engines as it found them.
    """
    state = app.extensions["sessionext"]
    options = dict(state.sessionmaker.kw)
    targets = [state.sessionmaker.class_, *state.engines.values()]
    listeners = [state.listeners.count(target) for target in targets]
    with rollback(app):
        assert state.sessionmaker.kw["join_transaction_mode"] == "create_savepoint"
    assert state.sessionmaker.kw == options
    assert [state.listeners.count(target) for target in targets] == listeners
    assert state.engine_override is None


def test_rollback_refuses_outer_commit(app_ctx: AppContext, db: SessionExt) -> None:
    """Committing the outer connection raises and commits nothing."""
    with rollback(app_ctx.app):
        db.session.add(User(name="a"))
        db.session.flush()
        with pytest.raises(RuntimeError, match="cannot be committed"):
            db.session.connection().commit()
        db.session.commit()
    assert count_rows(db.engine, "users") == 0


def test_rollback_does_not_nest(app: Flask, db: SessionExt) -> None:
    """A block inside another on the same app raises."""
    with (
        rollback(app),
        pytest.raises(RuntimeError, match="already running"),
        rollback(app),
    ):
        pass


def test_rollback_needs_extension() -> None:
    """An app without SessionExt raises a RuntimeError naming the fix."""
    with (
        pytest.raises(RuntimeError, match=r"db\.init_app\(app\)"),
        rollback(Flask(__name__)),
    ):
        pass


def test_capture_signal(app: Flask) -> None:
    """capture_signal() records what any Blinker signal sends in the block,
    from the given app or from any sender, and disconnects at the end.
    """
    signal = blinker.Namespace().signal("x")
    with capture_signal(signal, app) as from_app, capture_signal(signal) as from_any:
        signal.send(app, value=1)
        signal.send("other", value=2)
    signal.send(app, value=3)
    assert from_app == [(app, {"value": 1})]
    assert from_any == [(app, {"value": 1}), ("other", {"value": 2})]
    assert not signal.receivers


def test_capture_signal_of_package(app: Flask, db: SessionExt) -> None:
    """capture_signal() records the signals of this package."""
    with capture_signal(signals.session_created, app) as sent, app.app_context():
        session = db.session()
    assert sent == [(app, {"session": session})]


def test_rollback_without_pytest() -> None:
    """Every public name of the module imports where pytest is not installed
    (Sphinx's autodoc imports it so), the fixture as a plain function.
    """
    code = (
        "import sys, inspect; sys.modules['pytest'] = None\n"
        "from flask_sessionext.testing import *\n"
        "assert callable(rollback) and callable(capture_signal)\n"
        "assert inspect.isgeneratorfunction(sessionext_rollback)\n"
    )
    run_python(code)


def test_rollback_closes_session_that_only_added(app: Flask, db: SessionExt) -> None:
    """A session that only got ``add()`` calls in the block is closed at its
    end, so a teardown commit after the block (pytest-flask's request context
    outlives it) keeps nothing and does not fail.
    """
    app.config["SESSIONEXT_COMMIT_ON_TEARDOWN"] = True
    with app.test_request_context():
        with rollback(app):
            db.session.add(User(name="not kept"))
        assert list(db.session()) == []
    with app.app_context():
        assert count_rows(db.engine, "users") == 0
        assert checked_out(db.engine) == 0


def test_requests_in_a_pushed_request_context_share_a_session(
    app: Flask, db: SessionExt
) -> None:
    """What docs/testing.rst says of pytest-flask: while a request context of
    the app is pushed, client requests reuse its app context, so they share
    one session and none is removed until that context ends.
    """
    seen: list[object] = []

    @app.get("/session")
    def session_id() -> str:
        seen.append(db.session())
        return "ok"

    client = app.test_client()
    with capture_signal(signals.session_removed, app) as removed:
        with app.test_request_context():
            client.get("/session")
            client.get("/session")
            assert removed == []
        assert len(removed) == 1
    assert seen[0] is seen[1]
