"""Soak: many requests through one app, in one process, and the process's
memory over time (issue: reliability).

The app runs with everything that keeps per-request state on: query
recording with parameters, ``Server-Timing``, a ``models_committed``
receiver (change tracking) and a ``before_cursor_execute`` receiver. The
requests are in-process WSGI calls through Werkzeug's test client, one after
another in this thread (no sockets, so no network buffers blur the memory
figures; ``tests/reliability`` covers the real multi-threaded server): 60%
reads, 30% writes, each inserting a row and deleting the one written 500
writes earlier so the table stays small, and 10% views that raise after
flushing (500 responses).

The resident set size (``VmRSS``) is read after a warm-up and at the end,
after a garbage collection each time. Exits non-zero when it grew by 5 MB or
more, when a response or a signal count is not what the mix predicts, or
when a connection or session is left behind::

    python -m benchmarks.soak                      # 100,000 requests, SQLite file
    python -m benchmarks.soak --requests 20000 --seconds 60
    python -m benchmarks.soak --database-url postgresql+psycopg://user:pw@127.0.0.1/soak
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
import typing as t

import sqlalchemy as sa
from flask import Flask
from sqlalchemy import orm

from flask_sessionext import SessionExt, signals

#: Growth of the resident set, after warm-up, that fails the soak.
LIMIT_MB = 5.0
#: How many writes a row lives before a later write deletes it.
KEEP = 500


class Base(orm.DeclarativeBase):
    """The soak's models."""


class Note(Base):
    """A row that a write inserts, and a later write deletes."""

    __tablename__ = "soak_notes"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    serial: orm.Mapped[int] = orm.mapped_column(unique=True)
    text: orm.Mapped[str] = orm.mapped_column(sa.String(100))


class _Failed(Exception):
    """What a failing view raises after flushing."""


class SoakFlask(Flask):
    """Counts the exceptions of failed requests instead of logging 10,000
    tracebacks.
    """

    failures = 0

    def log_exception(self, exc_info: t.Any) -> None:
        """Count, do not log."""
        self.failures += 1


class Counters:
    """What the receivers saw."""

    def __init__(self) -> None:
        self.committed = 0
        self.changes = 0
        self.statements = 0

    def models_committed(self, sender: Flask, changes: list[t.Any]) -> None:
        """Count commits and their changes."""
        self.committed += 1
        self.changes += len(changes)

    def before_cursor_execute(self, sender: Flask, **kwargs: t.Any) -> None:
        """Count statements."""
        self.statements += 1


def create_app(url: str) -> tuple[SoakFlask, SessionExt]:
    """The app under soak, on a fresh ``soak_notes`` table."""
    app = SoakFlask(__name__, instance_path=tempfile.gettempdir())
    app.config.update(
        SESSIONEXT_DATABASE_URI=url,
        SESSIONEXT_RECORD_QUERIES=True,
        SESSIONEXT_RECORD_PARAMETERS=True,
        SESSIONEXT_SERVER_TIMING=True,
    )
    db = SessionExt(app)
    with app.app_context():
        Base.metadata.drop_all(db.engine)
        Base.metadata.create_all(db.engine)

    @app.get("/notes/<int:serial>")
    def read(serial: int) -> dict[str, t.Any]:
        note = db.session.scalar(sa.select(Note).where(Note.serial == serial))
        count = db.session.scalar(sa.select(sa.func.count(Note.id)))
        return {
            "text": note.text if note else None,
            "count": count,
            "queries": len(db.get_recorded_queries()),
        }

    @app.post("/notes/<int:serial>")
    def write(serial: int) -> dict[str, t.Any]:
        with db.transaction() as session:
            session.add(Note(serial=serial, text=f"note {serial} " + "x" * 50))
            old = session.scalar(sa.select(Note).where(Note.serial == serial - KEEP))
            if old is not None:
                session.delete(old)
        return {"queries": len(db.get_recorded_queries())}

    @app.post("/fail/<int:serial>")
    def fail(serial: int) -> dict[str, t.Any]:
        db.session.add(Note(serial=-serial, text="never committed"))
        db.session.flush()
        raise _Failed("the view failed after flushing")

    return app, db


