"""Query recording: what :meth:`SessionExt.get_recorded_queries
<flask_sessionext.SessionExt.get_recorded_queries>` returns and the
``slow_query`` signal sends. The recording itself is a feature of the app
(see ``_features/recording.py``).
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

__all__ = ["QueryRecord"]


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
