"""Every way to commit keeps the promises of ``models_committed``,
``before_models_committed`` and ``on_commit``, and the receiver-error policy.
"""

from __future__ import annotations

import logging
import typing as t
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import orm

from flask_sessionext import SessionExt, signals

from helpers import checked_out, count_rows
from models import User

Work = Callable[[orm.Session], None]


def _commit(db: SessionExt, work: Work) -> None:
    work(db.session())
    db.session.commit()


def _begin_block(db: SessionExt, work: Work) -> None:
    with db.session.begin():
        work(db.session())


def _get_transaction(db: SessionExt, work: Work) -> None:
    work(db.session())
    transaction = db.session().get_transaction()
    assert transaction is not None
    transaction.commit()


def _transaction(db: SessionExt, work: Work) -> None:
    with db.transaction() as session:
        work(session)


def _nested_transaction(db: SessionExt, work: Work) -> None:
    with db.transaction(), db.transaction() as session:
        work(session)


def _begin_nested(db: SessionExt, work: Work) -> None:
    with db.session.begin_nested():
        work(db.session())
    db.session.commit()


def _session_scope(db: SessionExt, work: Work) -> None:
    with db.session_scope() as session:
        work(session)


def _teardown(db: SessionExt, work: Work) -> None:
    work(db.session())


@dataclass(frozen=True)
class CommitPath:
    """A way to commit: ``run(db, work)`` inside an app context."""

    name: str
    run: Callable[[SessionExt, Work], None]
    #: Whether the work is on ``db.session``, where ``on_commit`` registers.
    on_db_session: bool = True
    #: Whether the commit is the one at the app context's teardown.
    at_teardown: bool = False


PATHS = [
    CommitPath("session.commit()", _commit),
    CommitPath("with session.begin()", _begin_block),
    CommitPath("get_transaction().commit()", _get_transaction),
    CommitPath("db.transaction()", _transaction),
    CommitPath("nested db.transaction()", _nested_transaction),
    CommitPath("begin_nested() then commit()", _begin_nested),
    CommitPath("db.session_scope()", _session_scope, on_db_session=False),
    CommitPath("teardown commit", _teardown, at_teardown=True),
]
DB_SESSION_PATHS = [path for path in PATHS if path.on_db_session]


def ids(path: CommitPath) -> str:
    """The test id of a path."""
    return path.name


@pytest.fixture
def app(app: Flask, path: CommitPath) -> Flask:
    """The app, committing at teardown for the teardown path."""
    app.config["SESSIONEXT_COMMIT_ON_TEARDOWN"] = path.at_teardown
    return app


@pytest.fixture
def old_id(db: SessionExt, app: Flask) -> int:
    """The id of a user committed before the test."""
    with app.app_context():
        with db.session_scope() as session:
            user = User(name="old")
            session.add(user)
            session.flush()
            ident = user.id
        db.session.remove()
    return ident


@dataclass
class Seen:
    """What the change signals and callbacks saw."""

    before: list[set[tuple[str, str]]]
    committed: list[set[tuple[str, str]]]
    callbacks: list[int]


@contextmanager
def watch(app: Flask) -> Iterator[Seen]:
    """Record the sends of both change signals, read while they run."""
    seen = Seen([], [], [])

    def before(sender: Flask, changes: list[tuple[User, str]]) -> None:
        seen.before.append({(user.name, op) for user, op in changes})

    def committed(sender: Flask, changes: list[tuple[User, str]]) -> None:
        seen.committed.append({(user.name, op) for user, op in changes})

    with (
        signals.before_models_committed.connected_to(before, sender=app),
        signals.models_committed.connected_to(committed, sender=app),
    ):
        yield seen


