"""``flask sessionext create-all``, ``drop-all`` and ``signals --connected``."""

from __future__ import annotations

import gc
import logging
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.logging import wsgi_errors_stream

from flask_sessionext import SessionExt, signals

from models import AuditBase, Base, OtherBase


def _tables(engine: sa.Engine) -> set[str]:
    """The names of the tables in the database of ``engine``."""
    return set(sa.inspect(engine).get_table_names())


def test_create_all_and_drop_all(app: Flask) -> None:
    """create-all creates every bind's tables; drop-all --yes drops them."""
    db = SessionExt(
        app, metadata=[Base.metadata, OtherBase.metadata, AuditBase.metadata]
    )
    runner = app.test_cli_runner()
    with app.app_context():
        default, other = db.engine, db.get_engine("other")
    result = runner.invoke(args=["sessionext", "create-all"])
    try:
        assert result.exit_code == 0, result.output
        assert "Created 2 table(s) in bind 'other' (0 already existed)." in (
            result.output
        )
        assert {"users"} <= _tables(default)
        assert not _tables(default) & {"items", "entries"}
        assert {"items", "entries"} <= _tables(other)
    finally:
        result = runner.invoke(args=["sessionext", "drop-all", "--yes"])
    assert result.exit_code == 0, result.output
    assert "Dropped 1 table(s) from the default bind (0 did not exist)." in (
        result.output
    )
    assert not _tables(default) & {"users", "items", "entries"}
    assert not _tables(other) & {"users", "items", "entries"}
    default.dispose()
    other.dispose()


def test_create_all_and_drop_all_twice(app: Flask) -> None:
    """Run twice, create-all counts the tables that already existed and
    drop-all the tables that did not exist.
    """
    db = SessionExt(app, metadata=[Base.metadata, OtherBase.metadata])
    runner = app.test_cli_runner()
    with app.app_context():
        engines = db.engines
    commands = [["create-all"]] * 2 + [["drop-all", "--yes"]] * 2
    outputs = [runner.invoke(args=["sessionext", *cmd]).output for cmd in commands]
    assert outputs == [
        "Created 1 table(s) in the default bind (0 already existed).\n"
        "Created 1 table(s) in bind 'other' (0 already existed).\n",
        "Created 0 table(s) in the default bind (1 already existed).\n"
        "Created 0 table(s) in bind 'other' (1 already existed).\n",
        "Dropped 1 table(s) from the default bind (0 did not exist).\n"
        "Dropped 1 table(s) from bind 'other' (0 did not exist).\n",
        "Dropped 0 table(s) from the default bind (1 did not exist).\n"
        "Dropped 0 table(s) from bind 'other' (1 did not exist).\n",
    ]
    assert not _tables(engines[None]) & {"users"}
    for engine in engines.values():
        engine.dispose()


def test_drop_all_asks(app: Flask) -> None:
    """drop-all without --yes asks, and a "no" drops nothing."""
    db = SessionExt(app, metadata=Base.metadata)
    with app.app_context():
        engine = db.engine
        db.create_all()
        engines = db.engines
    result = app.test_cli_runner().invoke(args=["sessionext", "drop-all"], input="n\n")
    try:
        assert result.exit_code == 1
        assert "Drop every table of every bind?" in result.output
        assert "users" in _tables(engine)
    finally:
        with app.app_context():
            db.drop_all()
        for each in engines.values():
            each.dispose()


def test_create_all_without_metadata(app: Flask) -> None:
    """create-all on an extension with no metadata is a one-line error."""
    SessionExt(app)
    result = app.test_cli_runner().invoke(args=["sessionext", "create-all"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: This SessionExt was given no metadata. Pass your declarative"
        " base's metadata: 'SessionExt(metadata=Base.metadata)'.\n"
    )


def test_drop_all_unknown_bind_key(app: Flask) -> None:
    """drop-all with a table of an unconfigured bind, defined after
    ``init_app``, names it on one line.
    """
    metadata = sa.MetaData(info={"bind_key": "archive"})
    SessionExt(app, metadata=metadata)
    sa.Table("old", metadata, sa.Column("id", sa.Integer, primary_key=True))
    result = app.test_cli_runner().invoke(args=["sessionext", "drop-all", "--yes"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: The table 'old' names the bind key 'archive', which is not"
        " configured; the known bind keys are None, 'other'. Add it to"
        " 'SESSIONEXT_BINDS'.\n"
    )


def _on_created(app: Flask, session: sa.orm.Session) -> None:
    """A receiver of ``session_created`` for the ``signals`` tests."""


def _on_anything(app: Flask, **kwargs: t.Any) -> None:
    """A receiver of any signal for the ``signals`` tests."""


@pytest.mark.parametrize("database", ["sqlite"])
def test_signals_connected(app: Flask) -> None:
    """``signals --connected`` lists only the signals with receivers for the
    app, those connected for every sender included.
    """
    app.config["SESSIONEXT_RECORD_QUERIES"] = False  # no receivers of its own
    SessionExt(app)
    other = Flask("other")
    with (
        signals.session_created.connected_to(_on_created, app),
        signals.before_flush.connected_to(_on_anything),
        signals.after_commit.connected_to(_on_anything, other),
    ):
        result = app.test_cli_runner().invoke(
            args=["sessionext", "signals", "--connected"]
        )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["signal", "SQLAlchemy", "event", "receivers"]
    assert [line.split()[0] for line in lines[1:]] == [
        "before_flush",
        "session_created",
    ]
    assert lines[2].split()[1:] == [
        "(this",
        "extension)",
        "test_cli._on_created",
    ]


@pytest.mark.parametrize("database", ["sqlite"])
def test_signals_connected_none(app: Flask) -> None:
    """``signals --connected`` says so when no signal has a receiver."""
    app.config["SESSIONEXT_RECORD_QUERIES"] = False
    SessionExt(app)
    result = app.test_cli_runner().invoke(args=["sessionext", "signals", "--connected"])
    assert result.exit_code == 0, result.output
    assert result.output == "No signal has a receiver for this app.\n"


@pytest.mark.parametrize("database", ["sqlite"])
def test_signals_names_collected_receivers(app: Flask) -> None:
    """``signals`` first logs the receivers that were garbage-collected while
    connected, which its list cannot show.
    """
    app.config["SESSIONEXT_RECORD_QUERIES"] = False
    SessionExt(app)

    def connect_in_factory() -> None:
        def on_created(app: Flask, session: sa.orm.Session) -> None:
            pass

        signals.session_created.connect(on_created, sender=app)

    connect_in_factory()
    gc.collect()
    # Flask's own handler writes to the runner's stderr; pytest's replaces it.
    handler = logging.StreamHandler(t.cast(t.TextIO, wsgi_errors_stream))
    app.logger.addHandler(handler)
    result = app.test_cli_runner().invoke(args=["sessionext", "signals", "--connected"])
    app.logger.removeHandler(handler)
    assert result.exit_code == 0, result.output
    warning, listing = result.output.splitlines()
    assert warning.endswith(
        "connect_in_factory.<locals>.on_created' of signal 'session_created'"
        " was garbage-collected while connected, so it no longer runs: Blinker"
        " holds a receiver weakly unless told otherwise, and a function defined"
        " inside another one dies when that one returns. Connect it with"
        " 'weak=False' (or 'connect_via(app)'), or define it at module level."
    )
    assert listing == "No signal has a receiver for this app."
