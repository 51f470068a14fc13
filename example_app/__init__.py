"""A small task board that shows Flask-SessionExt at work.

``flask --app example_app run`` starts it on the embedded SQLite database in
the instance folder. Set ``FLASK_SESSIONEXT_DATABASE_URI`` to run it on
another database.

``create_app()`` opens no connection, so ``flask --app example_app sessionext
check`` can report a database that is down or misconfigured. The tables are
created, and demo data added, by the first request or CLI job that needs them
(or by ``flask --app example_app sessionext create-all``, the outbox included),
which also starts listening to the commits of the other instances (see
``live.py``).
"""

from __future__ import annotations

import logging
import threading
import typing as t

import sqlalchemy as sa
from flask import Flask, current_app, g

from flask_sessionext import SessionExt

from . import api, audit, live, pages, pool_stats, timing, views
from .cli import cli
from .flush_log import FlushLogger
from .models import Base, Task, User

db = SessionExt(metadata=Base.metadata)

DEFAULTS: dict[str, t.Any] = {
    "SECRET_KEY": "example-only-not-secret",
    "SESSIONEXT_SERVER_TIMING": True,
    "SESSIONEXT_RECORD_QUERIES": True,
    "SESSIONEXT_SLOW_QUERY_THRESHOLD": 0.05,
    "SESSIONEXT_SYNCHRONIZE_SESSION": "fetch",
    # Every instance on the database hears of every commit (see live.py).
    "SESSIONEXT_BROADCAST": {"channel": "example_board", "poll_interval": 0.5},
}


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """The application factory."""
    app = Flask(__name__)
    app.config.update(DEFAULTS)
    app.config.from_prefixed_env()  # e.g. FLASK_SESSIONEXT_DATABASE_URI=...
    app.config.update(config or {})
    # Flask shows INFO records only in debug mode; the flush log and the
    # slow-query warnings of this app are meant to be seen.
    app.logger.setLevel(logging.INFO)

    db.init_app(app)
    app.extensions["example_database"] = _Database()
    app.before_request(prepare_database)
    # The handle disconnects the logger, for whoever drops the app.
    app.extensions["example_flush_log"] = db.register(FlushLogger(), app=app)
    audit.init_app(app)
    pool_stats.init_app(app)
    timing.init_app(app)
    pages.init_app(app)
    live.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    app.cli.add_command(cli)
    return app


class _Database:
    """Whether this app's tables and demo data are known to exist."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = False


def prepare_database() -> None:
    """Create the missing tables and add the demo data, once per app.

    It runs before every request and CLI job of the app, and costs a flag
    check once it has run.
    """
    state: _Database = current_app.extensions["example_database"]
    if state.ready:
        return
    with state.lock:
        if not state.ready:
            db.create_all()  # the broadcast's outbox table too
            seed()
            live.listen(current_app._get_current_object())  # type: ignore[attr-defined]
            state.ready = True


def seed() -> None:
    """Demo data, when the database has no user yet."""
    if db.session.scalar(sa.select(sa.func.count(User.id))):
        return
    # The audit log names who made each change; these rows come from here.
    acting = g.pop("user_name", None)
    g.user_name = "demo data"
    ada, grace = User(name="Ada"), User(name="Grace")
    db.session.add_all(
        [
            Task(title="Read the README", owner=ada, done=True),
            Task(title="Run the tests", owner=grace),
            Task(title="Subscribe to models_committed", owner=ada),
            Task(
                title="Look at the Server-Timing header",
                notes="Browser devtools, Network tab",
            ),
        ]
    )
    db.session.commit()
    g.pop("user_name")
    if acting is not None:
        g.user_name = acting
