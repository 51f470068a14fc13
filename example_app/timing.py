"""Query timing: ``Server-Timing`` is on in the config; this adds a footer
with the queries and database time of the request.
"""

from __future__ import annotations

import typing as t

from flask import Flask


def init_app(app: Flask) -> None:
    """Give every template ``db_stats()``, to call at the end of the page."""
    from . import db

    def db_stats() -> dict[str, t.Any]:
        queries = db.get_recorded_queries()
        return {
            "count": len(queries),
            "ms": sum(q.duration for q in queries) * 1000,
        }

    @app.context_processor
    def query_footer() -> dict[str, t.Any]:
        # A function, not figures: the footer comes last, so it also counts
        # the queries that rendering the page ran (lazy loads).
        return {"db_stats": db_stats}
