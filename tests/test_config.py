"""Configuration keys, engine creation and the errors of bad input."""

from __future__ import annotations

import math
import re
import sys
import typing as t
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.pool import QueuePool

from flask_sessionext import SessionExt, signals

from helpers import checked_out

PASSWORD = "s3cret-pw"


def make_app(tmp_path: Path, **config: t.Any) -> Flask:
    """A Flask app with an instance folder under ``tmp_path``."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(config)
    return app


def test_default_uri_in_instance_folder(tmp_path: Path) -> None:
    """Without a URI the default bind is app.sqlite3 in the instance folder,
    which is created.
    """
    app = make_app(tmp_path)
    db = SessionExt(app)
    with app.app_context():
        assert db.engine.url.database == str(tmp_path / "instance" / "app.sqlite3")
    assert (tmp_path / "instance").is_dir()


def test_relative_sqlite_paths_resolve_against_instance(tmp_path: Path) -> None:
    """Relative SQLite paths, of binds too, resolve against the instance path."""
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI="sqlite:///main.db",
        SESSIONEXT_BINDS={"a": "sqlite:///sub.db", "b": {"url": "sqlite:///b.db"}},
    )
    db = SessionExt(app)
    with app.app_context():
        instance = tmp_path / "instance"
        assert db.engine.url.database == str(instance / "main.db")
        assert db.get_engine("a").url.database == str(instance / "sub.db")
        assert db.get_engine("b").url.database == str(instance / "b.db")


def test_memory_sqlite_is_shared_across_threads(tmp_path: Path) -> None:
    """An in-memory SQLite database uses one connection, lent to one
    session at a time.
    """
    app = make_app(tmp_path, SESSIONEXT_DATABASE_URI="sqlite://")
    db = SessionExt(app)
    with app.app_context():
        pool = db.engine.pool
        assert isinstance(pool, QueuePool)
        assert pool.size() == 1


def test_engines_created_in_init_app_without_connecting(tmp_path: Path) -> None:
    """init_app creates every engine and opens no connection."""
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI=f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:1/x",
        SESSIONEXT_BINDS={"other": "sqlite://"},
    )
    db = SessionExt(app)
    with app.app_context():
        assert set(db.engines) == {None, "other"}
        assert checked_out(db.engine) == 0


def test_server_databases_get_pool_pre_ping(tmp_path: Path) -> None:
    """Server databases without the liveness check ping connections on
    checkout unless told otherwise.
    """
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI="postgresql+psycopg_async://u@127.0.0.1/x",
        SESSIONEXT_BINDS={
            "no_ping": {
                "url": "postgresql+psycopg_async://u@127.0.0.1/y",
                "pool_pre_ping": False,
            }
        },
    )
    db = SessionExt(app)
    with app.app_context():
        assert db.engine.pool._pre_ping is True
        assert db.get_engine("no_ping").pool._pre_ping is False
        assert len(db.engine.pool.dispatch.checkout) == 0


def test_psycopg_gets_the_liveness_check(tmp_path: Path) -> None:
    """A psycopg engine has the checkout check instead of ``pool_pre_ping``,
    unless its options set ``pool_pre_ping`` or another DBAPI ``module``, or
    the threshold is 0; it shares the one checkout listener with the
    receivers of ``checkout``.
    """
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI="postgresql+psycopg://u@127.0.0.1/x",
        SESSIONEXT_BINDS={
            "own": {"url": "postgresql+psycopg://u@127.0.0.1/y", "pool_pre_ping": True},
            "off": {
                "url": "postgresql+psycopg://u@127.0.0.1/z",
                "pool_pre_ping": False,
            },
            "module": {"url": "postgresql+psycopg://u@127.0.0.1/m", "module": psycopg},
        },
    )
    db = SessionExt(app)
    with app.app_context():
        pools = {key: engine.pool for key, engine in db.engines.items()}
    assert {key: pool._pre_ping for key, pool in pools.items()} == {
        None: False,
        "own": True,
        "off": False,
        "module": True,
    }
    assert [len(pools[key].dispatch.checkout) for key in pools] == [1, 0, 0, 0]
    assert [len(pools[key].dispatch.checkin) for key in pools] == [1, 0, 0, 0]
    with signals.checkout.connected_to(lambda sender, **kw: None, sender=app):
        assert len(pools[None].dispatch.checkout) == 1
        assert len(pools["own"].dispatch.checkout) == 1

    always = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI="postgresql+psycopg://u@127.0.0.1/x",
        SESSIONEXT_PING_AFTER_IDLE=0,
    )
    db = SessionExt(always)
    with always.app_context():
        assert db.engine.pool._pre_ping is True
        assert len(db.engine.pool.dispatch.checkout) == 0


@pytest.mark.parametrize(
    ("value", "error"),
    [("30", TypeError), (True, TypeError), (None, TypeError), (-1, ValueError)],
)
def test_bad_ping_after_idle(
    tmp_path: Path, value: object, error: type[Exception]
) -> None:
    """A SESSIONEXT_PING_AFTER_IDLE that is not a number of seconds of at
    least 0 is refused at init_app, naming the key, the value and what is
    accepted.
    """
    app = make_app(tmp_path, SESSIONEXT_PING_AFTER_IDLE=value)
    with pytest.raises(
        error,
        match=rf"'SESSIONEXT_PING_AFTER_IDLE' must be a number of seconds of at"
        rf" least 0 \(0 pings on every checkout\), not {re.escape(repr(value))}\.",
    ):
        SessionExt(app)


def test_nan_ping_after_idle(tmp_path: Path) -> None:
    """NaN is no number of seconds for SESSIONEXT_PING_AFTER_IDLE."""
    app = make_app(tmp_path, SESSIONEXT_PING_AFTER_IDLE=math.nan)
    with pytest.raises(ValueError, match=r"'SESSIONEXT_PING_AFTER_IDLE' .*, not nan"):
        SessionExt(app)


def test_engine_options_merge_key_by_key(tmp_path: Path) -> None:
    """Constructor options are overridden by config, config by a bind's dict."""
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI="sqlite:///a.db",
        SESSIONEXT_ENGINE_OPTIONS={"pool_size": 3},
        SESSIONEXT_BINDS={"b": {"url": "sqlite:///b.db", "pool_size": 7}},
        SESSIONEXT_ECHO=True,
    )
    db = SessionExt(app, engine_options={"pool_size": 1, "max_overflow": 2})
    with app.app_context():
        assert db.engine.pool.size() == 3  # type: ignore[attr-defined]
        assert db.engine.pool._max_overflow == 2  # type: ignore[attr-defined]
        assert db.get_engine("b").pool.size() == 7  # type: ignore[attr-defined]
        assert db.engine.echo is True