def rss_mb() -> float:
    """The resident set size of this process, in MB, after a collection."""
    gc.collect()
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # Not Linux: the peak is the best the standard library offers.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; the exit status says whether it passed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=900.0, help="time bound")
    parser.add_argument(
        "--warmup", type=int, default=None, help="default: 10%% of --requests"
    )
    parser.add_argument(
        "--database-url", default=None, help="default: a new SQLite file"
    )
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else args.requests // 10

    with tempfile.TemporaryDirectory(prefix="sessionext-soak-") as tmp:
        url = args.database_url or f"sqlite:///{os.path.join(tmp, 'soak.sqlite3')}"
        app, db = create_app(url)
        counters = Counters()
        with (
            signals.models_committed.connected_to(
                counters.models_committed, sender=app
            ),
            signals.before_cursor_execute.connected_to(
                counters.before_cursor_execute, sender=app
            ),
        ):
            return _soak(app, db, counters, args.requests, args.seconds, warmup)


def _soak(
    app: SoakFlask,
    db: SessionExt,
    counters: Counters,
    requests: int,
    seconds: float,
    warmup: int,
) -> int:
    client = app.test_client()
    statuses: dict[int, int] = {}
    kinds = {"read": 0, "write": 0, "fail": 0}
    timing_headers = 0
    writes = 0
    before: float | None = None
    started = time.perf_counter()
    deadline = started + seconds
    done = 0
    for done in range(1, requests + 1):
        slot = done % 10
        if slot < 6:
            kinds["read"] += 1
            response = client.get(f"/notes/{max(writes - 1, 0)}")
        elif slot < 9:
            kinds["write"] += 1
            response = client.post(f"/notes/{writes}")
            writes += 1
        else:
            kinds["fail"] += 1
            response = client.post(f"/fail/{done}")
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        timing_headers += "Server-Timing" in response.headers
        response.close()
        if done == warmup:
            before = rss_mb()
            measured_from = time.perf_counter()
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - started
    after = rss_mb()
    if before is None:  # stopped by the time bound during the warm-up
        before, measured_from = after, time.perf_counter()

    with app.app_context():
        engine = db.engine
    pool = engine.pool
    leaked = pool.checkedout() if isinstance(pool, sa.pool.QueuePool) else 0
    with app.app_context():
        scoped = db.session
    registry: t.Any = scoped.registry
    open_sessions = len(registry.registry)
    engine.dispose()

    growth = after - before
    expected = {200: kinds["read"] + kinds["write"], 500: kinds["fail"]}
    problems = []
    if growth >= LIMIT_MB:
        problems.append(f"memory grew by {growth:.1f} MB (limit {LIMIT_MB:g} MB)")
    if {k: v for k, v in statuses.items() if v} != {
        k: v for k, v in expected.items() if v
    }:
        problems.append(f"statuses {statuses}, expected {expected}")
    if counters.committed != kinds["write"] or app.failures != kinds["fail"]:
        problems.append(
            f"{counters.committed} models_committed for {kinds['write']} writes,"
            f" {app.failures} failures for {kinds['fail']} failing requests"
        )
    if timing_headers != done:
        problems.append(f"Server-Timing on {timing_headers} of {done} responses")
    if leaked or open_sessions:
        problems.append(f"{leaked} connections and {open_sessions} sessions left")

    backend = engine.url.get_backend_name()
    print(f"soak: {done:,} requests in {elapsed:.1f} s: {done / elapsed:,.0f} req/s")
    print(
        f"  database: {backend} ({engine.url.render_as_string(hide_password=True)});"
        f" in-process WSGI calls through Werkzeug's test client, one thread"
    )
    print(
        f"  mix: {kinds['read']:,} reads, {kinds['write']:,} writes,"
        f" {kinds['fail']:,} failing; statuses {dict(sorted(statuses.items()))};"
        f" {counters.committed:,} models_committed ({counters.changes:,} changes),"
        f" {counters.statements:,} statements seen by before_cursor_execute"
    )
    print(
        f"  RSS after warm-up ({warmup:,} requests): {before:.1f} MB;"
        f" at the end: {after:.1f} MB; growth {growth:+.2f} MB over"
        f" {done - min(warmup, done):,} requests"
        f" ({time.perf_counter() - measured_from:.0f} s); limit {LIMIT_MB:g} MB"
    )
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
