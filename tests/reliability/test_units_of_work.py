"""Units of work that meet: committing the session's connection behind the
session's back is refused at the point of misuse, while change signals or
``on_commit`` callbacks are in use.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_sessionext import SessionExt, signals
from flask_sessionext.testing import capture_signal

from helpers import count_rows
from models import User

REFUSED = r"'db\.session\.connection\(\)\.commit\(\)'.*Commit the session"


def test_connection_commit_with_callbacks_is_refused(
    app: Flask, db: SessionExt
) -> None:
    """``db.session.connection().commit()`` raises, commits nothing, and the
    session's own commit then keeps every promise.
    """
    ran: list[int] = []
    with app.app_context(), capture_signal(signals.models_committed, app) as sent:
        db.session.add(User(name="a"))
        db.session.flush()
        db.on_commit(ran.append, 1)
        with pytest.raises(RuntimeError, match=REFUSED):
            db.session.connection().commit()
        assert count_rows(db.engine, "users") == 0
        db.session.add(User(name="b"))
        db.session.commit()
        assert ran == [1]
        assert count_rows(db.engine, "users") == 2
        [(_, kwargs)] = sent
        assert sorted(user.name for user, _ in kwargs["changes"]) == ["a", "b"]


def test_connection_commit_with_receivers_is_refused(
    app: Flask, db: SessionExt
) -> None:
    """With only ``models_committed`` receivers, a connection begun before
    the first change is guarded too.
    """
    with app.app_context(), capture_signal(signals.models_committed, app) as sent:
        assert db.session.scalars(sa.select(User)).all() == []
        db.session.add(User(name="a"))
        with pytest.raises(RuntimeError, match=REFUSED):
            db.session.connection().commit()
        db.session.commit()
    assert len(sent) == 1


def test_connection_commit_guard_ends_with_the_transaction(
    app: Flask, db: SessionExt
) -> None:
    """A connection the session joined may be committed by its owner once
    the session's transaction is over.
    """
    with app.app_context(), capture_signal(signals.models_committed, app):
        with db.engine.connect() as conn:
            session = type(db.session())(bind=conn)
            session.add(User(name="joined"))
            session.commit()
            session.close()
            conn.commit()
        assert count_rows(db.engine, "users") == 1
