"""The settings object that init_app reads from app.config in one pass."""

from __future__ import annotations

import dataclasses
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Config, Flask
from sqlalchemy.pool import QueuePool

from flask_sessionext import SessionExt
from flask_sessionext._config.settings import (
    commit_on_teardown,
    raise_receiver_errors,
    read_settings,
)
from flask_sessionext._features.recording import Recorder
from flask_sessionext.signals import after_commit

from models import Base, User

_ENGINE_ARGUMENT = "The 'engine_options' of SessionExt()"


def make_app(tmp_path: Path, **config: t.Any) -> Flask:
    """A Flask app with an instance folder under ``tmp_path``."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(config)
    return app


class _MySession(orm.Session):
    """A user-given Session class."""


def test_settings_are_frozen(tmp_path: Path) -> None:
    """Neither the settings nor their mappings can be changed once read."""
    settings = read_settings(make_app(tmp_path), engine_options={}, session_options={})
    with pytest.raises(dataclasses.FrozenInstanceError, match="ping_after_idle"):
        settings.ping_after_idle = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError, match="record"):
        settings.recording.record = True  # type: ignore[misc]
    bind = settings.binds[None]
    with pytest.raises(dataclasses.FrozenInstanceError, match="url"):
        bind.url = sa.make_url("sqlite://")  # type: ignore[misc]
    with pytest.raises(TypeError, match="does not support item assignment"):
        bind.options["echo"] = True  # type: ignore[index]
    with pytest.raises(TypeError, match="does not support item assignment"):
        settings.binds["x"] = bind  # type: ignore[index]


def test_default_bind_first(tmp_path: Path) -> None:
    """The default bind comes first, then SESSIONEXT_BINDS in their order,
    each with the config key that names it and its parsed URL.
    """
    app = make_app(
        tmp_path,
        SESSIONEXT_BINDS={"b": "sqlite:///b.sqlite3", "a": {"url": "sqlite://"}},
    )
    settings = read_settings(app, engine_options={}, session_options={})
    assert list(settings.binds) == [None, "b", "a"]
    assert [bind.key for bind in settings.binds.values()] == [None, "b", "a"]
    assert [bind.where for bind in settings.binds.values()] == [
        "SESSIONEXT_DATABASE_URI",
        "SESSIONEXT_BINDS['b']",
        "SESSIONEXT_BINDS['a']",
    ]
    assert settings.binds["b"].url.database == str(tmp_path / "instance" / "b.sqlite3")


def test_origins_name_where_each_option_was_set(tmp_path: Path) -> None:
    """An option's origin is the bind's own dict, else
    SESSIONEXT_ENGINE_OPTIONS, else the constructor's engine_options.
    """
    app = make_app(
        tmp_path,
        SESSIONEXT_ENGINE_OPTIONS={"pool_timeout": 7, "echo_pool": False},
        SESSIONEXT_BINDS={"own": {"url": "sqlite:///own.sqlite3", "echo_pool": True}},
    )
    settings = read_settings(
        app,
        engine_options={"pool_recycle": 10, "pool_timeout": 5},
        session_options={},
    )
    default, own = settings.binds[None], settings.binds["own"]
    assert default.options["pool_timeout"] == 7
    assert default.origins["pool_recycle"] == _ENGINE_ARGUMENT
    assert default.origins["pool_timeout"] == "'SESSIONEXT_ENGINE_OPTIONS'"
    assert default.origins["echo_pool"] == "'SESSIONEXT_ENGINE_OPTIONS'"
    assert own.options["echo_pool"] is True
    assert own.origins["echo_pool"] == "'SESSIONEXT_BINDS['own']'"
    assert own.origins["pool_timeout"] == "'SESSIONEXT_ENGINE_OPTIONS'"
    assert "url" not in own.options


@pytest.mark.parametrize(
    ("config", "constructor", "start"),
    [
        (
            {"SESSIONEXT_BINDS": {"own": {"url": "sqlite://", "poolclass": 3}}},
            {},
            r"'SESSIONEXT_BINDS\['own'\]'",
        ),
        (
            {"SESSIONEXT_ENGINE_OPTIONS": {"poolclass": 3}},
            {},
            "'SESSIONEXT_ENGINE_OPTIONS'",
        ),
        ({}, {"poolclass": 3}, r"The 'engine_options' of SessionExt\(\)"),
    ],
    ids=["bind", "config", "constructor"],
)
def test_refused_option_names_its_origin(
    tmp_path: Path,
    config: dict[str, t.Any],
    constructor: dict[str, t.Any],
    start: str,
) -> None:
    """An engine option that create_engine() refuses is reported with where
    it was set.
    """
    app = make_app(tmp_path, **config)
    with pytest.raises(TypeError, match=rf"^{start} has 'poolclass' = int 3, "):
        SessionExt(app, engine_options=constructor)


def test_extension_defaults_in_options(tmp_path: Path) -> None:
    """The options hold the extension's own defaults: the one-connection pool
    of in-memory SQLite, and echo from SESSIONEXT_ECHO.
    """
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI="sqlite://",
        SESSIONEXT_ECHO=True,
        SESSIONEXT_ENGINE_OPTIONS={"connect_args": {"timeout": 3}},
    )
    bind = read_settings(app, engine_options={}, session_options={}).binds[None]
    assert bind.options["poolclass"] is QueuePool
    assert bind.options["pool_size"] == 1
    assert bind.options["max_overflow"] == 0
    assert bind.options["connect_args"] == {"timeout": 3, "check_same_thread": False}
    assert bind.options["echo"] is True
    assert bind.origins["echo"] == "'SESSIONEXT_ECHO'"
    assert bind.origins["poolclass"] == _ENGINE_ARGUMENT
    assert bind.origins["connect_args"] == "'SESSIONEXT_ENGINE_OPTIONS'"
    assert not bind.liveness


@pytest.mark.parametrize(
    ("options", "liveness"),
    [({}, True), ({"pool_pre_ping": True}, False)],
    ids=["checked", "pre-ping"],
)
def test_liveness_replaces_pre_ping(
    tmp_path: Path, options: dict[str, t.Any], liveness: bool
) -> None:
    """A psycopg bind gets the liveness check instead of pool_pre_ping,
    unless its options set pool_pre_ping.
    """
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI="postgresql+psycopg://u@127.0.0.1/x",
        SESSIONEXT_ENGINE_OPTIONS=options,
    )
    bind = read_settings(app, engine_options={}, session_options={}).binds[None]
    assert bind.liveness is liveness
    assert bind.options.get("pool_pre_ping") is (None if liveness else True)


def test_session_class_read_apart(tmp_path: Path) -> None:
    """The class_ session option is kept apart from the sessionmaker's
    keyword arguments, and the app's Session class derives from it.
    """
    app = make_app(
        tmp_path,
        SESSIONEXT_SESSION_OPTIONS={"class_": _MySession, "autoflush": False},
    )
    settings = read_settings(
        app, engine_options={}, session_options={"expire_on_commit": False}
    )
    assert settings.session_class is _MySession
    assert dict(settings.session_options) == {
        "expire_on_commit": False,
        "autoflush": False,
    }
    db = SessionExt(app)
    with app.app_context():
        assert isinstance(db.session(), _MySession)


def test_recording_settings_are_the_recorder_attributes(tmp_path: Path) -> None:
    """The recording settings, read with their defaults, are what the app's
    Recorder feature works with.
    """
    app = make_app(tmp_path, SESSIONEXT_SLOW_QUERY_THRESHOLD=1)
    app.testing = True
    settings = read_settings(app, engine_options={}, session_options={})
    SessionExt(app)
    recorder = app.extensions["sessionext"].feature(Recorder)
    for field in dataclasses.fields(settings.recording):
        if field.name != "root_path":
            value = getattr(settings.recording, field.name)
            assert getattr(recorder, field.name) == value, field.name
    assert settings.recording == type(settings.recording)(
        record=True,
        limit=1000,
        parameters=False,
        threshold=1.0,
        server_timing=False,
        root_path=app.root_path,
    )


@pytest.mark.parametrize(
    ("key", "read"),
    [
        ("SESSIONEXT_COMMIT_ON_TEARDOWN", commit_on_teardown),
        ("SESSIONEXT_RAISE_RECEIVER_ERRORS", raise_receiver_errors),
    ],
    ids=["commit", "raise"],
)
def test_live_keys_read_when_used(
    tmp_path: Path, key: str, read: t.Callable[[Flask], bool]
) -> None:
    """The two live keys are read, and checked, each time they are used."""
    app = make_app(tmp_path)
    SessionExt(app)
    assert read(app) is False
    app.config[key] = True
    assert read(app) is True
    app.config[key] = "yes"
    with pytest.raises(TypeError, match=rf"^'{key}' must be True or False, not 'yes'"):
        read(app)


def test_raise_receiver_errors_checked_by_init_app(tmp_path: Path) -> None:
    """A SESSIONEXT_RAISE_RECEIVER_ERRORS that is not a bool fails at
    init_app, before any receiver can fail.
    """
    app = make_app(tmp_path, SESSIONEXT_RAISE_RECEIVER_ERRORS=1)
    with pytest.raises(
        TypeError, match=r"^'SESSIONEXT_RAISE_RECEIVER_ERRORS' must be True or False"
    ):
        SessionExt(app)


class _ReadRecorder(Config):
    """A config that records the SESSIONEXT_* keys read from it."""

    def __init__(self, root_path: str, defaults: dict[str, t.Any]) -> None:
        super().__init__(root_path, defaults)
        self.read: set[str] = set()

    def _saw(self, key: object) -> None:
        if isinstance(key, str) and key.startswith("SESSIONEXT_"):
            self.read.add(key)

    def __getitem__(self, key: str) -> t.Any:
        self._saw(key)
        return super().__getitem__(key)

    def get(self, key: str, default: t.Any = None) -> t.Any:
        self._saw(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._saw(key)
        return super().__contains__(key)


def test_nothing_reads_config_after_init_app(tmp_path: Path) -> None:
    """After init_app only the two live keys are read from app.config, by a
    request, its teardown commit, a receiver error and a CLI command.
    """
    app = make_app(
        tmp_path,
        SESSIONEXT_DATABASE_URI=f"sqlite:///{tmp_path / 'app.sqlite3'}",
        SESSIONEXT_COMMIT_ON_TEARDOWN=True,
        SESSIONEXT_RECORD_QUERIES=True,
        SESSIONEXT_SERVER_TIMING=True,
    )
    db = SessionExt(app, metadata=Base.metadata)
    config = _ReadRecorder(app.root_path, dict(app.config))
    app.config = config

    @app.get("/")
    def add() -> str:
        db.session.add(User(name="a"))
        return str(len(db.get_recorded_queries()))

    def fail(sender: Flask, **kwargs: object) -> None:
        raise LookupError("logged, not raised")

    with app.app_context():
        db.create_all()
    with after_commit.connected_to(fail, sender=app):
        assert app.test_client().get("/").status_code == 200
    assert app.test_cli_runner().invoke(args=["sessionext", "check"]).exit_code == 0
    with app.app_context():
        assert db.session.scalars(sa.select(User.name)).all() == ["a"]
    assert config.read == {
        "SESSIONEXT_COMMIT_ON_TEARDOWN",
        "SESSIONEXT_RAISE_RECEIVER_ERRORS",
    }
