"""A session's life in an app context: made at its first use, kept while a
streamed response that needs it streams, and removed when the context ends.
"""

from __future__ import annotations

import functools
import inspect
import typing as t

from flask import Response, after_this_request, has_request_context
from flask.ctx import AppContext
from sqlalchemy.util import ScopedRegistry

from .._config.settings import commit_on_teardown
from .._receivers.calls import report
from .._receivers.checks import collected, report_collected
from ..signals import session_created, session_removed
from .session import Session, app_ctx_scope

if t.TYPE_CHECKING:
    from .._runtime import Runtime


def create_session(runtime: Runtime, app_ctx: AppContext, **kwargs: t.Any) -> Session:
    """The session of ``app_ctx``, at its first use; a request that has one
    checks whether its response streams with it.
    """
    session = runtime.sessionmaker(**kwargs)
    if has_request_context():
        # Only requests that have a session pay for the check.
        after_this_request(functools.partial(keep_for_stream, runtime))
    if session_created.receivers:
        report(session_created, app_ctx.app, session=session)
    return session


def keep_for_stream(runtime: Runtime, response: Response) -> Response:
    """Keep the session of a streamed response until the response is closed:
    ``stream_with_context`` pushes the same app context again while the body
    streams, after its first teardown, and the generator must find the view's
    session and the objects it loaded.
    """
    if response.is_streamed:
        ctx = app_ctx_scope()
        body = response.response
        # Only a body that will push this context again, as the generator of
        # stream_with_context does (Flask >= 3.1), holds it; any other
        # streamed body (a file, an error page) runs without it.
        if inspect.isgenerator(body) and any(
            value is ctx for value in inspect.getgeneratorlocals(body).values()
        ):
            runtime.streams[ctx] = "streaming"
            response.call_on_close(functools.partial(_end_stream, runtime, ctx))
    return response


def _end_stream(runtime: Runtime, ctx: AppContext) -> None:
    """At the close of a streamed response: remove the session kept for it,
    if no teardown of its context did (the stream was never read, or read
    without ``stream_with_context``).
    """
    if runtime.streams.get(ctx) == "kept":
        with ctx:  # its teardown removes the session
            pass


def remove_session(
    runtime: Runtime,
    ctx: AppContext,
    registry: ScopedRegistry[Session],
    exc: BaseException | None,
) -> None:
    """At the teardown of ``ctx``: commit the session if the settings
    say so and nothing failed, close it, and forget it; unless a streamed
    response still needs it.

    Also the safe point at which listeners of garbage-collected receivers go.
    """
    app = ctx.app
    if runtime.streams:
        stream = runtime.streams.pop(ctx, None)
        if stream == "streaming":  # the body has yet to stream
            runtime.streams[ctx] = "kept"
            return
    if collected:  # a weakly connected receiver died: say so
        report_collected(app)
    runtime.collect()
    if not registry.has():
        return
    session = registry()
    try:
        if exc is None and commit_on_teardown(app):
            session.commit()
    finally:
        try:
            session.close()
        finally:
            registry.clear()
            if session_removed.receivers:
                report(session_removed, app, session=session, exception=exc)
