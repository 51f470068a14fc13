"""``on_commit`` callbacks registered from many threads: none is lost, and
no thread's commit changes the listeners while other threads dispatch them.
"""

from __future__ import annotations

import threading
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_sessionext import SessionExt
from flask_sessionext._engines.listeners import Listeners

THREADS = 8
COMMITS = 5_000


def make_app(tmp_path: Path) -> tuple[Flask, SessionExt]:
    """An app on a SQLite file, recording nothing."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SESSIONEXT_DATABASE_URI=f"sqlite:///{tmp_path / 'threads.sqlite3'}",
        SESSIONEXT_RECORD_QUERIES=False,
    )
    return app, SessionExt(app)


def test_callback_listeners_stay_while_threads_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A callback registered by one thread while another thread's commit
    runs the last waiting callback still runs at its own commit, and no
    commit removes the listeners: SQLAlchemy's listener collections must not
    change while another thread dispatches them.
    """
    app, db = make_app(tmp_path)
    committed = threading.Event()
    registered = threading.Event()
    removed: list[str] = []
    original = Listeners.remove

    def remove(self: Listeners, target: t.Any, identifier: str, handler: t.Any) -> None:
        removed.append(identifier)
        original(self, target, identifier, handler)

    monkeypatch.setattr(Listeners, "remove", remove)
    ran: list[str] = []

    def first() -> None:
        with app.app_context():
            db.on_commit(ran.append, "first")
            db.on_commit(committed.set)
            db.on_commit(registered.wait, 0.5)  # the other thread registers now
            db.session.commit()

    def second() -> None:
        committed.wait(5)
        with app.app_context():
            db.on_commit(ran.append, "second")
            registered.set()
            db.session.commit()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(ran) == ["first", "second"]
    assert removed == []
    app.extensions["sessionext"].engines[None].dispose()


def test_many_threads_lose_no_callback(tmp_path: Path) -> None:
    """8 threads x 5,000 commits, each with a callback: every one runs once."""
    app, db = make_app(tmp_path)
    counts = [0] * THREADS
    errors: list[BaseException] = []

    def run(index: int) -> None:
        def count() -> None:
            counts[index] += 1

        try:
            with app.app_context():
                for _ in range(COMMITS):
                    db.on_commit(count)
                    db.session.commit()
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert counts == [COMMITS] * THREADS
    app.extensions["sessionext"].engines[None].dispose()
