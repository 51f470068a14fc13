"""Query recording, slow-query reports and the ``Server-Timing`` header.

The three features share one pair of receivers of the bridged
``before_cursor_execute`` and ``after_cursor_execute`` signals, connected for
an app only when one of them is on, so the bridge installs one listener per
engine for all of them (and any receivers of the application), and none when
they are off. The start of a query is kept on its execution context; what an
app context recorded is kept in ``flask.g``, and goes with the context.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import types
import typing as t
from collections import deque
from dataclasses import dataclass
from time import perf_counter

import blinker
import flask
import sqlalchemy as sa
import werkzeug
from flask import Flask, Response
from flask.ctx import AppContext
from sqlalchemy.engine.interfaces import ExecutionContext

from ._event_signals import quiet_receivers, report
from ._session import app_context_or_none
from .signals import after_cursor_execute, before_cursor_execute, slow_query

__all__ = ["QueryRecord"]

#: The attribute of ``flask.g`` that holds the app context's :class:`_Queries`.
_QUERIES = "_sessionext_queries"
_UNKNOWN = "<unknown>"
_STATEMENT_LENGTH = 200
#: A recorded string or bytes parameter keeps at most this many characters
#: (bytes); the rest is replaced by a marker saying how much was cut.
PARAMETER_LENGTH = 1024
#: An app context keeps at most this many characters (bytes) of recorded
#: parameters; later records keep a marker instead of their parameters.
CONTEXT_PARAMETER_BYTES = 1024 * 1024
#: What a non-text parameter counts for against the context's budget.
_SCALAR_SIZE = 16


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One query that an app context ran, as
    :meth:`~flask_sessionext.SessionExt.get_recorded_queries` returns it.
    """

    #: The SQL sent to the driver, with the driver's placeholders.
    statement: str
    #: The parameters sent with it (a list of them for ``executemany``), or
    #: ``None`` unless ``SESSIONEXT_RECORD_PARAMETERS`` is on.
    parameters: t.Any
    #: :func:`time.perf_counter` when the query was sent to the driver.
    start_time: float
    #: :func:`time.perf_counter` when the driver returned.
    end_time: float
    #: ``end_time - start_time``, in seconds.
    duration: float
    #: ``"path:LINE (function)"`` of the code that ran the query: the first
    #: frame outside SQLAlchemy, Blinker, Flask, Werkzeug, ``contextlib`` and
    #: this package; the path is relative to ``app.root_path`` when under it.
    location: str
    #: The bind the query ran on; ``None`` for the default bind.
    bind_key: str | None


class _Queries:
    """What one app context ran: kept in ``flask.g``."""

    __slots__ = ("count", "duration", "parameter_bytes", "records", "reporting")

    def __init__(self, records: deque[QueryRecord] | None) -> None:
        #: Queries run, and their total duration (for ``Server-Timing``).
        self.count = 0
        self.duration = 0.0
        #: The newest records; ``None`` when recording is off.
        self.records = records
        #: The size of the parameters kept so far.
        self.parameter_bytes = 0
        #: Whether a ``slow_query`` send is running (its queries are not
        #: reported again, so a receiver that writes to the database with a
        #: threshold of 0 does not loop).
        self.reporting = False


def _module_dir(module: types.ModuleType) -> str:
    return os.path.dirname(os.path.abspath(str(module.__file__))) + os.sep


#: Code in these directories, or files, is never a query's location.
_SKIPPED_DIRS = tuple(
    _module_dir(module)
    for module in (sa, blinker, flask, werkzeug, sys.modules[__package__])
)
_SKIPPED_FILES = (os.path.abspath(contextlib.__file__), "<string>")


class Recorder:
    """The recording settings of one app, read by :func:`from_config`, and
    where its queries' locations are.
    """

    def __init__(
        self,
        *,
        record: bool,
        limit: int | None,
        parameters: bool,
        threshold: float | None,
        server_timing: bool,
        root_path: str,
    ) -> None:
        self.record = record
        self.limit = limit
        self.parameters = parameters
        self.threshold = threshold
        self.server_timing = server_timing
        self._root = os.path.abspath(root_path) + os.sep
        #: File name -> how a location shows it; ``None`` for skipped files.
        self._files: dict[str, str | None] = {}

    @property
    def active(self) -> bool:
        """Whether any of the features needs the cursor receivers."""
        return self.record or self.threshold is not None or self.server_timing

    def install(self, app: Flask) -> None:
        """Connect the receivers and the ``after_request`` function that the
        settings need, and nothing when all features are off.
        """
        if self.active:
            # Module-level functions: Blinker holds them strongly, and they
            # hold no app, so the app can be collected.
            before_cursor_execute.connect(_before, sender=app, weak=False)
            after_cursor_execute.connect(_after, sender=app, weak=False)
        if self.server_timing:
            app.after_request(_add_server_timing)

    def location(self) -> str:
        """``"path:LINE (function)"`` of the first caller frame outside the
        skipped packages.
        """
        files = self._files
        frame = inspect.currentframe()
        while frame is not None:
            code = frame.f_code
            filename = code.co_filename
            try:
                shown = files[filename]
            except KeyError:
                shown = files[filename] = self._show(filename)
            if shown is not None:
                return f"{shown}:{frame.f_lineno} ({code.co_name})"
            frame = frame.f_back
        return _UNKNOWN

    def _show(self, filename: str) -> str | None:
        if filename in _SKIPPED_FILES or filename.startswith("<sqlalchemy generated"):
            return None
        if filename.startswith("<"):  # <stdin>, <console>, ...
            return filename
        path = os.path.abspath(filename)
        if path in _SKIPPED_FILES or path.startswith(_SKIPPED_DIRS):
            return None
        if path.startswith(self._root):
            return path[len(self._root) :]
        return path

    def new_queries(self, ctx: AppContext) -> _Queries:
        """Start the queries of ``ctx``, at its first query."""
        queries = _Queries(deque(maxlen=self.limit) if self.record else None)
        setattr(ctx.g, _QUERIES, queries)
        return queries

    def slow(self, app: Flask, queries: _Queries, record: QueryRecord) -> None:
        """Log ``record`` and send ``slow_query``."""
        statement = " ".join(record.statement.split())
        if len(statement) > _STATEMENT_LENGTH:
            statement = statement[: _STATEMENT_LENGTH - 3] + "..."
        app.logger.warning(
            "Slow query: %.1f ms at %s: %s",
            record.duration * 1000,
            record.location,
            statement,
        )
        queries.reporting = True
        try:
            report(slow_query, app, query=record)
        finally:
            queries.reporting = False


