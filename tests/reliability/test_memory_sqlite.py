"""``sqlite://``, an in-memory database on one connection: each session's
transaction has the database to itself, so one request's rollback never
meets another's commit.
"""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

from flask_sessionext import SessionExt

from models import Base, User


def test_rollback_is_not_committed_by_another_thread(tmp_path: Path) -> None:
    """A row that thread A flushes and rolls back is not committed by
    thread B's commit in the meantime: B waits for A's transaction to end.
    """
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(TESTING=True, SESSIONEXT_DATABASE_URI="sqlite://")
    db = SessionExt(app)
    with app.app_context():
        Base.metadata.create_all(db.engine)
    flushed = threading.Event()
    committed = threading.Event()

    def request_a() -> None:
        with app.app_context():
            db.session.add(User(name="rolled back"))
            db.session.flush()
            flushed.set()
            # B runs now, or waits for this transaction to end.
            committed.wait(timeout=0.5)
            db.session.rollback()

    def request_b() -> None:
        flushed.wait()
        with app.app_context():
            db.session.add(User(name="committed"))
            db.session.commit()
        committed.set()

    threads = [threading.Thread(target=request_a), threading.Thread(target=request_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    with app.app_context():
        names = db.session.scalars(sa.select(User.name)).all()
    assert names == ["committed"]
