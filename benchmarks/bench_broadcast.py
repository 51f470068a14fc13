"""``python -m benchmarks.bench_broadcast``: what ``SESSIONEXT_BROADCAST``
costs a committing transaction, and how long a commit takes to reach the
other processes.

1. *Cost per commit*: the ``write`` workload's transaction (one row inserted
   through ``db.session``, committed), in one process, with broadcast off
   and on, alternating rounds; the statements each commit runs (its round
   trips), counted with ``before_cursor_execute``.
2. *Latency*: 4 processes publish at once (each commit stamped with the
   wall-clock time before it) and receive everything; the delay from that
   stamp to each process's receiver, median and 99th percentile.

On PostgreSQL (the tests' throwaway server) by default; ``--db sqlite``
for the polling mode. ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_sessionext import CommittedChange, SessionExt
from flask_sessionext.signals import models_committed_anywhere

PUBLISHERS = 4


class Base(DeclarativeBase):
    """The benchmark's table."""


class Stamp(Base):
    """One committed transaction; ``at`` is the time just before its commit."""

    __tablename__ = "bench_broadcast"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[float]


def make_app(url: str, broadcast: bool) -> tuple[Flask, SessionExt]:
    """An app on ``url``, with broadcast on or off."""
    app = Flask(__name__)
    app.config.update(
        SESSIONEXT_DATABASE_URI=url,
        SESSIONEXT_RECORD_QUERIES=False,
        SESSIONEXT_BROADCAST={"channel": "bench", "poll_interval": 0.01}
        if broadcast
        else None,
    )
    return app, SessionExt(app)


def fresh(url: str) -> None:
    """Empty tables."""
    engine = sa.create_engine(url)
    for metadata in (Base.metadata, SessionExt.outbox_metadata):
        metadata.drop_all(engine)
        metadata.create_all(engine)
    engine.dispose()


def commit_one(app: Flask, db: SessionExt) -> None:
    """One ``write`` transaction."""
    with app.app_context():
        db.session.add(Stamp(at=time.time()))
        db.session.commit()


def cost(url: str, rounds: int, per_round: int) -> dict[str, float]:
    """µs per commit off and on (medians of alternating rounds), and the
    statements per commit of each.
    """
    apps = {name: make_app(url, name == "on") for name in ("off", "on")}
    timings: dict[str, list[float]] = {"off": [], "on": []}
    statements: dict[str, float] = {}
    for name, (app, db) in apps.items():
        count = [0]
        engine = app.extensions["sessionext"].engines[None]

        def counter(*args: t.Any, count: list[int] = count) -> None:
            count[0] += 1

        commit_one(app, db)  # connect first
        sa.event.listen(engine, "before_cursor_execute", counter)
        for _ in range(50):
            commit_one(app, db)
        sa.event.remove(engine, "before_cursor_execute", counter)
        statements[name] = count[0] / 50
    for _ in range(rounds):
        for name, (app, db) in apps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                commit_one(app, db)
            timings[name].append((time.perf_counter() - start) / per_round * 1e6)
    for app, _ in apps.values():
        for engine in app.extensions["sessionext"].engines.values():
            engine.dispose()
    off = statements["off"]
    on = statements["on"]
    return {
        "off_us": statistics.median(timings["off"]),
        "on_us": statistics.median(timings["on"]),
        "off_statements": off,
        "on_statements": on,
    }


def _publisher(
    url: str,
    commits: int,
    ready: t.Any,
    go: t.Any,
    results: t.Any,
) -> None:
    """One of the latency processes: receive everything, publish ``commits``."""
    app, db = make_app(url, True)
    received: list[tuple[int, float]] = []

    def on_change(
        sender: Flask, changes: list[CommittedChange], local: bool, sequence: int
    ) -> None:
        now = time.time()
        received.extend((change.primary_key[0], now) for change in changes)

    models_committed_anywhere.connect(on_change, sender=app)
    broadcast = app.extensions["sessionext"].broadcast
    from flask_sessionext._outbox_listener import listener_of

    listener = listener_of(broadcast.engine, broadcast.settings)
    assert listener is not None
    assert listener.connected.wait(30)
    ready.release()
    go.wait()
    for _ in range(commits):
        commit_one(app, db)
        time.sleep(0.005)
    deadline = time.monotonic() + 30
    while len(received) < commits * PUBLISHERS and time.monotonic() < deadline:
        time.sleep(0.01)
    results.put((os.getpid(), received))


def latency(url: str, commits: int) -> dict[str, float]:
    """Commit-to-receive delays across :data:`PUBLISHERS` processes, ms."""
    ctx = mp.get_context("spawn")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_publisher, args=(url, commits, ready, go, results))
        for _ in range(PUBLISHERS)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            assert ready.acquire(timeout=60), "a publisher did not start"
        go.set()
        received = [results.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stamps = {row.id: row.at for row in conn.execute(sa.select(Stamp.id, Stamp.at))}
    engine.dispose()
    delays = sorted(
        (at - stamps[pk]) * 1000 for _, pairs in received for pk, at in pairs
    )
    expected = commits * PUBLISHERS * PUBLISHERS
    return {
        "deliveries": len(delays),
        "expected": expected,
        "median_ms": statistics.median(delays),
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
        "max_ms": delays[-1],
    }


def main(argv: list[str] | None = None) -> int:
    """Run both measures and print them."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_broadcast", description=__doc__
    )
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.db == "postgres":
            sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
            from _postgres import start_for_session

            server = start_for_session()
            if server is None:
                raise SystemExit(
                    "PostgreSQL server binaries not found: use --db sqlite"
                )
            url = server.create_database("bench_broadcast")
        else:
            url = f"sqlite:///{tmp}/bench.sqlite3"
        try:
            fresh(url)
            rounds, per_round = (3, 20) if args.quick else (15, 200)
            c = cost(url, rounds, per_round)
            print(f"Cost per committed transaction ({args.db}, write workload):")
            print(
                f"  off {c['off_us']:.0f} µs, {c['off_statements']:.0f} statements;"
                f" on {c['on_us']:.0f} µs, {c['on_statements']:.0f} statements"
                f" ({c['on_us'] / c['off_us'] - 1:+.1%},"
                f" {c['on_statements'] - c['off_statements']:+.0f} round trip)"
            )
            fresh(url)
            lat = latency(url, 20 if args.quick else 250)
            print(
                f"Commit-to-receive latency, {PUBLISHERS} processes publishing and"
                f" receiving: {lat['deliveries']}/{lat['expected']} deliveries,"
                f" median {lat['median_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms,"
                f" max {lat['max_ms']:.1f} ms"
            )
        finally:
            if server is not None:
                server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
