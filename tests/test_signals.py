"""Every SQLAlchemy event of the catalog, sent as a signal by the app."""

from __future__ import annotations

import typing as t
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy import orm

from flask_sessionext import SessionExt, signals
from flask_sessionext.signals import CATALOG, BridgedEvent

from models import Base, User

Trigger = Callable[[SessionExt], object]


def _add_user(db: SessionExt, name: str = "u") -> User:
    user = User(name=name)
    db.session.add(user)
    return user


def _flushed_user(db: SessionExt) -> User:
    user = _add_user(db)
    db.session.flush()
    return user


def _committed_user(db: SessionExt) -> User:
    user = _add_user(db)
    db.session.commit()
    return user


def _deleted_and(db: SessionExt, end: Callable[[orm.Session], None]) -> None:
    user = _committed_user(db)
    db.session.delete(user)
    db.session.flush()
    end(db.session())


def _detached_to_persistent(db: SessionExt) -> None:
    user = _committed_user(db)
    db.session.expunge(user)
    db.session.add(user)


def _loaded(db: SessionExt) -> None:
    _committed_user(db)
    db.session.expunge_all()
    db.session.scalars(sa.select(User)).all()


def _connection(db: SessionExt, action: Callable[[sa.Connection], object]) -> None:
    with db.engine.connect() as conn:
        action(conn)


def _savepoint(db: SessionExt, end: str) -> None:
    with db.engine.connect() as conn, conn.begin():
        savepoint = conn.begin_nested()
        getattr(savepoint, end)()


def _twophase(db: SessionExt, end: str) -> None:
    with db.engine.connect() as conn:
        transaction = conn.begin_twophase()
        conn.execute(sa.insert(User).values(name="2pc"))
        transaction.prepare()
        getattr(transaction, end)()


def _detach_and_close(db: SessionExt) -> None:
    conn = db.engine.connect()
    conn.connection.detach()
    conn.close()


def _flushed_then_rolled_back(db: SessionExt) -> None:
    user = _flushed_user(db)  # held: the identity map holds it weakly
    db.session.rollback()
    assert sa.inspect(user).transient


def _handle_error(db: SessionExt) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="no_such_table"):
        db.session.execute(sa.text("SELECT * FROM no_such_table"))
    db.session.rollback()


#: How each event of the catalog is made to happen, for real.
TRIGGERS: dict[str, Trigger] = {
    "do_orm_execute": lambda db: db.session.execute(sa.select(User)),
    "after_transaction_create": lambda db: db.session.execute(sa.select(User)),
    "after_transaction_end": lambda db: _committed_user(db),
    "before_commit": lambda db: _committed_user(db),
    "after_commit": lambda db: _committed_user(db),
    "after_rollback": _flushed_then_rolled_back,
    "after_soft_rollback": _flushed_then_rolled_back,
    "before_flush": _flushed_user,
    "after_flush": _flushed_user,
    "after_flush_postexec": _flushed_user,
    "after_begin": lambda db: db.session.execute(sa.select(User)),
    "before_attach": _add_user,
    "after_attach": _add_user,
    "after_bulk_update": lambda db: db.session.query(User).update({"name": "x"}),
    "after_bulk_delete": lambda db: db.session.query(User).delete(),
    "transient_to_pending": _add_user,
    "pending_to_transient": lambda db: db.session.expunge(_add_user(db)),
    "persistent_to_transient": _flushed_then_rolled_back,
    "pending_to_persistent": _flushed_user,
    "detached_to_persistent": _detached_to_persistent,
    "loaded_as_persistent": _loaded,
    "persistent_to_deleted": lambda db: _deleted_and(db, lambda s: None),
    "deleted_to_persistent": lambda db: _deleted_and(db, orm.Session.rollback),
    "deleted_to_detached": lambda db: _deleted_and(db, orm.Session.commit),
    "persistent_to_detached": lambda db: db.session.expunge(_committed_user(db)),
    "before_execute": lambda db: _connection(db, lambda c: c.execute(sa.select(1))),
    "after_execute": lambda db: _connection(db, lambda c: c.execute(sa.select(1))),
    "before_cursor_execute": lambda db: db.session.execute(sa.select(1)),
    "after_cursor_execute": lambda db: db.session.execute(sa.select(1)),
    "engine_connect": lambda db: _connection(db, lambda c: None),
    "set_connection_execution_options": lambda db: _connection(
        db, lambda c: c.execution_options(stream_results=False)
    ),
    "set_engine_execution_options": lambda db: db.engine.execution_options(x=1),
    "engine_disposed": lambda db: db.engine.dispose(),
    "begin": lambda db: _connection(db, lambda c: c.begin()),
    "rollback": lambda db: _connection(db, lambda c: c.begin().rollback()),
    "commit": lambda db: _connection(db, lambda c: c.begin().commit()),
    "savepoint": lambda db: _savepoint(db, "commit"),
    "rollback_savepoint": lambda db: _savepoint(db, "rollback"),
    "release_savepoint": lambda db: _savepoint(db, "commit"),
    "begin_twophase": lambda db: _twophase(db, "commit"),
    "prepare_twophase": lambda db: _twophase(db, "commit"),
    "rollback_twophase": lambda db: _twophase(db, "rollback"),
    "commit_twophase": lambda db: _twophase(db, "commit"),
    "connect": lambda db: _connection(db, lambda c: None),
    "first_connect": lambda db: _connection(db, lambda c: None),
    "checkout": lambda db: _connection(db, lambda c: None),
    "checkin": lambda db: _connection(db, lambda c: None),
    "reset": lambda db: _connection(db, lambda c: c.execute(sa.select(1))),
    "invalidate": lambda db: _connection(db, lambda c: c.invalidate()),
    "soft_invalidate": lambda db: _connection(
        db, lambda c: c.connection.invalidate(soft=True)
    ),
    "close": lambda db: _connection(db, lambda c: c.invalidate()),
    "detach": _detach_and_close,
    "close_detached": _detach_and_close,
    "do_connect": lambda db: _connection(db, lambda c: None),
    "handle_error": _handle_error,
}

