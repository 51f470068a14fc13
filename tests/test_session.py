"""The app-context scope, lazy creation, teardown, binds and several apps."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.ctx import AppContext
from sqlalchemy import orm

from flask_sessionext import SessionExt
from flask_sessionext._session import session as _session

from helpers import checked_out, count_rows, open_sessions
from models import Base, Entry, Item, User


def test_same_session_within_a_context(app_ctx: AppContext, db: SessionExt) -> None:
    """Every use of db.session in one context is the same Session."""
    assert db.session() is db.session()
    assert db.session.registry() is db.session()


def test_nested_contexts_get_their_own_session(app: Flask, db: SessionExt) -> None:
    """A nested app context has a Session of its own, removed with it."""
    with app.app_context():
        outer = db.session()
        with app.app_context():
            inner = db.session()
            assert inner is not outer
        assert db.session() is outer


def test_threads_get_their_own_session(app: Flask, db: SessionExt) -> None:
    """Eight concurrent threads each see their own Session."""
    barrier = threading.Barrier(8)
    seen: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with app.app_context():
                session = db.session()
                db.session.execute(sa.select(1))
                barrier.wait(timeout=10)  # all eight sessions are alive at once
                seen.append(id(session))
                assert db.session() is session
        except BaseException as e:  # reported below, on the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(seen)) == 8
    assert open_sessions(app, db) == 0
    with app.app_context():
        assert checked_out(db.engine) == 0


def test_requests_get_their_own_session(app: Flask, db: SessionExt) -> None:
    """Two requests never share a Session."""
    sessions: list[orm.Session] = []

    @app.get("/")
    def index() -> str:
        sessions.append(db.session())
        db.session.execute(sa.select(1))
        return "ok"

    client = app.test_client()
    client.get("/")
    client.get("/")
    assert len(sessions) == 2
    assert sessions[0] is not sessions[1]


def test_lazy_session(app: Flask, db: SessionExt) -> None:
    """A request that never touches db.session creates none and checks out
    no connection.
    """
    checkouts: list[object] = []
    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "checkout", lambda *args: checkouts.append(args))

    @app.get("/")
    def index() -> str:
        assert not db.session.registry.has()
        return "ok"

    assert app.test_client().get("/").status_code == 200
    assert checkouts == []


def test_teardown_rolls_back_and_returns_connection(app: Flask, db: SessionExt) -> None:
    """Uncommitted work is rolled back at teardown and the connection goes
    back to the pool, also when the view raised.
    """
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/add")
    def add() -> str:
        db.session.add(User(name="lost"))
        db.session.flush()
        return "ok"

    @app.get("/fail")
    def fail() -> str:
        db.session.add(User(name="lost"))
        db.session.flush()
        raise ZeroDivisionError

    client = app.test_client()
    assert client.get("/add").status_code == 200
    assert client.get("/fail").status_code == 500
    with app.app_context():
        engine = db.engine
        assert checked_out(engine) == 0
    assert count_rows(engine, "users") == 0
    assert open_sessions(app, db) == 0


def test_teardown_of_plain_context(app: Flask, db: SessionExt) -> None:
    """Leaving a ``with app.app_context()`` block removes its session."""
    with app.app_context():
        scoped = db.session
        session = db.session()
        db.session.add(User(name="x"))
        db.session.flush()
        engine = db.engine
        assert checked_out(engine) == 1
    assert checked_out(engine) == 0
    assert session not in scoped.registry.registry.values()
    assert count_rows(engine, "users") == 0


def test_commit_on_teardown(app: Flask, db: SessionExt) -> None:
    """With SESSIONEXT_COMMIT_ON_TEARDOWN, a request without exception commits
    and one with an exception rolls back.
    """
    app.config.update(SESSIONEXT_COMMIT_ON_TEARDOWN=True, PROPAGATE_EXCEPTIONS=False)

    @app.get("/<name>")
    def add(name: str) -> str:
        db.session.add(User(name=name))
        if name == "boom":
            raise ZeroDivisionError
        return "ok"

    client = app.test_client()
    client.get("/kept")
    client.get("/boom")
    with app.app_context():
        engine = db.engine
        names = db.session.scalars(sa.select(User.name)).all()
    assert names == ["kept"]
    assert checked_out(engine) == 0


def test_failing_commit_on_teardown_still_removes(app: Flask, db: SessionExt) -> None:
    """A commit that fails at teardown raises, and the session is removed."""
    app.config["SESSIONEXT_COMMIT_ON_TEARDOWN"] = True
    with app.app_context():
        db.session.add(User(id=1, name="a"))
        db.session.commit()
    ctx = app.app_context()
    ctx.push()
    db.session.add(User(id=1, name="duplicate"))
    with pytest.raises(sa.exc.IntegrityError, match="users"):
        ctx.pop()
    assert open_sessions(app, db) == 0
    with app.app_context():
        assert checked_out(db.engine) == 0


def test_binds(app_ctx: AppContext, db: SessionExt) -> None:
    """Models go to the engine of their metadata's or class's bind key, and
    one session spans both databases.
    """
    db.session.add_all([User(name="u"), Item(title="i"), Entry(text="e")])
    db.session.commit()
    default, other = db.get_engine(), db.get_engine("other")
    assert default is db.engine
    assert count_rows(default, "users") == 1
    assert count_rows(other, "items") == 1
    assert count_rows(other, "entries") == 1
    assert db.session.get_bind(Item) is other
    assert db.session.get_bind(User) is default
    assert db.session.get_bind(clause=Item.__table__) is other
    assert db.session.get_bind(clause=sa.select(Item.__table__)) is other
    direct = db.session.execute(
        sa.text("SELECT count(*) FROM items"), bind_arguments={"bind": other}
    )
    assert direct.scalar() == 1


def test_engines_mapping_is_read_only(app_ctx: AppContext, db: SessionExt) -> None:
    """db.engines cannot be changed."""
    with pytest.raises(TypeError, match="does not support item assignment"):
        db.engines["x"] = db.engine  # type: ignore[index]


def test_two_apps_one_extension(
    tmp_path: Path, database_uris: dict[str | None, str]
) -> None:
    """Two apps on one SessionExt have their own engines and sessions."""
    db = SessionExt()
    apps = []
    for name in ("a", "b"):
        app = Flask(name, instance_path=str(tmp_path / name))
        app.config["SESSIONEXT_DATABASE_URI"] = f"sqlite:///{name}.sqlite3"
        db.init_app(app)
        apps.append(app)
    a, b = apps
    with a.app_context():
        engine_a = db.engine
        session_a = db.session()
        Base.metadata.create_all(engine_a)
        db.session.add(User(name="in a"))
        db.session.commit()
        with b.app_context():
            engine_b = db.engine
            assert engine_b is not engine_a
            assert db.session() is not session_a
            assert db.session.get_bind(User) is engine_b
            Base.metadata.create_all(engine_b)
            assert db.session.scalars(sa.select(User)).all() == []
        assert db.session() is session_a
    assert (
        a.extensions["sessionext"].sessionmaker
        is not b.extensions["sessionext"].sessionmaker
    )
    assert count_rows(engine_a, "users") == 1
    assert count_rows(engine_b, "users") == 0


def test_get_or_404(app: Flask, db: SessionExt) -> None:
    """get_or_404 returns the row or aborts with 404."""
    with app.app_context():
        db.session.add(User(id=1, name="u"))
        db.session.commit()

    @app.get("/<int:ident>")
    def show(ident: int) -> str:
        return db.get_or_404(User, ident, description="no such user").name

    client = app.test_client()
    assert client.get("/1").text == "u"
    missing = client.get("/2")
    assert missing.status_code == 404
    assert "no such user" in missing.text


def test_first_and_one_or_404(app: Flask, db: SessionExt) -> None:
    """first_or_404 and one_or_404 abort with 404 when there is no fitting row."""
    with app.app_context():
        db.session.add_all([User(name="a"), User(name="b"), User(name="b")])
        db.session.commit()

    @app.get("/first/<name>")
    def first(name: str) -> str:
        user: User = db.first_or_404(sa.select(User).where(User.name == name))
        return user.name

    @app.get("/one/<name>")
    def one(name: str) -> str:
        user: User = db.one_or_404(sa.select(User).where(User.name == name))
        return user.name

    client = app.test_client()
    assert client.get("/first/b").text == "b"
    assert client.get("/first/c").status_code == 404
    assert client.get("/one/a").text == "a"
    assert client.get("/one/b").status_code == 404
    assert client.get("/one/c").status_code == 404


def test_session_attribute_outside_app_context(app: Flask) -> None:
    """``db.session`` may be read and kept without an app context, as real
    clients do at import time; the kept reference works inside a request.
    """
    db = SessionExt()
    kept = db.session
    assert hasattr(db, "session")
    assert db.session is kept
    db.init_app(app)
    with app.app_context():
        Base.metadata.create_all(db.engine)
        kept.add(User(name="kept"))
        kept.commit()
        assert kept() is db.session()
        assert kept.scalar(sa.select(sa.func.count()).select_from(User)) == 1
        kept.close()
        Base.metadata.drop_all(db.engine)
        db.engine.dispose()
    with pytest.raises(RuntimeError, match=r"with app\.app_context\(\):"):
        kept.scalar(sa.select(User))


def test_every_session_method_is_sorted() -> None:
    """Every public method of the installed SQLAlchemy's Session is known to
    run SQL (a session operation, after which receiver errors are raised) or
    to work in memory, so a method that a new SQLAlchemy adds is sorted here
    before it can miss the receiver-error policy.
    """
    public = {
        name
        for name in dir(orm.Session)
        if not name.startswith("_") and callable(getattr(orm.Session, name))
    }
    assert public - _session.OPERATIONS - _session.IN_MEMORY == set()
    assert not _session.OPERATIONS & _session.IN_MEMORY


def test_session_option_binds_route_core_statements(tmp_path: Path) -> None:
    """SQLAlchemy's own ``binds`` session option still sends a Core statement
    on its table to the engine it names, with one configured bind.
    """
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.sqlite3'}")
    table = sa.Table(
        "marks", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
    )
    table.create(other)
    app = Flask(__name__)
    app.config["SESSIONEXT_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    app.config["SESSIONEXT_SESSION_OPTIONS"] = {"binds": {table: other}}
    db = SessionExt(app)
    with app.app_context():
        assert db.session.get_bind(clause=sa.select(table)) is other
        assert (
            db.session.execute(sa.select(sa.func.count()).select_from(table)).scalar()
            == 0
        )
        assert db.session.get_bind() is db.engine
    other.dispose()
