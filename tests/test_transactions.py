"""transaction(), session_scope(), SAVEPOINTs on SQLite and synchronize_session."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.ctx import AppContext

from flask_sessionext import SessionExt
from flask_sessionext._config import settings as _settings

from helpers import checked_out, count_rows
from models import Base, User


def names(db: SessionExt) -> list[str]:
    """The names of all users, on a connection of its own."""
    with db.engine.connect() as conn:
        return list(conn.scalars(sa.select(User.name).order_by(User.name)))


def test_transaction_commits(app_ctx: AppContext, db: SessionExt) -> None:
    """The outermost block commits on success and yields db.session."""
    with db.transaction() as session:
        assert session is db.session()
        session.add(User(name="a"))
    assert names(db) == ["a"]
    assert not db.session().in_transaction()


def test_transaction_joins_begun_transaction(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """The outermost block owns a transaction that earlier work began."""
    db.session.add(User(name="before"))
    db.session.flush()
    with db.transaction():
        db.session.add(User(name="inside"))
    assert names(db) == ["before", "inside"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_transaction_rolls_back(
    app_ctx: AppContext, db: SessionExt, error: type[BaseException]
) -> None:
    """Any exception, KeyboardInterrupt included, rolls the whole block back."""
    db.session.add(User(name="before"))
    with pytest.raises(error, match="stop"), db.transaction():
        db.session.add(User(name="inside"))
        db.session.flush()
        raise error("stop")
    assert names(db) == []
    assert not db.session().in_transaction()
    with db.transaction():  # the session is usable again
        db.session.add(User(name="after"))
    assert names(db) == ["after"]


def test_nested_transaction_rolls_back_only_savepoint(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """An exception in a nested block undoes only its SAVEPOINT."""
    with db.transaction():
        db.session.add(User(name="outer"))
        with pytest.raises(KeyboardInterrupt, match="inner"), db.transaction():
            db.session.add(User(name="inner"))
            db.session.flush()
            raise KeyboardInterrupt("inner")
        with db.transaction():
            db.session.add(User(name="second inner"))
    assert names(db) == ["outer", "second inner"]


def test_nested_error_propagating_rolls_back_everything(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """An exception that leaves the outermost block undoes everything."""
    with pytest.raises(ValueError, match="out"), db.transaction():
        db.session.add(User(name="outer"))
        with db.transaction():
            db.session.add(User(name="inner"))
        raise ValueError("out")
    assert names(db) == []


def test_transaction_failing_commit_rolls_back(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """A commit that fails at the end of the block rolls back and raises."""
    with db.transaction():
        db.session.add(User(id=1, name="a"))
    with pytest.raises(sa.exc.IntegrityError, match="users"), db.transaction():
        db.session.add(User(id=1, name="duplicate"))
    assert not db.session().in_transaction()
    assert names(db) == ["a"]


def test_savepoint_first_statement_released_then_rolled_back(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """A SAVEPOINT that is the first statement of a transaction, released and
    then rolled back with the outer transaction, leaves nothing behind.
    """
    with db.session.begin_nested():
        db.session.add(User(name="in savepoint"))
    db.session.rollback()
    assert names(db) == []


def test_sqlite_begin_is_no_query(app_ctx: AppContext, db: SessionExt) -> None:
    """The BEGIN of the SQLite fix reaches no cursor event."""
    statements: list[str] = []
    # The engine is the test's own, so the listener goes with it.
    sa.event.listen(
        db.engine, "before_cursor_execute", lambda *args: statements.append(args[2])
    )
    db.session.execute(sa.select(User))
    db.session.commit()
    assert len(statements) == 1
    assert statements[0].startswith("SELECT")


def test_session_scope_is_independent(app_ctx: AppContext, db: SessionExt) -> None:
    """session_scope() gives a new Session that commits on its own."""
    db.session.add(User(name="request"))  # pending: SQLite allows one writer
    with db.session_scope() as session:
        assert session is not db.session()
        assert type(session) is type(db.session())
        session.add(User(name="background"))
    assert names(db) == ["background"]
    db.session.rollback()
    assert names(db) == ["background"]


def test_session_scope_rolls_back_and_closes(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """session_scope() rolls back on an exception and always closes."""
    with pytest.raises(KeyboardInterrupt, match="stop"), db.session_scope() as session:
        session.add(User(name="lost"))
        session.flush()
        raise KeyboardInterrupt("stop")
    assert names(db) == []
    assert not session.in_transaction()
    assert list(session) == []
    assert checked_out(db.engine) == 0


@pytest.mark.parametrize("listener", [False, True], ids=["options", "listener"])
def test_synchronize_session_default(
    app: Flask, monkeypatch: pytest.MonkeyPatch, listener: bool
) -> None:
    """SESSIONEXT_SYNCHRONIZE_SESSION is the default of ORM UPDATEs, and a
    statement's own option wins (SQLAlchemy 2.1's session execution options,
    or SQLAlchemy 2.0's do_orm_execute listener).
    """
    if listener:
        monkeypatch.setattr(_settings, "SESSION_EXECUTION_OPTIONS", False)
    elif not _settings.SESSION_EXECUTION_OPTIONS:
        pytest.skip("SQLAlchemy 2.0 has no session-wide execution options")
    app.config["SESSIONEXT_SYNCHRONIZE_SESSION"] = False
    db = SessionExt(app)
    with app.app_context():
        Base.metadata.create_all(db.engine)
        try:
            user = User(name="a")
            db.session.add(user)
            db.session.commit()
            assert user.name == "a"  # loaded again after the commit expired it
            db.session.execute(sa.update(User).values(name="b"))
            assert user.name == "a"  # not synchronized: the config said False
            db.session.execute(
                sa.update(User).values(name="c"),
                execution_options={"synchronize_session": "evaluate"},
            )
            assert user.name == "c"
            db.session.execute(
                sa.update(User)
                .values(name="d")
                .execution_options(synchronize_session="fetch")
            )
            assert user.name == "d"
            assert len(db.session().dispatch.do_orm_execute) == int(listener)
        finally:
            db.session.rollback()
            Base.metadata.drop_all(db.engine)
            engines = list(db.engines.values())
    for engine in engines:
        engine.dispose()


def test_no_synchronize_session_no_listener(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """Without SESSIONEXT_SYNCHRONIZE_SESSION the session class has no
    do_orm_execute listener, and SQLAlchemy's own default applies.
    """
    assert len(db.session().dispatch.do_orm_execute) == 0
    user = User(name="a")
    db.session.add(user)
    db.session.commit()
    assert user.name == "a"
    db.session.execute(sa.update(User).values(name="b"))
    assert user.name == "b"
    assert count_rows(db.engine, "users") == 1


def test_transaction_inside_begin_block_is_a_savepoint(
    app_ctx: AppContext, db: SessionExt
) -> None:
    """Inside ``with db.session.begin():`` a transaction() block is a
    SAVEPOINT: it commits nothing early, and its error undoes only its work.
    """
    with db.session.begin():
        db.session.add(User(name="outer"))
        with db.transaction():
            db.session.add(User(name="inner"))
        assert names(db) == []  # nothing committed before the block ends
        with pytest.raises(ValueError, match="undo"), db.transaction():
            db.session.add(User(name="undone"))
            db.session.flush()
            raise ValueError("undo")
        db.session.add(User(name="last"))
    assert names(db) == ["inner", "last", "outer"]