def _before(
    sender: Flask,
    conn: sa.Connection,
    cursor: t.Any,
    statement: str,
    parameters: t.Any,
    context: ExecutionContext | None,
    executemany: bool,
    bind_key: str | None,
) -> None:
    # The execution context is the query's own: the cheapest place for its
    # start. (None for some dialects' special queries.)
    if context is not None:
        context._sessionext_query_start = perf_counter()  # type: ignore[attr-defined]


def _after(
    sender: Flask,
    conn: sa.Connection,
    cursor: t.Any,
    statement: str,
    parameters: t.Any,
    context: ExecutionContext | None,
    executemany: bool,
    bind_key: str | None,
) -> None:
    end = perf_counter()
    start: float | None = getattr(context, "_sessionext_query_start", None)
    ctx = app_context_or_none()
    if start is None or ctx is None or ctx.app is not sender:
        return  # outside the app's contexts, or begun before recording
    recorder: Recorder = sender.extensions["sessionext"].recorder
    queries: _Queries | None = getattr(ctx.g, _QUERIES, None)
    if queries is None:
        queries = recorder.new_queries(ctx)
    duration = end - start
    queries.count += 1
    queries.duration += duration
    threshold = recorder.threshold
    slow = threshold is not None and duration > threshold and not queries.reporting
    if queries.records is None and not slow:
        return
    kept = None
    if recorder.parameters:
        kept, size = _bounded(parameters, 2)
        if queries.parameter_bytes + size > CONTEXT_PARAMETER_BYTES:
            kept = _OVER_BUDGET
        else:
            queries.parameter_bytes += size
    record = QueryRecord(
        statement,
        kept,
        start,
        end,
        duration,
        recorder.location(),
        bind_key,
    )
    if queries.records is not None:
        queries.records.append(record)
    if slow:
        recorder.slow(sender, queries, record)


_OVER_BUDGET = (
    f"<parameters not kept: this app context has recorded"
    f" {CONTEXT_PARAMETER_BYTES // 1024} KiB of parameters>"
)


def _bounded(value: t.Any, depth: int) -> tuple[t.Any, int]:
    """``value`` with long strings and bytes cut to :data:`PARAMETER_LENGTH`,
    and its size, through ``depth`` levels of dicts, lists and tuples
    (``executemany`` sends a list of them).
    """
    if isinstance(value, str):
        if len(value) <= PARAMETER_LENGTH:
            return value, len(value)
        cut = len(value) - PARAMETER_LENGTH
        text = f"{value[:PARAMETER_LENGTH]}...<{cut} more characters>"
        return text, len(text)
    if isinstance(value, bytes):
        if len(value) <= PARAMETER_LENGTH:
            return value, len(value)
        cut = len(value) - PARAMETER_LENGTH
        data = value[:PARAMETER_LENGTH] + f"...<{cut} more bytes>".encode()
        return data, len(data)
    if depth and isinstance(value, dict):
        items = {key: _bounded(item, depth - 1) for key, item in value.items()}
        return (
            {key: item for key, (item, _) in items.items()},
            sum(size for _, size in items.values()),
        )
    if depth and isinstance(value, (list, tuple)):
        pairs = [_bounded(item, depth - 1) for item in value]
        kept_items = [item for item, _ in pairs]
        return (
            kept_items if isinstance(value, list) else tuple(kept_items),
            sum(size for _, size in pairs),
        )
    return value, _SCALAR_SIZE


quiet_receivers.update((_before, _after))


def _add_server_timing(response: Response) -> Response:
    """``after_request`` function: the app context's query count and time."""
    ctx = app_context_or_none()
    queries: _Queries | None = getattr(ctx.g, _QUERIES, None) if ctx else None
    count, duration = (queries.count, queries.duration) if queries else (0, 0.0)
    noun = "query" if count == 1 else "queries"
    value = f'db;dur={duration * 1000:.1f};desc="{count} {noun}"'
    existing = response.headers.getlist("Server-Timing")
    if existing:
        value = ", ".join([*existing, value])
    response.headers["Server-Timing"] = value
    return response


def recorded(ctx: AppContext) -> list[QueryRecord]:
    """The records of ``ctx``, oldest first."""
    queries: _Queries | None = getattr(ctx.g, _QUERIES, None)
    if queries is None or queries.records is None:
        return []
    return list(queries.records)


def dropped(ctx: AppContext) -> int:
    """How many records of ``ctx`` the limit dropped."""
    queries: _Queries | None = getattr(ctx.g, _QUERIES, None)
    if queries is None or queries.records is None:
        return 0
    return queries.count - len(queries.records)