def test_session_options_merge(tmp_path: Path) -> None:
    """Session options of the constructor and the config reach the sessionmaker."""
    app = make_app(tmp_path, SESSIONEXT_SESSION_OPTIONS={"autoflush": False})
    db = SessionExt(app, session_options={"expire_on_commit": False})
    with app.app_context():
        assert db.session.autoflush is False
        assert db.session().expire_on_commit is False


def test_session_options_class(tmp_path: Path) -> None:
    """A ``class_`` session option is mixed into the app's Session class."""

    class MySession(sa.orm.Session):
        marker = "mine"

    app = make_app(tmp_path, SESSIONEXT_SESSION_OPTIONS={"class_": MySession})
    db = SessionExt(app)
    with app.app_context():
        assert isinstance(db.session(), MySession)


def test_session_options_class_must_be_a_session(tmp_path: Path) -> None:
    """A ``class_`` that is no Session class is refused by name."""
    app = make_app(tmp_path, SESSIONEXT_SESSION_OPTIONS={"class_": dict})
    with pytest.raises(TypeError, match="'class_' session option must be a subclass"):
        SessionExt(app)


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        (
            f"not a url :{PASSWORD}@",
            "'SESSIONEXT_DATABASE_URI' is not a valid database URL",
        ),
        (f"nosuchdb://u:{PASSWORD}@h/x", "unknown dialect or driver 'nosuchdb'"),
        (
            f"postgresql+nosuchdriver://u:{PASSWORD}@h/x",
            "unknown dialect or driver 'postgresql\\+nosuchdriver'",
        ),
        (
            f"mysql+pymysql://u:{PASSWORD}@h/x",
            "'mysql\\+pymysql', whose driver is not installed .* pip install PyMySQL",
        ),
    ],
)
def test_bad_url(tmp_path: Path, uri: str, match: str) -> None:
    """A bad URL fails in init_app with ValueError, and no password."""
    app = make_app(tmp_path, SESSIONEXT_DATABASE_URI=uri)
    with pytest.raises(ValueError, match=match) as info:
        SessionExt(app)
    assert_no_password(info.value)


