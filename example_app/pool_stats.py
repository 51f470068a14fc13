"""Pool statistics gathered from the ``connect``, ``checkout``, ``checkin``
and ``close`` signals.
"""

from __future__ import annotations

import threading
import typing as t
from collections import Counter

from flask import Blueprint, Flask, current_app, render_template
from sqlalchemy import pool as sa_pool

from flask_sessionext import signals

bp = Blueprint("pool", __name__)
EVENTS = ("connect", "checkout", "checkin", "close")


class PoolStats:
    """Counts of pool events by bind, safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()

    def receiver(self, event: str) -> t.Callable[..., None]:
        """A receiver that counts ``event``."""

        def count(sender: Flask, bind_key: str | None = None, **kwargs: t.Any) -> None:
            with self._lock:
                self.counts[bind_key or "default", event] += 1

        return count

    def rows(self) -> list[tuple[str, dict[str, int]]]:
        """Per bind: each event's count."""
        with self._lock:
            binds = sorted({bind for bind, _ in self.counts})
            return [(b, {e: self.counts[b, e] for e in EVENTS}) for b in binds]


def init_app(app: Flask) -> None:
    """Count the app's pool events."""
    stats = app.extensions["example_pool_stats"] = PoolStats()
    for event in EVENTS:
        signal = getattr(signals, event)
        signal.connect(stats.receiver(event), sender=app, weak=False)
    app.register_blueprint(bp)


@bp.get("/pool")
def pool() -> str:
    """The counts, and what the pool holds right now."""
    from . import db

    stats: PoolStats = current_app.extensions["example_pool_stats"]
    pool = db.engine.pool
    return render_template(
        "pool.html",
        rows=stats.rows(),
        numbers=pool_numbers(pool),
        pool_name=type(pool).__name__,
    )


def pool_numbers(pool: sa_pool.Pool) -> list[tuple[str, int]]:
    """What a ``QueuePool`` holds, in words; nothing for the pools that keep
    no count (``NullPool``, ``StaticPool``).

    ``pool.status()`` reports ``Current Overflow: -3`` for a pool of 5 with
    2 connections open: the overflow counter starts at minus the pool size.
    """
    if not isinstance(pool, sa_pool.QueuePool):
        return []
    overflow = pool.overflow()
    return [
        ("Pool size (connections kept open)", pool.size()),
        ("Open connections", pool.size() + overflow),
        ("In use by requests", pool.checkedout()),
        ("Idle in the pool", pool.checkedin()),
        ("Opened beyond the pool size (overflow)", max(overflow, 0)),
    ]
