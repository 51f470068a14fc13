"""Model change signals, on_commit callbacks and session lifecycle signals."""

from __future__ import annotations

import logging
import typing as t
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from blinker import ANY
from flask import Flask, current_app
from flask.ctx import AppContext

from flask_sessionext import SessionExt, signals
from flask_sessionext.testing import capture_signal

from helpers import count_rows
from models import Base, User


@contextmanager
def committed(app: Flask | None = None) -> Iterator[list[list[tuple[str, str]]]]:
    """Record each models_committed send as (name, operation) pairs, read
    while the receiver runs.
    """
    sent: list[list[tuple[str, str]]] = []

    def receive(sender: Flask, changes: list[tuple[User, str]]) -> None:
        sent.append([(obj.name, op) for obj, op in changes])

    with signals.models_committed.connected_to(receive, sender=app or ANY):
        yield sent


def test_insert_update_delete(app_ctx: AppContext, db: SessionExt) -> None:
    """Each commit reports its net changes once, with the app as sender,
    including what the commit itself flushes.
    """
    app = app_ctx.app
    with capture_signal(signals.models_committed, app) as sent:
        user = User(name="a")
        db.session.add(user)
        db.session.commit()
        user.name = "b"
        db.session.commit()
        db.session.delete(user)
        db.session.commit()
    assert [sender for sender, _ in sent] == [app, app, app]
    assert [kwargs["changes"] for _, kwargs in sent] == [
        [(user, "insert")],
        [(user, "update")],
        [(user, "delete")],
    ]


def test_net_changes_fold(app_ctx: AppContext, db: SessionExt) -> None:
    """Inserted then updated is an insert, updated then deleted a delete,
    inserted then deleted nothing, in first-flush order.
    """
    db.session.add_all([User(name="old"), User(name="doomed")])
    db.session.commit()
    old, doomed = db.session.scalars(sa.select(User).order_by(User.id)).all()
    with capture_signal(signals.models_committed) as sent:
        fresh, brief = User(name="fresh"), User(name="brief")
        db.session.add_all([fresh, brief])
        db.session.flush()
        old.name = "older"
        doomed.name = "still doomed"
        db.session.flush()
        fresh.name = "fresher"
        db.session.delete(brief)
        db.session.delete(doomed)
        db.session.commit()
    ((_, kwargs),) = sent
    changes = kwargs["changes"]
    assert {(obj.name, op) for obj, op in changes} == {
        ("fresher", "insert"),
        ("older", "update"),
        ("still doomed", "delete"),
    }
    assert changes[0] == (fresh, "insert")  # first flushed
    assert [op for _, op in changes[1:]] in (["update", "delete"], ["delete", "update"])


def test_nothing_sent_without_net_changes(app_ctx: AppContext, db: SessionExt) -> None:
    """A commit whose changes cancel out, or that changed nothing, sends
    nothing.
    """
    with committed() as sent:
        user = User(name="brief")
        db.session.add(user)
        db.session.flush()
        db.session.delete(user)
        db.session.commit()
        db.session.execute(sa.select(User))
        db.session.commit()
    assert sent == []


def test_savepoints(app_ctx: AppContext, db: SessionExt) -> None:
    """Released savepoints are reported at the outer commit, not at the
    release; rolled-back ones, also inside a released one, are not.
    """
    with committed() as sent:
        db.session.add(User(name="outer"))
        with db.transaction():
            with db.transaction():
                db.session.add(User(name="released"))
            assert sent == []
            with pytest.raises(ZeroDivisionError), db.transaction():
                db.session.add(User(name="rolled back"))
                db.session.flush()
                raise ZeroDivisionError
            with db.transaction():
                db.session.add(User(name="released outer"))
                with pytest.raises(ZeroDivisionError), db.transaction():
                    db.session.add(User(name="rolled back inner"))
                    db.session.flush()
                    raise ZeroDivisionError
    assert len(sent) == 1
    assert sorted(sent[0]) == [
        ("outer", "insert"),
        ("released", "insert"),
        ("released outer", "insert"),
    ]
    assert count_rows(db.engine, "users") == 3