def test_missing_driver_names_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing PostgreSQL driver is one line that names the extra to
    install, without the driver's traceback or the password.
    """
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    uri = f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1/x"
    app = make_app(tmp_path, SESSIONEXT_DATABASE_URI=uri)
    with pytest.raises(
        ValueError, match=r"pip install 'Flask-SessionExt\[postgresql\]'"
    ) as info:
        SessionExt(app)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert_no_password(info.value)


def test_bad_bind_url_names_the_bind(tmp_path: Path) -> None:
    """A bad bind URL names its key."""
    app = make_app(tmp_path, SESSIONEXT_BINDS={"reports": f"nosuch://u:{PASSWORD}@h/x"})
    with pytest.raises(ValueError, match=r"'SESSIONEXT_BINDS\['reports'\]'") as info:
        SessionExt(app)
    assert_no_password(info.value)


@pytest.mark.parametrize("bind", [42, ["sqlite://"], None])
def test_bind_neither_string_nor_dict(tmp_path: Path, bind: object) -> None:
    """A bind that is neither a URL string nor a dict is a TypeError."""
    app = make_app(tmp_path, SESSIONEXT_BINDS={"x": bind})
    with pytest.raises(
        TypeError, match=r"'SESSIONEXT_BINDS\['x'\]' must be a URL string or a dict"
    ):
        SessionExt(app)


def test_bind_dict_without_url(tmp_path: Path) -> None:
    """A bind dict needs a ``url`` key."""
    app = make_app(tmp_path, SESSIONEXT_BINDS={"x": {"echo": True}})
    with pytest.raises(TypeError, match="is a dict without a 'url' key"):
        SessionExt(app)


def test_binds_not_a_mapping(tmp_path: Path) -> None:
    """SESSIONEXT_BINDS must be a mapping."""
    app = make_app(tmp_path, SESSIONEXT_BINDS=["sqlite://"])
    with pytest.raises(TypeError, match="'SESSIONEXT_BINDS' must be a mapping"):
        SessionExt(app)


@pytest.mark.parametrize(
    "key", ["SESSIONEXT_ENGINE_OPTIONS", "SESSIONEXT_SESSION_OPTIONS"]
)
def test_options_not_a_mapping(tmp_path: Path, key: str) -> None:
    """An options key that is neither a mapping nor None is a TypeError."""
    app = make_app(tmp_path, **{key: "echo=True"})
    with pytest.raises(
        TypeError, match=f"'{key}' must be a mapping .* not str 'echo=True'"
    ):
        SessionExt(app)


@pytest.mark.parametrize(
    "key", ["SESSIONEXT_ENGINE_OPTIONS", "SESSIONEXT_SESSION_OPTIONS"]
)
def test_options_none_means_no_options(tmp_path: Path, key: str) -> None:
    """None for an options key means no options."""
    app = make_app(tmp_path, **{key: None})
    SessionExt(app)
    assert "sessionext" in app.extensions


def test_constructor_options_not_a_mapping() -> None:
    """Constructor options must be mappings."""
    with pytest.raises(TypeError, match="'engine_options' must be a mapping"):
        SessionExt(engine_options=[("echo", True)])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["sometimes", True, 0, "FETCH"])
def test_bad_synchronize_session(tmp_path: Path, value: object) -> None:
    """An unknown SESSIONEXT_SYNCHRONIZE_SESSION value lists the accepted ones."""
    app = make_app(tmp_path, SESSIONEXT_SYNCHRONIZE_SESSION=value)
    with pytest.raises(
        ValueError,
        match="'SESSIONEXT_SYNCHRONIZE_SESSION' must be one of 'auto',"
        f" 'evaluate', 'fetch' or False, not {value!r}",
    ):
        SessionExt(app)


def test_bad_boolean_key(tmp_path: Path) -> None:
    """A boolean key with another type is refused."""
    app = make_app(tmp_path, SESSIONEXT_COMMIT_ON_TEARDOWN="yes")
    with pytest.raises(
        TypeError,
        match="'SESSIONEXT_COMMIT_ON_TEARDOWN' must be True or False, not 'yes'",
    ):
        SessionExt(app)


def test_init_app_twice(tmp_path: Path) -> None:
    """An app takes one SessionExt, from the same or another instance."""
    app = make_app(tmp_path)
    db = SessionExt(app)
    with pytest.raises(RuntimeError, match="already has a SessionExt"):
        db.init_app(app)
    with pytest.raises(RuntimeError, match="already has a SessionExt"):
        SessionExt(app)


def test_outside_app_context(tmp_path: Path) -> None:
    """Using the session, and reading the engines, need an app context, and
    the error says how to push one.
    """
    db = SessionExt(make_app(tmp_path))
    for access in (
        lambda: db.session(),
        lambda: db.session.execute(sa.text("SELECT 1")),
        lambda: db.session.new,
        lambda: db.engine,
        lambda: db.engines,
    ):
        with pytest.raises(RuntimeError, match=r"with app\.app_context\(\):"):
            access()
    with (
        pytest.raises(RuntimeError, match=r"with app\.app_context\(\):"),
        db.session_scope(),
    ):
        pass


def test_app_not_registered(tmp_path: Path) -> None:
    """An app that was never init_app-ed is named in the error."""
    db = SessionExt()
    app = make_app(tmp_path)
    with app.app_context():
        with pytest.raises(
            RuntimeError, match=r"'test_config' is not registered .* 'db\.init_app"
        ):
            db.session.execute(sa.text("SELECT 1"))
        with pytest.raises(RuntimeError, match="is not registered"):
            db.engine  # noqa: B018


def test_unknown_bind_key(tmp_path: Path) -> None:
    """An unknown bind key is a KeyError listing the known keys."""
    app = make_app(tmp_path, SESSIONEXT_BINDS={"other": "sqlite://"})
    db = SessionExt(app)
    with app.app_context(), pytest.raises(KeyError, match=r"'nope'.*None, 'other'"):
        db.get_engine("nope")


def test_no_password_in_reprs(tmp_path: Path) -> None:
    """The password of a URL appears in no repr of the extension's objects."""
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI=f"postgresql+psycopg://user:{PASSWORD}@127.0.0.1/x",
    )
    db = SessionExt(app)
    with app.app_context():
        texts = [
            repr(db),
            repr(db.engine),
            repr(dict(db.engines)),
            repr(app.extensions),
        ]
        texts.append(str(db.engine.url))
    assert all(PASSWORD not in text for text in texts)


def assert_no_password(exc: BaseException) -> None:
    """Neither the error nor anything it chains to mentions the password."""
    seen: BaseException | None = exc
    while seen is not None:
        assert PASSWORD not in str(seen)
        assert PASSWORD not in repr(seen.args)
        seen = seen.__cause__ or seen.__context__
