"""Async receivers and ``on_commit`` callbacks of a commit made in an
``async def`` view, where an event loop runs in the request's thread.
"""

from __future__ import annotations

import logging
import typing as t
from collections import Counter

import pytest
import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy import orm

from flask_sessionext import SessionExt, signals

from models import User


@pytest.mark.parametrize("view", ["async", "sync"])
def test_async_receivers_run_once_per_commit(
    app: Flask, db: SessionExt, view: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Async receivers of ``before_models_committed``, ``after_commit`` and
    ``models_committed`` and an async ``on_commit`` callback each run once per
    commit of an ``async def`` (or plain) view, in its app context with its
    session, and the view's response is unchanged.
    """
    app.config.update(TESTING=False, SESSIONEXT_RAISE_RECEIVER_ERRORS=False)
    calls: Counter[str] = Counter()
    seen: set[tuple[bool, bool]] = set()
    counted: list[int | None] = []

    def saw(name: str, session: orm.Session | None) -> None:
        calls[name] += 1
        here: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        seen.add((here is app, db.session() is session))

    async def before(sender: Flask, changes: list[tuple[object, str]]) -> None:
        saw("before_models_committed", orm.object_session(changes[0][0]))

    async def after_commit(sender: Flask, session: orm.Session) -> None:
        saw("after_commit", session)

    async def committed(sender: Flask, changes: list[tuple[object, str]]) -> None:
        saw("models_committed", orm.object_session(changes[0][0]))

    async def count_users(session: orm.Session) -> None:
        saw("on_commit", session)
        counted.append(db.session.scalar(sa.select(sa.func.count(User.id))))

    def add_user(name: str) -> str:
        db.session.add(User(name=name))
        db.on_commit(count_users, db.session())
        db.session.commit()
        return "added"

    @app.post("/async/<name>")
    async def add_async(name: str) -> str:
        return add_user(name)

    @app.post("/sync/<name>")
    def add_sync(name: str) -> str:
        return add_user(name)

    client = app.test_client()
    with (
        caplog.at_level(logging.ERROR),
        signals.before_models_committed.connected_to(before, app),
        signals.after_commit.connected_to(after_commit, app),
        signals.models_committed.connected_to(committed, app),
    ):
        response = client.post(f"/{view}/ada")
    assert response.status_code == 200
    assert response.text == "added"
    assert calls == {
        "before_models_committed": 1,
        "after_commit": 1,
        "models_committed": 1,
        "on_commit": 1,
    }
    assert seen == {(True, True)}
    assert counted == [1]
    assert [r.getMessage() for r in caplog.records] == []


def test_failing_async_receiver_is_named_in_the_log(
    app: Flask, db: SessionExt, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing async receiver or callback of a commit in an ``async def``
    view is logged under its own name, and the commit stands.
    """
    app.config.update(TESTING=False, SESSIONEXT_RAISE_RECEIVER_ERRORS=False)

    async def broken_receiver(sender: Flask, **kwargs: t.Any) -> None:
        raise LookupError("the receiver failed")

    async def broken_callback() -> None:
        raise LookupError("the callback failed")

    @app.post("/users/<name>")
    async def add(name: str) -> str:
        db.session.add(User(name=name))
        db.on_commit(broken_callback)
        db.session.commit()
        return "added"

    with (
        caplog.at_level(logging.ERROR),
        signals.after_commit.connected_to(broken_receiver, app),
        signals.models_committed.connected_to(broken_receiver, app),
    ):
        response = app.test_client().post("/users/ada")
    assert response.status_code == 200
    logged = [
        (record.getMessage(), type(record.exc_info[1]).__name__)
        for record in caplog.records
        if record.exc_info is not None
    ]
    receiver = f"{__name__}.{test_failing_async_receiver_is_named_in_the_log.__name__}"
    assert logged == [
        (
            f"Receiver {receiver}.<locals>.{function} of signal {signal!r}"
            " raised LookupError.",
            "LookupError",
        )
        for function, signal in [
            ("broken_receiver", "after_commit"),
            ("broken_receiver", "models_committed"),
            ("broken_callback", "on_commit"),
        ]
    ]
    with app.app_context():
        assert db.session.scalars(sa.select(User.name)).all() == ["ada"]


def _both_views(app: Flask, add_user: t.Callable[[str], str]) -> None:
    """``POST /async/<name>`` and ``POST /sync/<name>``, an ``async def``
    and a plain view of ``add_user``.
    """

    @app.post("/async/<name>")
    async def add_async(name: str) -> str:
        return add_user(name)

    @app.post("/sync/<name>")
    def add_sync(name: str) -> str:
        return add_user(name)


class _AsyncCallable:
    """A receiver object whose ``__call__`` is ``async def``."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[Flask, bool]] = []
        self.fail = fail

    async def __call__(self, sender: Flask, **kwargs: t.Any) -> None:
        here: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        self.calls.append((sender, here is sender))
        if self.fail:
            raise LookupError("async __call__ failed")


@pytest.mark.parametrize("view", ["async", "sync"])
def test_async_call_objects_run(app: Flask, db: SessionExt, view: str) -> None:
    """An object whose ``__call__`` is ``async def``, connected to a bridged
    signal, a change signal, or given to ``on_commit``, runs once per commit
    of an ``async def`` (or plain) view, with the app as sender and in its
    app context, instead of being dropped unawaited.
    """
    after_commit = _AsyncCallable()
    committed = _AsyncCallable()
    callback = _AsyncCallable()

    def add_user(name: str) -> str:
        db.session.add(User(name=name))
        db.on_commit(callback, current_app._get_current_object())  # type: ignore[attr-defined]
        db.session.commit()
        return "added"

    _both_views(app, add_user)

    with (
        signals.after_commit.connected_to(after_commit, app),
        signals.models_committed.connected_to(committed, app),
    ):
        response = app.test_client().post(f"/{view}/ada")
    assert response.status_code == 200
    assert after_commit.calls == [(app, True)]
    assert committed.calls == [(app, True)]
    assert callback.calls == [(app, True)]


@pytest.mark.parametrize("view", ["async", "sync"])
def test_async_call_object_error_is_raised(
    app: Flask, db: SessionExt, view: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The exception of an async ``__call__`` receiver of a signal that
    reports is logged and, with ``SESSIONEXT_RAISE_RECEIVER_ERRORS``, raised
    after the commit, in a sync and in an async view.
    """
    failing = _AsyncCallable(fail=True)

    def add_user(name: str) -> str:
        db.session.add(User(name=name))
        with pytest.raises(LookupError, match="async __call__ failed"):
            db.session.commit()
        return "raised"

    _both_views(app, add_user)

    with (
        caplog.at_level(logging.ERROR),
        signals.models_committed.connected_to(failing, app),
    ):
        response = app.test_client().post(f"/{view}/ada")
    assert response.text == "raised"
    assert failing.calls == [(app, True)]
    assert "_AsyncCallable" in caplog.text


def test_async_call_object_vetoes(app: Flask, db: SessionExt) -> None:
    """An async ``__call__`` receiver of a signal that propagates vetoes the
    action by raising, as an ``async def`` function does.
    """
    failing = _AsyncCallable(fail=True)
    with app.app_context(), signals.before_flush.connected_to(failing, app):
        db.session.add(User(name="ada"))
        with pytest.raises(LookupError, match="async __call__ failed"):
            db.session.flush()
        db.session.rollback()
    assert failing.calls == [(app, True)]