def test_savepoint_rollback_keeps_outer_changes(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """Rolling back a savepoint forgets only its own changes."""
    with committed() as sent:
        db.session.add(User(name="outer"))
        db.session.flush()
        savepoint = db.session.begin_nested()
        db.session.add(User(name="inner"))
        db.session.flush()
        savepoint.rollback()
        db.session.commit()
    assert sent == [[("outer", "insert")]]


def test_rollback_reports_nothing_and_leaves_nothing(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """A rolled-back transaction reports nothing, and the next transaction
    reports only its own changes.
    """
    with committed() as sent:
        db.session.add(User(name="lost"))
        db.session.flush()
        db.session.rollback()
        db.session.add(User(name="kept"))
        db.session.commit()
    assert sent == [[("kept", "insert")]]


def test_failing_flush(app_ctx: AppContext, db: SessionExt) -> None:
    """A flush that fails reports nothing, before or after the rollback."""
    db.session.add(User(id=1000, name="first"))
    db.session.commit()
    with committed() as sent:
        db.session.add(User(name="partner"))
        db.session.flush()
        db.session.add(User(id=1000, name="duplicate"))
        with pytest.raises(sa.exc.IntegrityError, match="users"):
            db.session.commit()
        db.session.rollback()
        db.session.add(User(name="after"))
        db.session.commit()
    assert sent == [[("after", "insert")]]


def test_before_models_committed_vetoes(app_ctx: AppContext, db: SessionExt) -> None:
    """A before_models_committed receiver sees everything the commit writes,
    and raising aborts the commit: nothing committed, nothing reported.
    """
    seen: list[list[tuple[str, str]]] = []

    def veto(sender: Flask, changes: list[tuple[User, str]]) -> None:
        seen.append([(obj.name, op) for obj, op in changes])
        raise PermissionError("no changes on Sundays")

    with (
        committed() as sent,
        signals.before_models_committed.connected_to(veto),
    ):
        db.session.add(User(name="unflushed"))
        with pytest.raises(PermissionError, match="Sundays"):
            db.session.commit()
        db.session.rollback()
    assert seen == [[("unflushed", "insert")]]
    assert sent == []
    assert count_rows(db.engine, "users") == 0


def test_session_scope_sessions_report(app_ctx: AppContext, db: SessionExt) -> None:
    """Changes of session_scope() sessions are reported too."""
    with committed(app_ctx.app) as sent, db.session_scope() as session:
        session.add(User(name="background"))
    assert sent == [[("background", "insert")]]


def test_bulk_statements_are_not_reported(app_ctx: AppContext, db: SessionExt) -> None:
    """Bulk ORM UPDATE and DELETE bypass the unit of work: they are not in
    the changes; flushed changes of the same transaction are.
    """
    db.session.add(User(name="a"))
    db.session.commit()
    with committed() as sent:
        db.session.execute(sa.update(User).values(name="b"))
        db.session.add(User(name="c"))
        db.session.commit()
    assert sent == [[("c", "insert")]]


def test_receiver_reads_committed_values(app_ctx: AppContext, db: SessionExt) -> None:
    """A models_committed receiver reads the committed values without a
    query, and writes with a session of its own.
    """
    statements: list[str] = []

    def audit(sender: Flask, changes: list[tuple[User, str]]) -> None:
        with db.session_scope() as session:
            for obj, op in changes:
                if not obj.name.startswith("audit"):
                    session.add(User(name=f"audit {op} {obj.name}"))

    def count(sender: Flask, statement: str, **kwargs: t.Any) -> None:
        statements.append(statement)

    with (
        signals.models_committed.connected_to(audit),
        signals.before_cursor_execute.connected_to(count),
    ):
        db.session.add(User(name="x"))
        db.session.commit()
    assert not [s for s in statements if s.startswith("SELECT")]
    names = db.session.scalars(sa.select(User.name).order_by(User.id)).all()
    assert names == ["x", "audit insert x"]


def test_two_apps_send_once(tmp_path: Path) -> None:
    """One SessionExt serving two apps sends each signal once per commit."""
    db = SessionExt()
    apps = []
    for name in ("a", "b"):
        app = Flask(name, instance_path=str(tmp_path / name))
        db.init_app(app)
        apps.append(app)
    senders: list[object] = []

    def receive(sender: Flask, changes: list[tuple[User, str]]) -> None:
        senders.append(sender)

    with committed() as sent, signals.models_committed.connected_to(receive):
        for app in apps:
            with app.app_context():
                Base.metadata.create_all(db.engine)
                db.session.add(User(name=app.name))
                db.session.commit()
                db.engine.dispose()
    assert senders == apps
    assert sent == [[("a", "insert")], [("b", "insert")]]


def test_change_tracking_only_while_received(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """The change listeners exist only while a change signal has a receiver."""
    names = ("after_flush", "before_commit", "after_commit", "after_transaction_end")

    def installed() -> list[int]:
        session = db.session()
        return [len(getattr(session.dispatch, name)) for name in names]

    assert installed() == [0, 0, 0, 0]
    with capture_signal(signals.models_committed, app_ctx.app):
        assert installed() == [1, 1, 1, 1]
    assert installed() == [0, 0, 0, 0]


def test_on_commit_order_and_context(app: Flask, db: SessionExt) -> None:
    """on_commit callbacks run after the outermost commit, in registration
    order, with their arguments and the app context.
    """
    calls: list[tuple[str, object]] = []

    def note(label: str, *, extra: object = None) -> None:
        calls.append((label, current_app.name))

    with app.app_context():
        db.on_commit(note, "first")
        db.session.add(User(name="a"))
        with db.session.begin_nested():
            db.on_commit(note, "second", extra=1)
        assert calls == []
        db.session.commit()
    assert calls == [("first", app.name), ("second", app.name)]


def test_on_commit_begins_a_transaction(app_ctx: AppContext, db: SessionExt) -> None:
    """on_commit with no transaction begins one, as a query would."""
    calls: list[int] = []
    assert not db.session().in_transaction()
    db.on_commit(calls.append, 1)
    assert db.session().in_transaction()
    db.session.commit()
    assert calls == [1]


def test_on_commit_dropped(app: Flask, db: SessionExt) -> None:
    """Callbacks of a rolled-back savepoint, a rolled-back transaction and a
    session removed without commit are dropped; the others run. The
    listeners stay once a callback was registered (removing them while other
    threads dispatch them is not safe in SQLAlchemy).
    """
    calls: list[str] = []
    with app.app_context():
        db.on_commit(calls.append, "outer")
        savepoint = db.session.begin_nested()
        db.on_commit(calls.append, "savepoint")
        savepoint.rollback()
        db.session.commit()
        db.on_commit(calls.append, "rolled back")
        db.session.rollback()
        db.session.commit()
        db.on_commit(calls.append, "removed")
    with app.app_context():
        db.session.commit()
        assert len(db.session().dispatch.after_commit) == 1
    assert calls == ["outer"]


def test_on_commit_error(
    app_ctx: AppContext, db: SessionExt, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback's exception is logged, the next callbacks run, and with
    SESSIONEXT_RAISE_RECEIVER_ERRORS it is raised after the commit.
    """
    calls: list[str] = []

    def fail() -> None:
        raise LookupError("callback failed")

    db.on_commit(fail)
    db.on_commit(calls.append, "after")
    db.session.add(User(name="a"))
    with pytest.raises(LookupError, match="callback failed"):
        db.session.commit()
    assert calls == ["after"]
    assert count_rows(db.engine, "users") == 1
    assert any(
        "on_commit" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR
    )


def test_session_lifecycle_signals(app: Flask, db: SessionExt) -> None:
    """session_created and session_removed are sent by the app with the
    session, and the exception that ended the context.
    """
    with (
        capture_signal(signals.session_created) as created,
        capture_signal(signals.session_removed) as removed,
    ):
        with app.app_context():
            session = db.session()
        with pytest.raises(ZeroDivisionError), app.app_context():
            db.session()
            raise ZeroDivisionError
        with app.app_context():
            pass  # no session, no signal
    assert next((s, kw["session"]) for s, kw in created) == (app, session)
    assert len(created) == 2
    assert [s for s, _ in removed] == [app, app]
    assert removed[0][1] == {"session": session, "exception": None}
    assert isinstance(removed[1][1]["exception"], ZeroDivisionError)
