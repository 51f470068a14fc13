"""Several processes on one SQLite file: requests per second and "database
is locked" errors.

Each setup runs in 2 and 4 processes of 4 threads each, all started at once
on one file, three times 2 seconds per workload: ``read`` (five primary-key
reads), ``write`` (ten inserts and a commit) and ``rw`` (a read, then an
insert and a commit). Requests go straight to the WSGI callable of the
adapters of :mod:`.bench_apps`. Besides the adapters with their own
defaults, two setups show the transaction modes this extension did not
choose: ``begin_deferred`` (a plain ``BEGIN`` when the session's transaction
begins, the pysqlite recipe of SQLAlchemy's documentation, as version 0.1
had it) and ``begin_immediate`` (``BEGIN IMMEDIATE`` there), both with the
extension's PRAGMAs. ``rows`` checks that the table holds exactly the rows
of the successful requests.
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa
from werkzeug.test import EnvironBuilder

from flask_sessionext._config.binds import PRAGMA_DEFAULTS

from . import bench_apps

#: The method, for the report.
METHOD = (
    "2 and 4 processes of 4 threads each on one SQLite file, each thread"
    " sending requests to the WSGI callable for 2 seconds, three times over"
    " the run (the table gives the median requests/s and all errors): 'read' (five"
    " primary-key reads), 'write' (ten inserts, a commit), 'rw' (a read,"
    " then an insert and a commit). 'locked' counts 'database is locked'"
    " errors. raw_wal is plain SQLAlchemy with the PRAGMAs this extension"
    " sets (WAL, synchronous=NORMAL, foreign keys), raw and fsa have SQLite's"
    " defaults. begin_deferred and begin_immediate are this extension with the"
    " session's transaction begun at once, by BEGIN (version 0.1) or BEGIN"
    " IMMEDIATE: the modes it did not choose."
)
SETUPS = (
    "raw",
    "raw_wal",
    "fsa",
    "sessionext",
    "sessionext_broadcast",
    "begin_deferred",
    "begin_immediate",
)
QUICK_SETUPS = ("raw", "fsa", "sessionext", "sessionext_broadcast")
WORKLOADS = ("read", "write", "rw")
#: Rows each request of a workload inserts.
ROWS = {"read": 0, "write": 10, "rw": 1}
THREADS = 4
#: Runs of each cell in a full run; the table gives the median.
REPEATS = 3


@dataclass
class Figures:
    """What the processes of one run did together."""

    requests_per_second: float
    locked: int
    other_errors: int
    #: Whether the table holds exactly the rows of the successful requests.
    rows_ok: bool
    first_error: str


def _adapter(setup: str, url: str) -> bench_apps.Adapter:
    if setup == "raw_wal":
        adapter = bench_apps.make("raw", url)

        @sa.event.listens_for(adapter.engine, "connect")
        def pragmas(dbapi_connection: t.Any, record: t.Any) -> None:
            for name, value in PRAGMA_DEFAULTS.items():
                dbapi_connection.execute(f"PRAGMA {name} = {value}").fetchall()

        return adapter
    if setup == "sessionext_broadcast":
        return bench_apps.make("sessionext_receive", url)
    if setup.startswith("begin_"):
        adapter = bench_apps.make("sessionext", url)
        begin = "BEGIN" if setup == "begin_deferred" else "BEGIN IMMEDIATE"

        def do_begin(dbapi_connection: t.Any) -> None:
            if not dbapi_connection.in_transaction:
                dbapi_connection.execute(begin)

        setattr(adapter.engine.dialect, "do_begin", do_begin)  # noqa: B010
        return adapter
    return bench_apps.make(setup, url)


def _worker(
    setup: str,
    url: str,
    workload: str,
    seconds: float,
    barrier: t.Any,
    results: t.Any,
) -> None:
    """One process: ``THREADS`` threads sending requests for ``seconds``."""
    adapter = _adapter(setup, url)
    app = adapter.app
    app.config["PROPAGATE_EXCEPTIONS"] = True
    environ = EnvironBuilder(path=f"/{workload}").get_environ()
    counts = {"ok": 0, "locked": 0, "other": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
        if not status.startswith("200"):
            raise RuntimeError(f"{app.name} answered {status}")
        return None

    def run(deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                body = app.wsgi_app(dict(environ), start_response)
                for _chunk in body:
                    pass
                kind = "ok"
            except Exception as e:
                kind = "locked" if "database is locked" in str(e) else "other"
                if kind == "other":
                    errors.append(f"{type(e).__name__}: {e}"[:300])
            with lock:
                counts[kind] += 1

    bench_apps.Base.metadata.create_all(adapter.engine)  # nothing: it is there
    barrier.wait()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=run, args=(deadline,)) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    adapter.engine.dispose()
    results.put((counts["ok"], counts["locked"], counts["other"], errors[:1]))


def measure(
    setup: str, url: str, workload: str, processes: int, seconds: float
) -> Figures:
    """Run ``processes`` processes of ``setup`` on ``url`` for ``seconds``."""
    prepare = bench_apps.build("raw", url)  # the table, seeded
    if setup == "sessionext_broadcast":
        from flask_sessionext import SessionExt

        SessionExt.outbox_metadata.create_all(prepare.engine)
    with prepare.engine.connect() as conn:
        before = conn.scalar(sa.select(sa.func.count()).select_from(prepare.table))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=_worker, args=(setup, url, workload, seconds, barrier, results)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join()
    with prepare.engine.connect() as conn:
        after = conn.scalar(sa.select(sa.func.count()).select_from(prepare.table))
    prepare.engine.dispose()
    ok = sum(o[0] for o in outcomes)
    first = [e for o in outcomes for e in o[3]]
    return Figures(
        requests_per_second=ok / seconds,
        locked=sum(o[1] for o in outcomes),
        other_errors=sum(o[2] for o in outcomes),
        rows_ok=(after or 0) - (before or 0) == ok * ROWS[workload],
        first_error=first[0] if first else "",
    )


def _combine(runs: list[Figures]) -> Figures:
    """The median requests per second of ``runs``, and all their errors."""
    errors = [f.first_error for f in runs if f.first_error]
    return Figures(
        requests_per_second=statistics.median(f.requests_per_second for f in runs),
        locked=sum(f.locked for f in runs),
        other_errors=sum(f.other_errors for f in runs),
        rows_ok=all(f.rows_ok for f in runs),
        first_error=errors[0] if errors else "",
    )


def section(
    url_for: t.Callable[[str], str], quick: bool
) -> tuple[str, list[str], dict[str, t.Any]]:
    """The Markdown table, the target lines and the figures, by setup,
    workload and number of processes.
    """
    setups = QUICK_SETUPS if quick else SETUPS
    counts = (2,) if quick else (2, 4)
    seconds, repeats = (0.5, 1) if quick else (2.0, REPEATS)
    cells = [f"{w} x{p}" for w in WORKLOADS for p in counts]
    runs: dict[tuple[str, str], list[Figures]] = {}
    # The setups of one cell one after the other, so the machine's drift
    # hits them alike, and each cell several times over the run.
    for repeat in range(repeats):
        for workload in WORKLOADS:
            for processes in counts:
                for setup in setups:
                    url = url_for(f"{setup}_{workload}_{processes}_{repeat}")
                    runs.setdefault((setup, f"{workload} x{processes}"), []).append(
                        measure(setup, url, workload, processes, seconds)
                    )
    figures = {
        setup: {cell: _combine(runs[setup, cell]) for cell in cells} for setup in setups
    }
    header = " | ".join(f"{c} req/s | {c} locked" for c in cells)
    lines = [f"| setup | {header} |", "|---|" + "---|---|" * len(cells)]
    for setup, by_cell in figures.items():
        row = " | ".join(
            f"{f.requests_per_second:.0f} | {f.locked}"
            + (f" (+{f.other_errors} other)" if f.other_errors else "")
            + ("" if f.rows_ok else " ROWS WRONG")
            for f in by_cell.values()
        )
        lines.append(f"| {setup} | {row} |")
    targets = []
    for setup in ("sessionext", "sessionext_broadcast"):
        errors = sum(f.locked + f.other_errors for f in figures[setup].values())
        rows = all(f.rows_ok for f in figures[setup].values())
        targets.append(
            f"{setup}: {errors} errors, rows exact: {rows};"
            " target: 0 errors: " + ("met" if errors == 0 and rows else "MISSED")
        )
    for cell in cells:
        ours = figures["sessionext"][cell].requests_per_second
        raw = figures["raw"][cell].requests_per_second
        line = (
            f"{cell}: sessionext {ours:.0f} req/s, raw {raw:.0f} req/s"
            f" ({ours / raw if raw else 0:.2f} x), target >= raw: "
            + ("met" if ours >= raw else "MISSED")
        )
        if "raw_wal" in figures:
            wal = figures["raw_wal"][cell].requests_per_second
            line += f"; raw_wal {wal:.0f} req/s ({ours / wal if wal else 0:.2f} x)"
        targets.append(line)
    for setup, by_cell in figures.items():
        for cell, f in by_cell.items():
            if f.first_error:
                targets.append(f"{setup} {cell}: first other error: {f.first_error}")
    data = {
        setup: {cell: f.__dict__ for cell, f in by_cell.items()}
        for setup, by_cell in figures.items()
    }
    return "\n".join(lines), targets, data


def main(quick: bool = False) -> None:
    """Run the section on a temporary directory and print it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        table, targets, _ = section(lambda name: f"sqlite:///{tmp}/{name}.db", quick)
    print(table)
    print("\n".join(targets))


if __name__ == "__main__":
    import sys

    main(quick="--quick" in sys.argv)
