"""Apps created and dropped leave nothing behind: no app, engine or Session
class alive, SQLAlchemy's listener registry as before, no server connection.
"""

from __future__ import annotations

import gc
import resource
import typing as t
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import event

from flask_sessionext import SessionExt, signals

#: Every feature that installs listeners.
FEATURES: dict[str, t.Any] = {
    "TESTING": True,
    "SESSIONEXT_RECORD_QUERIES": True,
    "SESSIONEXT_SLOW_QUERY_THRESHOLD": 10.0,
    "SESSIONEXT_SERVER_TIMING": True,
    "SESSIONEXT_SYNCHRONIZE_SESSION": "fetch",
}


class Listener:
    """A ``db.register()`` listener, held strongly by its registration."""

    def after_commit(self, sender: Flask, **kwargs: t.Any) -> None:
        """Receive the commit."""


def receive(sender: Flask, **kwargs: t.Any) -> None:
    """A receiver for every app."""


def registry_size() -> int:
    """How many (target, event) pairs SQLAlchemy's listener registry holds."""
    gc.collect()
    return len(event.registry._key_to_collection)


def rss_kib() -> int:
    """The resident set size of this process now, in KiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() // 1024


@pytest.fixture
def for_every_app() -> Iterator[None]:
    """Receivers for every app, weak and strong, and a registration."""
    db = SessionExt()
    with (
        signals.models_committed.connected_to(receive),
        signals.after_commit.connected_to(receive),
        signals.checkout.connected_to(receive),
    ):
        signals.before_flush.connect(receive, weak=False)
        handle = db.register(Listener())
        try:
            yield
        finally:
            handle.disconnect()
            signals.before_flush.disconnect(receive)


def churn(
    count: int, url: str, instance: Path
) -> list[tuple[weakref.ref[t.Any], weakref.ref[t.Any], weakref.ref[t.Any]]]:
    """Create ``count`` apps with every feature on, receivers of their own
    and a query and a commit each, and drop them; weak references to each
    app, its engine and its Session class.
    """
    refs: list[tuple[weakref.ref[t.Any], weakref.ref[t.Any], weakref.ref[t.Any]]] = []
    for i in range(count):
        app = Flask(f"churn{i}", instance_path=str(instance))
        app.config.update(FEATURES, SESSIONEXT_DATABASE_URI=url)
        db = SessionExt(app)
        handle = db.register(Listener(), app=app)
        signals.before_commit.connect(receive, sender=app, weak=False)
        with app.app_context():
            db.session.execute(sa.text("SELECT 1"))
            db.session.commit()
        state = app.extensions["sessionext"]
        refs.append(
            (
                weakref.ref(app),
                weakref.ref(state.engines[None]),
                weakref.ref(state.sessionmaker.class_),
            )
        )
        signals.before_commit.disconnect(receive, sender=app)
        # Blinker keeps a receiver connected for a sender that is gone (by
        # its id): disconnect, as an app's owner must.
        handle.disconnect()
        del app, db, state, handle
        if i % 50 == 49:
            gc.collect()  # Flask apps are cycles: only the collector frees them
    gc.collect()
    return refs


def test_registration_does_not_pin_the_app(tmp_path: Path) -> None:
    """A strong ``db.register(listener, app=app)`` left connected does not
    keep the app alive.
    """
    app = Flask("pinned", instance_path=str(tmp_path))
    app.config["SESSIONEXT_DATABASE_URI"] = "sqlite://"
    handle = SessionExt(app).register(Listener(), app=app)
    ref = weakref.ref(app)
    del app
    gc.collect()
    assert ref() is None
    handle.disconnect()


@pytest.mark.usefixtures("for_every_app")
def test_sqlite_apps_leave_nothing(tmp_path: Path) -> None:
    """1,000 SQLite apps come and go: nothing of them stays alive."""
    url = f"sqlite:///{tmp_path / 'churn.sqlite3'}"
    churn(20, url, tmp_path)  # warm-up: imports, caches
    before, rss = registry_size(), rss_kib()
    refs = churn(1_000, url, tmp_path)
    alive = [sum(ref() is not None for ref in kind) for kind in zip(*refs)]
    assert alive == [0, 0, 0]
    assert registry_size() == before
    assert rss_kib() - rss < 5 * 1024


@pytest.mark.usefixtures("for_every_app")
def test_postgres_apps_leave_no_connection(tmp_path: Path, postgres_url: str) -> None:
    """200 PostgreSQL apps come and go: no engine stays, and no server
    connection is left open.
    """
    watcher = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    database = sa.make_url(postgres_url).database

    def connections() -> int:
        with watcher.connect() as conn:
            count = conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            )
        return t.cast(int, count)

    before = registry_size()
    refs = churn(200, postgres_url, tmp_path)
    alive = [sum(ref() is not None for ref in kind) for kind in zip(*refs)]
    assert alive == [0, 0, 0]
    assert registry_size() == before
    assert connections() == 0
    watcher.dispose()
