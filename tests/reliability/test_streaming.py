"""A streamed response keeps its request's session: the view and the
generator of ``stream_with_context`` share one session, removed when the
response ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask, Response, stream_with_context

from flask_sessionext import SessionExt, signals
from flask_sessionext.testing import capture_signal

from helpers import checked_out, count_rows, open_sessions
from models import User


@pytest.fixture
def streaming_app(app: Flask, db: SessionExt) -> Flask:
    """The app with views that stream users loaded by the view."""

    @app.get("/stream")
    def stream() -> Response:
        users = db.session.scalars(sa.select(User).order_by(User.id)).all()
        session = db.session()

        def generate() -> Iterator[str]:
            assert db.session() is session
            for user in users:
                yield f"{user.name}\n"  # expired by a commit: needs the session
            db.session.add(User(name="streamed"))

        return Response(stream_with_context(generate()))

    @app.get("/plain")
    def plain() -> Response:
        names = [user.name for user in db.session.scalars(sa.select(User))]
        return Response(iter(names))

    with app.app_context():
        db.session.add_all([User(name="ada"), User(name="grace")])
        db.session.commit()
    return app


@pytest.mark.parametrize("commit_on_teardown", [False, True])
def test_stream_shares_the_view_session(
    streaming_app: Flask, db: SessionExt, commit_on_teardown: bool
) -> None:
    """The generator gets the view's session with the objects it loaded,
    and the session is removed once, when the stream ends; a teardown commit
    commits what the generator did.
    """
    streaming_app.config["SESSIONEXT_COMMIT_ON_TEARDOWN"] = commit_on_teardown
    with capture_signal(signals.session_removed, streaming_app) as removed:
        response = streaming_app.test_client().get("/stream")
        assert removed == []
        assert response.get_data(as_text=True) == "ada\ngrace\n"
        response.close()
    assert len(removed) == 1
    assert open_sessions(streaming_app, db) == 0
    with streaming_app.app_context():
        assert count_rows(db.engine, "users") == (3 if commit_on_teardown else 2)
        assert checked_out(db.engine) == 0


def test_stream_closed_early_removes_the_session(
    streaming_app: Flask, db: SessionExt
) -> None:
    """A stream closed before its end (a client that went away) removes the
    session, and a teardown commit does not run for it.
    """
    streaming_app.config["SESSIONEXT_COMMIT_ON_TEARDOWN"] = True
    with capture_signal(signals.session_removed, streaming_app) as removed:
        response = streaming_app.test_client().get("/stream", buffered=False)
        assert next(iter(response.response)) == b"ada\n"
        response.close()
    [(_, kwargs)] = removed
    assert isinstance(kwargs["exception"], GeneratorExit)
    with streaming_app.app_context():
        assert count_rows(db.engine, "users") == 2
        assert checked_out(db.engine) == 0


def test_stream_closed_after_first_chunk_removes_the_session(
    streaming_app: Flask, db: SessionExt
) -> None:
    """A ``stream_with_context`` response closed after the first chunk
    (which the test client reads) removes the session once, at its close.
    """
    with capture_signal(signals.session_removed, streaming_app) as removed:
        response = streaming_app.test_client().get("/stream", buffered=False)
        assert removed == []
        response.close()
    assert len(removed) == 1
    assert open_sessions(streaming_app, db) == 0
    with streaming_app.app_context():
        assert checked_out(db.engine) == 0


def test_other_streams_remove_the_session_at_teardown(
    streaming_app: Flask, db: SessionExt
) -> None:
    """A streamed body that does not hold the app context (a plain
    iterator, an error page) keeps nothing: the session is removed when the
    view returns, even if the response is never closed.
    """
    with capture_signal(signals.session_removed, streaming_app) as removed:
        response = streaming_app.test_client().get("/plain", buffered=False)
        assert len(removed) == 1
    assert response.is_streamed
    assert open_sessions(streaming_app, db) == 0
    response.close()