#: Events that SQLite cannot produce, with the reason.
NOT_ON_SQLITE = {
    name: "SQLite has no two-phase commit"
    for name in (
        "begin_twophase",
        "prepare_twophase",
        "rollback_twophase",
        "commit_twophase",
    )
}


def test_catalog_is_complete() -> None:
    """The catalog bridges 55 SQLAlchemy events (25 session, 18 connection,
    10 pool, 2 dialect), each with a signal of the
    same name in the namespace and a trigger in this module.
    """
    by_target: dict[str, int] = {}
    for entry in CATALOG.values():
        by_target[entry.target] = by_target.get(entry.target, 0) + 1
        assert signals.namespace[entry.name] is entry.signal
        assert getattr(signals, entry.name) is entry.signal
        assert entry.qualname in (entry.signal.__doc__ or "")
    assert by_target == {"session": 25, "engine": 18, "pool": 10, "dialect": 2}
    assert set(TRIGGERS) == set(CATALOG)


@pytest.mark.parametrize("entry", CATALOG.values(), ids=list(CATALOG))
def test_every_event_is_sent_by_the_app(
    app: Flask, database: str, entry: BridgedEvent
) -> None:
    """Each event, made to happen for real, sends its signal with the app as
    sender and exactly SQLAlchemy's arguments (plus bind_key for engines).
    """
    if database == "sqlite" and entry.name in NOT_ON_SQLITE:
        pytest.skip(NOT_ON_SQLITE[entry.name])
    sent: list[tuple[object, dict[str, t.Any]]] = []

    def receiver(sender: object, **kwargs: t.Any) -> None:
        sent.append((sender, kwargs))

    with entry.signal.connected_to(receiver, sender=app):
        db = SessionExt(app)  # after the connect: first_connect needs a new pool
        with app.app_context():
            engines = list(db.engines.values())
            Base.metadata.create_all(db.engine)
            try:
                TRIGGERS[entry.name](db)
            finally:
                db.session.rollback()
                Base.metadata.drop_all(db.engine)
    for engine in engines:
        engine.dispose()
    assert sent, f"{entry.name} was not sent"
    for sender, kwargs in sent:
        assert sender is app
        assert tuple(kwargs) == entry.kwargs
        if entry.target != "session":
            assert kwargs["bind_key"] in (None, "other")
