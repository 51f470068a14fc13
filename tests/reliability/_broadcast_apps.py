"""The processes of the broadcast tests: a Flask app factory with
``SESSIONEXT_BROADCAST`` on, for gunicorn, and a standalone process (``python
-m reliability._broadcast_apps DIR``) that stands for another machine.

Every process records what ``models_committed_anywhere`` sent it: the
sequence, whether it was local, and the primary keys of the changes. The
standalone process is driven by files in ``DIR``: it writes ``ready-PID``
once its listener is up to date, publishes (one row per transaction, retrying
through failures) from the appearance of ``go`` until that of ``stop``, then
waits until it has received the last publication of the outbox and writes
what it received to ``result-PID.json``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import typing as t
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import Flask, jsonify
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_sessionext import CommittedChange, SessionExt
from flask_sessionext._features.broadcast import Broadcast
from flask_sessionext._features.outbox import outbox_table
from flask_sessionext.signals import models_committed_anywhere

#: The environment variable holding the database URL.
DATABASE_ENV = "SESSIONEXT_BROADCAST_DATABASE_URL"
#: The settings of SESSIONEXT_BROADCAST in the tests' processes.
SETTINGS = {"channel": "reliability", "poll_interval": 0.05}


class Base(DeclarativeBase):
    """The models of the broadcast apps."""


class Note(Base):
    """A row that one transaction wrote; ``origin`` is the writing process."""

    __tablename__ = "broadcast_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    origin: Mapped[int]


db = SessionExt()
#: What this process received: (sequence, local, primary keys).
received: list[tuple[int, bool, list[int]]] = []
_received_lock = threading.Lock()


def on_change(
    sender: Flask, changes: list[CommittedChange], local: bool, sequence: int
) -> None:
    """Record a publication."""
    assert all(change.model is Note for change in changes)
    with _received_lock:
        received.append((sequence, local, [c.primary_key[0] for c in changes]))


def make_app(url: str) -> Flask:
    """The app, with its receiver connected."""
    app = Flask(__name__)
    app.config.update(SESSIONEXT_DATABASE_URI=url, SESSIONEXT_BROADCAST=SETTINGS)
    db.init_app(app)
    models_committed_anywhere.connect(on_change, sender=app, weak=False)
    return app


def wait_until_listening(app: Flask, timeout: float = 15.0) -> None:
    """Wait until the listener of this process is up to date."""
    broadcast = app.extensions["sessionext"].feature(Broadcast)
    deadline = time.monotonic() + timeout
    while True:
        listener = broadcast.listener
        if listener is not None and listener.connected.wait(0.05):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the broadcast listener did not start")


def publish_one(app: Flask) -> bool:
    """Commit one note; whether the commit went through without error."""
    with app.app_context():
        try:
            db.session.add(Note(origin=os.getpid()))
            db.session.commit()
        except sa_exc.DBAPIError:
            db.session.rollback()
            return False
    return True


def outbox_ids(app: Flask) -> set[int]:
    """The ids of the outbox, retrying while the database is away."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with app.app_context(), db.engine.connect() as conn:
                return set(conn.scalars(sa.select(outbox_table.c.id)))
        except sa_exc.DBAPIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_for_everything(app: Flask, timeout: float = 20.0) -> None:
    """Wait until this process has received every publication of the
    outbox, and no new one came for a second: another process may still
    commit its last one after this one stopped (and a publication's number
    is not always above the last delivered).
    """
    deadline = time.monotonic() + timeout
    settled = None
    while time.monotonic() < deadline:
        ids = outbox_ids(app)
        with _received_lock:
            got = {sequence for sequence, _, _ in received}
        if ids <= got:
            if settled is None:
                settled = time.monotonic()
            elif time.monotonic() - settled >= 1.0:
                return
        else:
            settled = None
        time.sleep(0.05)


def create_app() -> Flask:
    """The gunicorn app, created before the fork, on fresh tables."""
    app = make_app(os.environ[DATABASE_ENV])

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.post("/commit")
    def commit() -> t.Any:
        time.sleep(0.05)  # so that concurrent requests spread over the workers
        return jsonify(pid=os.getpid(), ok=publish_one(app))

    @app.get("/received")
    def report() -> t.Any:
        time.sleep(0.05)
        broadcast = app.extensions["sessionext"].feature(Broadcast)
        listener = broadcast.listener
        listening = listener is not None and listener.connected.is_set()
        with _received_lock:
            return jsonify(pid=os.getpid(), received=received, listening=listening)

    return app


def main(directory: Path) -> None:
    """The standalone process: see the module's docstring."""
    app = make_app(os.environ[DATABASE_ENV])
    wait_until_listening(app)
    pid = os.getpid()
    (directory / f"ready-{pid}").touch()
    while not (directory / "go").exists():
        time.sleep(0.01)
    published = failed = 0
    while not (directory / "stop").exists():
        if publish_one(app):
            published += 1
        else:
            failed += 1
            time.sleep(0.05)
        time.sleep(0.01)
    wait_for_everything(app)
    with _received_lock:
        result = {
            "pid": pid,
            "published": published,
            "failed": failed,
            "received": received,
        }
    path = directory / f"result-{pid}.json"
    path.with_suffix(".tmp").write_text(json.dumps(result))
    path.with_suffix(".tmp").rename(path)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
