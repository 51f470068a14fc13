"""A small task board that shows Flask-SessionExt at work.

``flask --app example_app run`` starts it on the embedded SQLite database in
the instance folder, seeded with demo data on first start. Set
``FLASK_SESSIONEXT_DATABASE_URI`` to run it on another database.
"""

from __future__ import annotations

import logging
import typing as t

import sqlalchemy as sa
from flask import Flask

from flask_sessionext import SessionExt

from . import audit, pool_stats, timing, views
from .cli import cli
from .flush_log import FlushLogger
from .models import Base, Task, User

db = SessionExt()

DEFAULTS: dict[str, t.Any] = {
    "SECRET_KEY": "example-only-not-secret",
    "SESSIONEXT_SERVER_TIMING": True,
    "SESSIONEXT_RECORD_QUERIES": True,
    "SESSIONEXT_SLOW_QUERY_THRESHOLD": 0.05,
    "SESSIONEXT_SYNCHRONIZE_SESSION": "fetch",
}


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """The application factory."""
    app = Flask(__name__)
    app.config.update(DEFAULTS)
    app.config.from_prefixed_env()  # e.g. FLASK_SESSIONEXT_DATABASE_URI=...
    app.config.update(config or {})
    app.logger.setLevel(logging.INFO)

    db.init_app(app)
    db.register(FlushLogger(), app=app)
    audit.init_app(app)
    pool_stats.init_app(app)
    timing.init_app(app)
    app.register_blueprint(views.bp)
    app.cli.add_command(cli)

    with app.app_context():
        Base.metadata.create_all(db.engine)
        seed()
    return app


def seed() -> None:
    """Demo data, on first start only."""
    if db.session.scalar(sa.select(sa.func.count(User.id))):
        return
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
