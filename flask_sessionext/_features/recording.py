"""Query recording, slow-query reports and the ``Server-Timing`` header.

The three features time the driver call where the dialect makes it: while
one of them is on, the ``do_execute``, ``do_executemany`` and
``do_execute_no_params`` methods of each of the app's engines' dialects
(which are the engine's own) are wrapped, as the SQLite fix wraps
``do_savepoint``. No SQLAlchemy event is listened to: a listener of
``before_cursor_execute`` or ``after_cursor_execute`` (or of a dialect event)
would switch the engine's per-statement event dispatch on, which costs every
statement more than the timing itself. The bridged cursor signals stay for
the application's receivers; recording does not use them. What an app
context recorded is kept in ``flask.g``, and goes with the context.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import inspect
import os
import sys
import types
import typing as t
import uuid
import weakref
from collections import deque
from time import perf_counter

import blinker
import flask
import sqlalchemy as sa
import werkzeug
from flask import Flask, Response
from flask.ctx import AppContext
from sqlalchemy.engine.interfaces import ExecutionContext

from .._session.frameworks import quart_app_context
from .._session.session import _current_app_context, app_ctx_scope
from ..recording import QueryRecord
from ..signals import slow_query
from .base import EVERY_OPERATION, Feature, Parts, report

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


#: What a :class:`QueryRecord` holds, kept as a plain tuple until read
#: (``statement, parameters, start_time, end_time, location, bind_key``): a
#: tuple costs a fraction of the frozen dataclass, and most records are never
#: read.
_Row = tuple[str, t.Any, float, float, str, "str | None"]


class _Queries:
    """What one app context ran: kept in ``flask.g``."""

    __slots__ = ("count", "duration", "parameter_bytes", "records", "reporting")

    def __init__(self, records: deque[_Row] | None) -> None:
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
    for module in (
        sa,
        blinker,
        flask,
        werkzeug,
        sys.modules[__package__.partition(".")[0]],
    )
)
_SKIPPED_FILES = (os.path.abspath(contextlib.__file__), "<string>")


class Recorder(Feature):
    """Query recording, slow-query reports and ``Server-Timing`` of one app,
    as its recording settings say, and where its queries' locations are.
    """

    name = "query recording"
    sends = ("slow_query",)
    # It times the dialect's driver calls, with no event.
    raises_after = EVERY_OPERATION

    def __init__(self, parts: Parts, rank: int) -> None:
        super().__init__(parts, rank)
        settings = parts.settings.recording
        self.record = settings.record
        self.limit = settings.limit
        self.parameters = settings.parameters
        self.threshold = settings.threshold
        self.server_timing = settings.server_timing
        self._root = os.path.abspath(settings.root_path) + os.sep
        self._slow_receivers = False
        #: File name -> how a location shows it; ``None`` for skipped files.
        self._files: dict[str, str | None] = {}

    @property
    def active(self) -> bool:
        """Whether any of the features needs the driver calls timed."""
        return self.record or self.threshold is not None or self.server_timing

    def start(self, app: Flask) -> None:
        """Time the driver calls of the app's engines and add the
        ``after_request`` function that the settings need, and nothing when
        all features are off.
        """
        self.add_engines(app, list(self.parts.engines.items()))
        if self.server_timing:
            app.after_request(_add_server_timing)

    def add_engines(
        self, app: Flask, engines: t.Sequence[tuple[str | None, sa.Engine]]
    ) -> None:
        """Time the driver calls of ``engines`` when a feature needs it."""
        if self.active:
            app_ref = weakref.ref(app)
            for bind_key, engine in engines:
                _time_driver_calls(self, app_ref, bind_key, engine.dialect)

    def refresh(self, app: Flask) -> None:
        """Note whether a slow query has a receiver that may raise."""
        self._slow_receivers = (
            self.threshold is not None
            and next(slow_query.receivers_for(app), None) is not None
        )

    def recorded(self, ctx: AppContext) -> list[QueryRecord]:
        """The records of ``ctx``, oldest first."""
        return _recorded(ctx)

    def dropped(self, ctx: AppContext) -> int:
        """How many records of ``ctx`` the limit dropped."""
        return _dropped(ctx)

    def may_raise(self) -> bool:
        """Whether ``slow_query`` is sent and has a receiver for the app."""
        return self._slow_receivers

    def location(self) -> str:
        """``"path:LINE (function)"`` of the first caller frame outside the
        skipped packages.
        """
        files = self._files
        frame: t.Any = inspect.currentframe()
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

    def report_slow(self, app: Flask, queries: _Queries, record: QueryRecord) -> None:
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

    def add(
        self,
        ctx: AppContext,
        statement: str,
        parameters: t.Any,
        start: float,
        end: float,
        bind_key: str | None,
    ) -> None:
        """Count a query that ``ctx`` ran, and record or report it as the
        settings say.
        """
        queries: _Queries | None = getattr(ctx.g, _QUERIES, None)
        if queries is None:
            queries = self.new_queries(ctx)
        duration = end - start
        queries.count += 1
        queries.duration += duration
        threshold = self.threshold
        slow = threshold is not None and duration > threshold and not queries.reporting
        records = queries.records
        if records is None and not slow:
            return
        kept = None
        if self.parameters:
            kept, size = _bounded(parameters, 2)
            if queries.parameter_bytes + size > CONTEXT_PARAMETER_BYTES:
                kept = _OVER_BUDGET
            else:
                queries.parameter_bytes += size
        row = (statement, kept, start, end, self.location(), bind_key)
        if records is not None:
            records.append(row)
        if slow:
            self.report_slow(ctx.app, queries, _record(row))


def _time_driver_calls(
    recorder: Recorder,
    app_ref: weakref.ref[Flask],
    bind_key: str | None,
    dialect: sa.Dialect,
) -> None:
    """Wrap the driver calls of ``dialect``: in an app context of the app,
    each one is timed and handed to ``recorder``; anywhere else it runs as
    it is. A failed call is not a query that ran, as for the cursor events.

    The wrappers hold the app weakly, so the app can be collected.
    """
    add = recorder.add
    initialize = dialect.initialize
    initializing = False

    def timed(call: _DriverCall) -> _DriverCall:
        def timed_call(
            cursor: t.Any,
            statement: str,
            parameters: t.Any,
            context: ExecutionContext | None = None,
        ) -> None:
            try:
                ctx = _current_app_context()
            except RuntimeError:
                quart_ctx = quart_app_context()  # a Quart app's, else none
                if quart_ctx is None:
                    call(cursor, statement, parameters, context)
                    return
                ctx = quart_ctx
            if initializing or ctx.app is not app_ref():
                call(cursor, statement, parameters, context)
                return
            start = perf_counter()
            call(cursor, statement, parameters, context)
            end = perf_counter()
            add(ctx, statement, parameters, start, end, bind_key)

        return timed_call

    do_execute_no_params = dialect.do_execute_no_params

    def no_params(
        cursor: t.Any,
        statement: str,
        parameters: t.Any,
        context: ExecutionContext | None = None,
    ) -> None:
        do_execute_no_params(cursor, statement, context)

    timed_no_params = timed(no_params)

    def timed_execute_no_params(
        cursor: t.Any, statement: str, context: ExecutionContext | None = None
    ) -> None:
        # What the cursor events show for such a statement: the empty
        # parameter set that SQLAlchemy compiled for it.
        parameters = context.parameters[0] if context is not None else ()
        timed_no_params(cursor, statement, parameters, context)

    def initialize_untimed(connection: sa.Connection) -> None:
        # The dialect's own queries at the engine's first connection (server
        # version, settings) are no queries of the application, and the
        # cursor events do not see them either. SQLAlchemy runs it once, with
        # other first connections waiting.
        nonlocal initializing
        initializing = True
        try:
            initialize(connection)
        finally:
            initializing = False

    # Set once, on the engine's own dialect (the SQLite fix sets do_savepoint so):
    # no other engine changes, and nothing is swapped back and forth later.
    dialect.initialize = initialize_untimed  # type: ignore[method-assign]
    execute, executemany = timed(dialect.do_execute), timed(dialect.do_executemany)
    dialect.do_execute = execute  # type: ignore[method-assign, assignment]
    dialect.do_executemany = executemany  # type: ignore[method-assign, assignment]
    dialect.do_execute_no_params = timed_execute_no_params  # type: ignore[method-assign]


#: The signature of ``Dialect.do_execute`` and ``do_executemany``.
_DriverCall = t.Callable[[t.Any, str, t.Any, "ExecutionContext | None"], None]


_OVER_BUDGET = (
    f"<parameters not kept: this app context has recorded"
    f" {CONTEXT_PARAMETER_BYTES // 1024} KiB of parameters>"
)


#: Parameter types kept as they are, each value counting for _SCALAR_SIZE:
#: looked up by exact type, the common case of :func:`_bounded`.
_SCALAR_TYPES = frozenset(
    (
        int,
        float,
        bool,
        type(None),
        decimal.Decimal,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        uuid.UUID,
    )
)


def _bounded(value: t.Any, depth: int) -> tuple[t.Any, int]:
    """``value`` with long strings and bytes cut to :data:`PARAMETER_LENGTH`,
    and its size, through ``depth`` levels of dicts, lists and tuples
    (``executemany`` sends a list of them).
    """
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return value, _SCALAR_SIZE
    if depth and (kind is tuple or kind is list):
        size = 0
        items = []
        for item in value:
            item_kind = type(item)
            if item_kind in _SCALAR_TYPES:
                size += _SCALAR_SIZE
            elif item_kind is str and len(item) <= PARAMETER_LENGTH:
                size += len(item)
            else:
                item, item_size = _bounded(item, depth - 1)
                size += item_size
            items.append(item)
        return (items if kind is list else tuple(items)), size
    if depth and kind is dict:
        size = 0
        kept = {}
        for key, item in value.items():
            item_kind = type(item)
            if item_kind in _SCALAR_TYPES:
                size += _SCALAR_SIZE
            elif item_kind is str and len(item) <= PARAMETER_LENGTH:
                size += len(item)
            else:
                item, item_size = _bounded(item, depth - 1)
                size += item_size
            kept[key] = item
        return kept, size
    return _bounded_any(value, depth)


def _bounded_any(value: t.Any, depth: int) -> tuple[t.Any, int]:
    """:func:`_bounded` for any type, subclasses included."""
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


def _add_server_timing(response: Response) -> Response:
    """``after_request`` function: the app context's query count and time."""
    # Flask's g or Quart's: the app context's.
    queries: _Queries | None = getattr(app_ctx_scope().g, _QUERIES, None)
    count, duration = (queries.count, queries.duration) if queries else (0, 0.0)
    noun = "query" if count == 1 else "queries"
    value = f'db;dur={duration * 1000:.1f};desc="{count} {noun}"'
    existing = response.headers.getlist("Server-Timing")
    if existing:
        value = ", ".join([*existing, value])
    response.headers["Server-Timing"] = value
    return response


def _recorded(ctx: AppContext) -> list[QueryRecord]:
    """The records of ``ctx``, oldest first."""
    queries: _Queries | None = getattr(ctx.g, _QUERIES, None)
    if queries is None or queries.records is None:
        return []
    return [_record(row) for row in queries.records]


def _record(row: _Row) -> QueryRecord:
    statement, parameters, start, end, location, bind_key = row
    return QueryRecord(
        statement, parameters, start, end, end - start, location, bind_key
    )


def _dropped(ctx: AppContext) -> int:
    """How many records of ``ctx`` the limit dropped."""
    queries: _Queries | None = getattr(ctx.g, _QUERIES, None)
    if queries is None or queries.records is None:
        return 0
    return queries.count - len(queries.records)
