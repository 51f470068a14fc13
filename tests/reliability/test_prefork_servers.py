"""Under real pre-fork servers (gunicorn ``--preload``, Celery's prefork
pool), workers never use the connections their parent opened before forking.

Each server runs as a subprocess on the suite's PostgreSQL server; the app
connects in the parent at load time (see :mod:`._prefork_apps`).
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from ._prefork_apps import (
    CELERY_DIR_ENV,
    DATABASE_ENV,
    PARENT_CONNECTIONS,
    TASK_NAME,
    ParentBackend,
    Work,
    create_celery,
)
from ._webapp import Result, free_port, send

TESTS_DIR = str(Path(__file__).resolve().parent.parent)
WORKERS = 4
REQUESTS = 2000
TASKS = 250
#: What a request or task reports: its id, worker process and server process.
Report = dict[str, int]


@contextmanager
def running(
    args: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m args`` with ``env`` added, output to ``log``; yields
    the process, and stops it (SIGTERM, then SIGKILL) on exit.
    """
    python_path = os.pathsep.join(
        [TESTS_DIR, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    full_env = {**os.environ, **env, "PYTHONPATH": python_path}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=log.parent,
        )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def log_tail(log: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of ``log``."""
    text = log.read_text(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def wait_for_http(
    proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 30.0
) -> None:
    """Wait until the server ``proc`` answers ``/health`` on ``port``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log_tail(log)}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()
    pytest.fail(f"the server did not answer within {timeout} s:\n{log_tail(log)}")


def fire(port: int, requests: int, clients: int = 16) -> list[Result]:
    """Send ``requests`` work requests from ``clients`` threads, each on a
    connection of its own, so that every worker gets some.
    """

    def one(rid: int) -> Result:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            return send(conn, "work", rid)
        finally:
            conn.close()

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(requests)))


def parent_connections(url: str) -> tuple[set[int], set[int]]:
    """The server processes of the connections that the parent left in its
    pool, and those of them still connected.
    """
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            parent = set(conn.scalars(sa.select(ParentBackend.backend)))
            alive = set(
                conn.scalars(
                    sa.text("SELECT pid FROM pg_stat_activity WHERE pid = ANY(:pids)"),
                    {"pids": list(parent)},
                )
            )
    finally:
        engine.dispose()
    return parent, alive


def check_reports(
    url: str,
    reports: list[Report],
    expected: int,
    parent: int,
    parent_backends: set[int],
) -> None:
    """Every request or task wrote its row exactly once, as it reported, from
    several worker processes (none of them ``parent``), each on server
    processes of its own, none of them one of ``parent_backends``.
    """
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(Work.rid, Work.pid, Work.backend)).all()
    finally:
        engine.dispose()
    assert sorted(r.rid for r in rows) == list(range(expected))
    assert sorted((r.rid, r.pid, r.backend) for r in rows) == sorted(
        (r["rid"], r["pid"], r["backend"]) for r in reports
    )
    workers_of: dict[int, set[int]] = {}
    for row in rows:
        workers_of.setdefault(row.backend, set()).add(row.pid)
    shared = {b: pids for b, pids in workers_of.items() if len(pids) > 1}
    assert not shared, f"server processes used by several workers: {shared}"
    on_parent = [row for row in rows if row.backend in parent_backends]
    assert not on_parent, f"{len(on_parent)} of {expected} on the parent's connections"
    workers = {row.pid for row in rows}
    assert parent not in workers
    assert len(workers) >= 2, f"only {workers} did the work"


@pytest.mark.parametrize(
    "worker_args",
    [["--worker-class", "sync"], ["--worker-class", "gthread", "--threads", "4"]],
    ids=["sync", "gthread"],
)
def test_gunicorn_preload(
    postgres_url: str, tmp_path: Path, worker_args: list[str]
) -> None:
    """Under gunicorn ``--preload`` with several workers, every request of a
    load succeeds and commits once, on connections of its worker's own.
    """
    port = free_port()
    log = tmp_path / "gunicorn.log"
    args = ["gunicorn", "--preload", "--workers", str(WORKERS), *worker_args]
    args += ["--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5"]
    args += ["reliability._prefork_apps:create_app()"]
    with running(args, {DATABASE_ENV: postgres_url}, log) as master:
        wait_for_http(master, port, log)
        results = fire(port, REQUESTS)
        parent_backends, alive = parent_connections(postgres_url)
    failed = [r for r in results if r.status != 200]
    assert not failed, (
        f"{len(failed)} of {len(results)} requests failed, e.g. "
        f"{failed[0].error or failed[0].text[:200]!r}:\n{log_tail(log)}"
    )
    assert len(results) == REQUESTS
    assert len(parent_backends) == PARENT_CONNECTIONS
    assert alive == parent_backends, "the workers closed the parent's connections"
    reports = [r.body for r in results]
    check_reports(postgres_url, reports, REQUESTS, master.pid, parent_backends)


def test_celery_prefork(postgres_url: str, tmp_path: Path) -> None:
    """Under a Celery worker with the prefork pool, every task using
    ``db.session`` in an app context succeeds and commits once, on
    connections of its pool process's own.
    """
    folder = str(tmp_path / "celery")
    log = tmp_path / "celery.log"
    args = ["celery", "-A", "reliability._celery_worker:celery", "worker"]
    args += ["-P", "prefork", "-c", str(WORKERS), "--loglevel", "INFO"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    args += ["-n", f"prefork-{os.getpid()}@127.0.0.1"]
    env = {DATABASE_ENV: postgres_url, CELERY_DIR_ENV: folder}
    client = create_celery(folder)
    try:
        with running(args, env, log) as worker:
            sent = [client.send_task(TASK_NAME, args=[rid]) for rid in range(TASKS)]
            end = time.monotonic() + 60
            for result in sent:
                result.get(
                    timeout=max(end - time.monotonic(), 0.1),
                    interval=0.02,
                    propagate=False,
                )
            parent_backends, alive = parent_connections(postgres_url)
        failed = [r for r in sent if not r.successful()]
        errors = sorted({str(r.result)[:300] for r in failed})
        assert not failed, f"{len(failed)} of {TASKS} tasks failed: {errors}"
        reports = [r.result for r in sent]
    finally:
        client.close()
    assert len(parent_backends) == PARENT_CONNECTIONS
    assert alive == parent_backends, "the workers closed the parent's connections"
    check_reports(postgres_url, reports, TASKS, worker.pid, parent_backends)