def make_work(
    db: SessionExt, old_id: int, seen: Seen, *, on_commit: bool, dup: bool = False
) -> Work:
    """Work that inserts a user and renames the old one, and registers an
    ``on_commit`` callback that counts the users through ``db.session``.
    """

    def callback() -> None:
        count = db.session.scalar(sa.select(sa.func.count()).select_from(User))
        seen.callbacks.append(t.cast(int, count))

    def work(session: orm.Session) -> None:
        session.add(User(id=old_id, name="dup") if dup else User(name="new"))
        old = session.get(User, old_id)
        assert old is not None
        old.name = "renamed"
        if on_commit:
            db.on_commit(callback)

    return work


@pytest.mark.parametrize("path", PATHS, ids=ids)
def test_commit_keeps_promises(
    app: Flask, db: SessionExt, old_id: int, path: CommitPath
) -> None:
    """Both change signals are sent once with exactly the committed changes,
    and callbacks run once, after the commit, able to use ``db.session``.
    """
    expected = {("new", "insert"), ("renamed", "update")}
    with watch(app) as seen:
        with app.app_context():
            work = make_work(db, old_id, seen, on_commit=path.on_db_session)
            path.run(db, work)
            engine = db.engine
        assert seen.before == [expected]
        assert seen.committed == [expected]
        assert seen.callbacks == ([2] if path.on_db_session else [])
    assert count_rows(engine, "users") == 2
    assert checked_out(engine) == 0


@pytest.mark.parametrize("path", PATHS, ids=ids)
def test_failed_commit_sends_nothing(
    app: Flask, db: SessionExt, old_id: int, path: CommitPath
) -> None:
    """A commit that fails on a constraint sends no change signal and runs no
    callback, and leaves nothing behind.
    """
    with watch(app) as seen:
        with (
            pytest.raises(
                sa.exc.IntegrityError, match=r"UNIQUE constraint failed|duplicate key"
            ),
            app.app_context(),
        ):
            engine = db.engine
            path.run(db, make_work(db, old_id, seen, on_commit=True, dup=True))
        with app.app_context():
            db.session.add(User(name="later"))
            db.session.commit()
    assert seen.before == [{("later", "insert")}]
    assert seen.committed == [{("later", "insert")}]
    assert seen.callbacks == []
    assert count_rows(engine, "users") == 2
    assert checked_out(engine) == 0


def _raising_receiver(sender: Flask, changes: list[tuple[User, str]]) -> None:
    raise RuntimeError("receiver failed")


def _raising_callback() -> None:
    raise RuntimeError("callback failed")


RAISERS = [
    pytest.param(path, "receiver", id=f"{path.name}-receiver") for path in PATHS
] + [
    pytest.param(path, "callback", id=f"{path.name}-callback")
    for path in DB_SESSION_PATHS
]


@pytest.mark.parametrize(("path", "raiser"), RAISERS)
@pytest.mark.parametrize("raise_errors", [True, False], ids=["raise", "log"])
def test_raising_receiver_follows_policy(
    app: Flask,
    db: SessionExt,
    old_id: int,
    path: CommitPath,
    raiser: str,
    raise_errors: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising ``models_committed`` receiver or ``on_commit`` callback is
    logged, and raised once the commit is complete with
    ``SESSIONEXT_RAISE_RECEIVER_ERRORS``; the commit stands either way.
    """
    app.config["SESSIONEXT_RAISE_RECEIVER_ERRORS"] = raise_errors
    message = f"{raiser} failed"

    def work(session: orm.Session) -> None:
        session.add(User(name="new"))
        if raiser == "callback":
            db.on_commit(_raising_callback)

    caplog.set_level(logging.ERROR)
    with signals.models_committed.connected_to(
        _raising_receiver if raiser == "receiver" else lambda sender, changes: None,
        sender=app,
    ):
        if raise_errors:
            with pytest.raises(RuntimeError, match=message), app.app_context():
                engine = db.engine
                path.run(db, work)
        else:
            with app.app_context():
                engine = db.engine
                path.run(db, work)
    assert count_rows(engine, "users") == 2
    assert checked_out(engine) == 0
    errors = [r for r in caplog.records if r.exc_info and message in str(r.exc_info[1])]
    assert len(errors) == 1
