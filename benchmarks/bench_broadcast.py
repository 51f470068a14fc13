"""``python -m benchmarks.bench_broadcast``: what ``SESSIONEXT_BROADCAST``
costs a committing transaction, and how long a commit takes to reach the
other processes.

1. *Cost per committed transaction*: the ``write`` workload of
   :mod:`.bench_apps` (a request inserting ten rows and committing) on the
   ``sessionext`` adapter with broadcast off, publishing, and publishing with
   a receiver in the process, in interleaved rounds
   (:func:`.bench_apps.run`); the statements each request runs (its round
   trips), counted with ``before_cursor_execute`` in an untimed pass.
2. *Latency*: 4 processes publish at once (each commit stamped with the
   wall-clock time before it) and receive everything; the delay from that
   stamp to each process's receiver, median and 99th percentile.
3. *Load*, on PostgreSQL only, on a server that flushes commits to disk
   (:mod:`.broadcast_load`): commits per second of 1, 4 and 16 writer
   processes with broadcast on and off, and the commits of 4 writers while
   another publisher waits before its COMMIT.

Part of ``python -m benchmarks`` (:func:`section`, on each database). Alone:
on PostgreSQL (the tests' throwaway server) by default, ``--db sqlite`` for
the polling mode; ``--quick`` is a smoke run.
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
from werkzeug.test import EnvironBuilder

from flask_sessionext import CommittedChange, SessionExt
from flask_sessionext.signals import models_committed_anywhere

from . import bench_apps, broadcast_load

PUBLISHERS = 4
#: What the section of ``results.md`` measured, above its tables.
METHOD = (
    "The `write` workload of the adapters (a request inserting ten rows and"
    " committing) on `sessionext` with broadcast off, publishing (no receiver"
    " in the process), and publishing with a receiver (its listener thread"
    " receiving every commit), in interleaved rounds: µs per request and the"
    " median per-round ratio to off. Statements are the cursor executions of"
    " one request, counted in an untimed pass (the `COMMIT` is not one)."
    f" Latency: {PUBLISHERS} processes publish and receive at once; the delay"
    " from the wall-clock time stamped before each commit to each process's"
    " receiver. The targets: <= 10 % and <= one extra round trip on"
    " `write`, p99 < 50 ms on loopback PostgreSQL. " + broadcast_load.METHOD
)
#: The latency part's polling interval on SQLite.
POLL_INTERVAL = 0.01


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
        SESSIONEXT_BROADCAST={"channel": "bench", "poll_interval": POLL_INTERVAL}
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


#: The write workload's adapters: broadcast off, publishing, and publishing
#: with a receiver in the process (its listener thread running).
WRITE_ADAPTERS = ("sessionext", "sessionext_publish", "sessionext_receive")
#: The targets of broadcast's cost.
TARGET_RATIO = 1.10
TARGET_EXTRA_STATEMENTS = 1
TARGET_P99_MS = 50.0


def statements_per_request(adapter: bench_apps.Adapter, n: int = 20) -> float:
    """The statements (cursor executions) of one ``write`` request, counted
    in an untimed pass; the ``COMMIT`` is not one of them.
    """
    count = [0]

    def counter(*args: t.Any) -> None:
        count[0] += 1

    environ = EnvironBuilder(path="/write").get_environ()
    bench_apps._turn(adapter.app, environ, 1)  # connected, compiled
    sa.event.listen(adapter.engine, "before_cursor_execute", counter)
    try:
        bench_apps._turn(adapter.app, environ, n)
    finally:
        sa.event.remove(adapter.engine, "before_cursor_execute", counter)
    return count[0] / n


def write_cost(
    url_for: t.Callable[[str], str], rounds: int, scale: float
) -> dict[str, dict[str, float]]:
    """The ``write`` workload of ``bench_apps`` (a request inserting ten rows
    and committing) with broadcast off and on, in interleaved rounds: µs per
    request, the median per-round ratio to off with its interquartile range,
    and the statements per request.
    """
    adapters = {name: bench_apps.build(name, url_for(name)) for name in WRITE_ADAPTERS}
    try:
        statements = {
            name: statements_per_request(adapter) for name, adapter in adapters.items()
        }
        results = bench_apps.run(
            adapters, ("write",), rounds, scale, baseline="sessionext"
        )
    finally:
        for name, adapter in adapters.items():
            if name == "sessionext_receive":
                models_committed_anywhere.disconnect(
                    bench_apps._count, sender=adapter.app
                )
            adapter.engine.dispose()
    return {
        name: {
            "us": results[name]["write"].us_per_request,
            "ratio": results[name]["write"].ratio,
            "ratio_q1": results[name]["write"].ratio_q1,
            "ratio_q3": results[name]["write"].ratio_q3,
            "statements": statements[name],
        }
        for name in WRITE_ADAPTERS
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
    from flask_sessionext._features.broadcast import Broadcast

    broadcast = app.extensions["sessionext"].feature(Broadcast)

    listener = broadcast.listener
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


def section(
    database: str, url_for: t.Callable[[str], str], quick: bool
) -> tuple[str, list[str], dict[str, t.Any]]:
    """The measures on ``database`` (``"sqlite"`` or ``"postgres"``), the
    cost and the latency on databases from ``url_for(name)``, the load on
    PostgreSQL on a server of its own: Markdown tables, the targets with
    their verdicts, and the figures.
    """
    rounds, scale = (3, 0.2) if quick else (30, 1.0)
    cost = write_cost(url_for, rounds, scale)
    url = url_for("broadcast_latency")
    fresh(url)
    lat = latency(url, 10 if quick else 250)
    off = cost["sessionext"]
    lines = [
        "| write request | µs | ratio to off (IQR) | statements per request |",
        "|---|---|---|---|",
    ]
    labels = {
        "sessionext": "broadcast off",
        "sessionext_publish": "publishing",
        "sessionext_receive": "publishing, listener running",
    }
    for name, label in labels.items():
        c = cost[name]
        lines.append(
            f"| {label} | {c['us']:.0f} | {c['ratio']:.3f}"
            f" ({c['ratio_q1']:.3f} to {c['ratio_q3']:.3f}) | {c['statements']:g} |"
        )
    lines += [
        "",
        f"Commit-to-receive latency, {PUBLISHERS} processes publishing and"
        f" receiving: {lat['deliveries']}/{lat['expected']} deliveries, median"
        f" {lat['median_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms,"
        f" max {lat['max_ms']:.1f} ms",
    ]
    publish = cost["sessionext_publish"]
    extra = publish["statements"] - off["statements"]
    targets = [
        f"write, publishing: {publish['ratio']:.3f} x off, target <="
        f" {TARGET_RATIO:.2f}: {_verdict(publish['ratio'] <= TARGET_RATIO)}"
        f" ({cost['sessionext_receive']['ratio']:.3f} x with the listener running)",
        f"statements per committing request: {off['statements']:g} ->"
        f" {publish['statements']:g}, target <= {TARGET_EXTRA_STATEMENTS} more:"
        f" {_verdict(extra <= TARGET_EXTRA_STATEMENTS)}",
    ]
    if database == "postgres":
        targets.append(
            f"latency p99 {lat['p99_ms']:.1f} ms, target < {TARGET_P99_MS:.0f} ms"
            f" on PostgreSQL: {_verdict(lat['p99_ms'] < TARGET_P99_MS)}"
        )
    else:
        targets.append(
            f"latency p99 {lat['p99_ms']:.1f} ms (polling every"
            f" {POLL_INTERVAL * 1000:.0f} ms; the target is PostgreSQL's)"
        )
    ok = lat["deliveries"] == lat["expected"]
    targets.append(
        f"deliveries {lat['deliveries']}/{lat['expected']}, target all: {_verdict(ok)}"
    )
    figures: dict[str, t.Any] = {"write": cost, "latency": lat}
    if database == "postgres":
        figures["load"] = broadcast_load.measure_on_durable_postgres(quick)
        load_table, load_targets = broadcast_load.report(figures["load"])
        lines += ["", load_table]
        targets += load_targets
    return "\n".join(lines), targets, figures


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    """Run the measures and print them."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_broadcast", description=__doc__
    )
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        url_for: t.Callable[[str], str]
        if args.db == "postgres":
            sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
            from _postgres import start_for_session

            server = start_for_session()
            if server is None:
                raise SystemExit(
                    "PostgreSQL server binaries not found: use --db sqlite"
                )
            url_for = server.create_database
        else:

            def url_for(name: str) -> str:
                return f"sqlite:///{tmp}/{name}.sqlite3"

        try:
            table, targets, _ = section(args.db, url_for, args.quick)
            print(f"== broadcast, {args.db} ==\n{table}\n" + "\n".join(targets))
        finally:
            if server is not None:
                server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
