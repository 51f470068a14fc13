"""``models_committed_anywhere`` across real processes on PostgreSQL: every
publication reaches every listening process exactly once, in commit order,
through a killed listener connection and a server restart; forked children
and the workers of a pre-fork server each listen on a connection of their own
and never touch their parent's.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import subprocess
import sys
import time
import typing as t
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_sessionext import CommittedChange, SessionExt
from flask_sessionext._features.broadcast import Broadcast
from flask_sessionext._features.outbox import outbox_table
from flask_sessionext._features.outbox_listener import APPLICATION_NAME, WAIT
from flask_sessionext.signals import models_committed_anywhere

from ._broadcast_apps import DATABASE_ENV, SETTINGS, Base, Note
from ._webapp import free_port
from .test_prefork_servers import TESTS_DIR, log_tail, running, wait_for_http
from _postgres import PostgresServer
from helpers import fork, run_python

#: Lists the listener connections: (client process id, server process id).
LISTENERS = sa.text(
    "SELECT application_name, pid FROM pg_stat_activity"
    " WHERE application_name LIKE :prefix AND datname = current_database()"
).bindparams(prefix=f"{APPLICATION_NAME}-%")

Received = list[tuple[int, bool, list[int]]]


def fresh_tables(url: str) -> None:
    """Empty notes and outbox tables in the database of ``url``."""
    engine = sa.create_engine(url)
    try:
        for metadata in (Base.metadata, SessionExt.outbox_metadata):
            metadata.drop_all(engine)
            metadata.create_all(engine)
    finally:
        engine.dispose()


def committed(url: str) -> tuple[list[int], list[int]]:
    """The ids of the outbox rows and of the notes, in order."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            ids = list(conn.scalars(sa.select(outbox_table.c.id).order_by("id")))
            notes = list(conn.scalars(sa.select(Note.id).order_by(Note.id)))
    finally:
        engine.dispose()
    return ids, notes


def listeners(url: str) -> dict[int, int]:
    """The listener connections of ``url``'s server: client pid -> server pid."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(LISTENERS).all()
    finally:
        engine.dispose()
    found: dict[int, int] = {}
    for name, backend in rows:
        client = int(name.rsplit("-", 1)[1])
        assert client not in found, f"process {client} has two listener connections"
        found[client] = backend
    return found


@contextmanager
def two_publishers(
    tmp_path: Path, url: str, *, timeout: float
) -> Iterator[list[dict[str, t.Any]]]:
    """Two processes of ``_broadcast_apps`` publishing into ``url`` (and
    receiving) for the block; after it, the yielded list holds the result
    each wrote once told to stop, waited for up to ``timeout`` seconds.
    """
    env = {DATABASE_ENV: url}
    args = ["reliability._broadcast_apps", str(tmp_path)]
    results: list[dict[str, t.Any]] = []
    with (
        running(args, env, tmp_path / "a.log"),
        running(args, env, tmp_path / "b.log"),
    ):
        wait_for_files(tmp_path, "ready-*", 2, timeout=20)
        (tmp_path / "go").touch()
        yield results
        (tmp_path / "stop").touch()
        results += [
            json.loads(path.read_text())
            for path in wait_for_files(tmp_path, "result-*.json", 2, timeout=timeout)
        ]


def _listening(url: str) -> bool:
    """Whether this process has a listener connection on ``url``'s database."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(LISTENERS).all()
    finally:
        engine.dispose()
    return any(int(name.rsplit("-", 1)[1]) == os.getpid() for name, _ in rows)


def wait_for_files(
    directory: Path, pattern: str, count: int, timeout: float
) -> list[Path]:
    """Wait until ``count`` files match ``pattern`` in ``directory``."""
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(directory.glob(pattern))
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"only {found} after {timeout} s"
        time.sleep(0.05)


def check_received(every: list[Received], ids: list[int], notes: list[int]) -> None:
    """Each of ``every`` (what each process received) is every publication
    exactly once, each process's in the same order, and together they name
    every note once.
    """
    orders = [[sequence for sequence, _, _ in received] for received in every]
    for order, received in zip(orders, every, strict=True):
        assert sorted(order) == ids
        assert sorted(pk for _, _, pks in received for pk in pks) == notes
    assert all(order == orders[0] for order in orders)


def test_terminate_and_restart_while_publishing(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """Two processes publish continuously while their listener connections
    are killed with ``pg_terminate_backend`` and then the server restarts:
    afterwards each has received every publication exactly once, in order.
    """
    url = own_postgres.url()
    fresh_tables(url)
    with two_publishers(tmp_path, url, timeout=30) as results:
        time.sleep(0.5)
        with own_postgres.superuser_connection() as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE %s",
                (f"{APPLICATION_NAME}-%",),
            ).fetchall()
        assert len(killed) == 2
        time.sleep(0.5)
        own_postgres.stop()
        time.sleep(0.3)
        own_postgres.start()
        time.sleep(1.0)
    ids, notes = committed(url)
    assert len(ids) > 20, log_tail(tmp_path / "a.log")
    for name in ("a.log", "b.log"):
        # Once killed, and at least once for the restart.
        lost = (tmp_path / name).read_text().count("lost its connection")
        assert lost >= 2, log_tail(tmp_path / name)
    locals_: list[int] = []
    check_received(
        [[tuple(r) for r in result["received"]] for result in results], ids, notes
    )
    for result in results:
        received: Received = [tuple(r) for r in result["received"]]
        locals_ += [sequence for sequence, local, _ in received if local]
        print(
            f"process {result['pid']}: published {result['published']}"
            f" (+{result['failed']} failed), received {len(received)}"
            f" of {len(ids)} publications"
        )
    assert sorted(locals_) == ids, "each publication is local to one process"


def test_forked_child_listens_on_its_own_connection(
    postgres_url: str,
) -> None:
    """A child forked from a listening process starts a listener of its own,
    on its own connection, and receives; the parent's listener connection is
    never touched and keeps receiving, the child's publications too.
    """
    fresh_tables(postgres_url)
    # Listeners of apps that earlier tests of this process dropped stop once
    # the apps are collected, and their connections close shortly after.
    gc.collect()
    deadline = time.monotonic() + 10
    while _listening(postgres_url):
        assert time.monotonic() < deadline, "an earlier test's listener is left"
        time.sleep(0.05)
    app = Flask(__name__)
    app.config.update(
        SESSIONEXT_DATABASE_URI=postgres_url, SESSIONEXT_BROADCAST=SETTINGS
    )
    db = SessionExt(app)
    received: list[tuple[int, bool]] = []

    def receiver(
        sender: Flask, changes: list[CommittedChange], local: bool, sequence: int
    ) -> None:
        received.append((sequence, local))

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 10
        while len(received) < count:
            assert time.monotonic() < deadline, f"received {received}"
            time.sleep(0.01)

    def commit() -> None:
        with app.app_context():
            db.session.add(Note(origin=os.getpid()))
            db.session.commit()

    try:
        with models_committed_anywhere.connected_to(receiver, app):
            broadcast = app.extensions["sessionext"].feature(Broadcast)
            listener = broadcast.listener
            assert listener is not None
            assert listener.connected.wait(10)
            parent_backend = listeners(postgres_url)[os.getpid()]

            def child() -> str:
                before = len(received)
                with app.app_context():  # starts the child's listener
                    pass
                own = broadcast.listener
                assert own is not None
                assert own.connected.wait(10)
                commit()
                wait_for(before + 1)
                mine = listeners(postgres_url)[os.getpid()]
                return json.dumps([mine, received[before:]])

            forked = fork(child)
            child_backend, child_received = json.loads(forked.result())
            commit()
            wait_for(2)
            # The parent's connection survived the child's exit.
            assert listeners(postgres_url).get(os.getpid()) == parent_backend
            assert listener.connected.is_set()
    finally:
        for engine in app.extensions["sessionext"].engines.values():
            engine.dispose()
    assert child_backend != parent_backend
    ids, _ = committed(postgres_url)
    assert [tuple(r) for r in child_received] == [(ids[0], True)]
    assert received == [(ids[0], False), (ids[1], True)]


def get(port: int, path: str) -> dict[str, t.Any]:
    """GET ``path``, as JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET" if path == "/received" else "POST", path)
        response = conn.getresponse()
        assert response.status == 200, response.read()[:300]
        body: dict[str, t.Any] = json.loads(response.read())
        return body
    finally:
        conn.close()


@t.overload
def each_worker(
    port: int, workers: int, *, listening: t.Literal[False] = False
) -> dict[int, Received]: ...
@t.overload
def each_worker(
    port: int, workers: int, *, listening: t.Literal[True]
) -> dict[int, bool]: ...
def each_worker(
    port: int, workers: int, *, listening: bool = False
) -> dict[int, Received] | dict[int, bool]:
    """What ``/received`` says in each of ``workers`` worker processes, asked
    concurrently until every worker has answered: what it received, or with
    ``listening`` whether its listener is up to date.
    """
    received: dict[int, Received] = {}
    ready: dict[int, bool] = {}
    deadline = time.monotonic() + 20
    with ThreadPoolExecutor(8) as pool:
        while len(received) < workers:
            assert time.monotonic() < deadline, f"only workers {set(received)} answered"
            for body in pool.map(lambda _: get(port, "/received"), range(8)):
                received[body["pid"]] = [tuple(r) for r in body["received"]]
                ready[body["pid"]] = body["listening"]
    return ready if listening else received


def caught_up(port: int, ids: list[int], log: Path) -> dict[int, Received]:
    """What each of the 2 workers behind ``port`` received, once every one
    has received the last of ``ids``; fails after 15 s, with the log's tail.
    """
    deadline = time.monotonic() + 15
    while True:
        answers = each_worker(port, 2)
        if all({s for s, _, _ in r} >= set(ids) for r in answers.values()):
            return answers
        assert time.monotonic() < deadline, (
            f"the workers did not catch up with {ids[-1]}:"
            f" { {pid: r[-3:] for pid, r in answers.items()} }\n{log_tail(log)}"
        )
        time.sleep(0.1)


def test_gunicorn_workers_and_another_machine(
    postgres_url: str, tmp_path: Path
) -> None:
    """Under gunicorn ``--preload`` with 2 workers (the app created before the
    fork) plus a separate process for another machine, each process listens
    on a connection of its own, the master's is never closed by a worker, and
    every process receives every publication exactly once, in order.
    """
    fresh_tables(postgres_url)
    port = free_port()
    env = {DATABASE_ENV: postgres_url}
    log = tmp_path / "gunicorn.log"
    args = ["gunicorn", "--preload", "--workers", "2", "--worker-class", "sync"]
    args += ["--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5"]
    args += ["reliability._broadcast_apps:create_app()"]
    node_args = ["reliability._broadcast_apps", str(tmp_path)]
    with (
        running(args, env, log) as master,
        running(node_args, env, tmp_path / "node.log") as node,
    ):
        wait_for_http(master, port, log)
        wait_for_files(tmp_path, "ready-*", 1, timeout=20)
        # A first request starts each worker's listener.
        workers = set(each_worker(port, 2))
        deadline = time.monotonic() + 15
        while not workers | {node.pid} <= set(listeners(postgres_url)):
            assert time.monotonic() < deadline, listeners(postgres_url)
            time.sleep(0.05)
        before = listeners(postgres_url)
        assert master.pid not in workers
        backends = [before[pid] for pid in (*workers, node.pid)]
        assert len(set(backends)) == 3, before
        deadline = time.monotonic() + 15
        while not all(each_worker(port, 2, listening=True)):
            assert time.monotonic() < deadline, "a worker's listener is not ready"
        (tmp_path / "go").touch()
        with ThreadPoolExecutor(8) as pool:
            commits = list(pool.map(lambda _: get(port, "/commit"), range(40)))
        assert all(body["ok"] for body in commits)
        assert {body["pid"] for body in commits} == workers
        (tmp_path / "stop").touch()
        result = json.loads(
            wait_for_files(tmp_path, "result-*.json", 1, timeout=20)[0].read_text()
        )
        ids, notes = committed(postgres_url)
        answers = caught_up(port, ids, log)
        after = listeners(postgres_url)
    assert set(answers) == workers
    check_received(
        [*answers.values(), [tuple(r) for r in result["received"]]], ids, notes
    )
    # The master's listener, if it started one, was never closed by a child.
    if master.pid in before:
        assert after.get(master.pid) == before[master.pid]
    assert all(after[pid] == before[pid] for pid in workers)
    local = sum(1 for received in answers.values() for r in received if r[1])
    assert local == len(commits)
    print(
        f"{len(ids)} publications ({len(commits)} from 2 gunicorn workers,"
        f" {result['published']} from another process), each received once by"
        f" all 3 processes"
    )


def test_preload_worker_receives_before_its_first_request(
    postgres_url: str, tmp_path: Path
) -> None:
    """A gunicorn ``--preload`` worker receives a change committed after it
    was forked and before its first request: its listener goes on from the
    fork, not from that request.
    """
    fresh_tables(postgres_url)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    args = ["gunicorn", "--preload", "--workers", "1", "--worker-class", "sync"]
    args += ["--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5"]
    args += ["reliability._broadcast_apps:create_app()"]
    app = Flask(__name__)
    app.config.update(
        SESSIONEXT_DATABASE_URI=postgres_url, SESSIONEXT_BROADCAST=SETTINGS
    )
    db = SessionExt(app)
    with running(args, {DATABASE_ENV: postgres_url}, log):
        deadline = time.monotonic() + 20
        while "Booting worker" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log_tail(log)
            time.sleep(0.05)
        time.sleep(0.5)  # the worker is forked; it has served no request
        with app.app_context():
            note = Note(origin=os.getpid())
            db.session.add(note)
            db.session.commit()
            note_id = note.id
        deadline = time.monotonic() + 15
        while True:
            body = get(port, "/received")
            if any(note_id in pks for _, _, pks in body["received"]):
                break
            assert time.monotonic() < deadline, (body, log_tail(log))
            time.sleep(0.1)
    for engine in app.extensions["sessionext"].engines.values():
        engine.dispose()


@pytest.mark.parametrize(
    "app_spec",
    [
        "reliability._broadcast_apps:create_app()",
        "reliability._gevent_patched_app:create_app()",
    ],
    ids=["patched-by-the-worker", "patched-before-the-app"],
)
def test_gunicorn_gevent_workers(
    postgres_url: str, tmp_path: Path, app_spec: str
) -> None:
    """Under gunicorn ``-k gevent --preload`` with 2 workers, whether gevent
    patches in the worker (after the master loaded the app) or before the app
    loads, every request is answered and each worker receives every
    publication exactly once, in order, on a listener connection of its own.
    """
    fresh_tables(postgres_url)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    args = ["gunicorn", "--preload", "--workers", "2", "--worker-class", "gevent"]
    args += ["--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5"]
    args += ["--timeout", "20", app_spec]
    with running(args, {DATABASE_ENV: postgres_url}, log) as master:
        wait_for_http(master, port, log)
        workers = set(each_worker(port, 2))
        assert master.pid not in workers
        deadline = time.monotonic() + 15
        while not all(each_worker(port, 2, listening=True).values()):
            assert time.monotonic() < deadline, f"not listening:\n{log_tail(log)}"
        with ThreadPoolExecutor(8) as pool:
            commits = list(pool.map(lambda _: get(port, "/commit"), range(40)))
        assert all(body["ok"] for body in commits)
        ids, notes = committed(postgres_url)
        answers = caught_up(port, ids, log)
        backends = listeners(postgres_url)
    assert len(ids) == len(commits) == 40
    assert set(answers) == workers
    check_received(list(answers.values()), ids, notes)
    assert len({backends[pid] for pid in workers}) == 2, backends
    local = sum(1 for received in answers.values() for r in received if r[1])
    assert local == len(commits)


def test_gevent_fork_stops_the_parents_listener_greenlet(postgres_url: str) -> None:
    """In a process patched by gevent, a child forked while the listener
    greenlet waits on its connection never runs that greenlet again, starts
    its own listener, and receives its own publication exactly once.
    """
    fresh_tables(postgres_url)
    code = f"""
from gevent import monkey
monkey.patch_all()
import json, os, sys, time
import gevent
sys.path.insert(0, {TESTS_DIR!r})
from flask import Flask
from flask_sessionext import SessionExt
from flask_sessionext._features.broadcast import Broadcast
from flask_sessionext.signals import models_committed_anywhere
from reliability._broadcast_apps import SETTINGS, Note
app = Flask("gevent_fork")
app.config.update(SESSIONEXT_BROADCAST=SETTINGS)
app.config.update(SESSIONEXT_DATABASE_URI={postgres_url!r})
db = SessionExt(app)
received = []
def receiver(sender, changes, local, sequence):
    received.append((sequence, local))
models_committed_anywhere.connect(receiver, app)
parent = app.extensions["sessionext"].feature(Broadcast).listener
assert parent.connected.wait(10)
gevent.sleep(0.1)  # the listener greenlet now waits on its connection
stale = parent._run_state.greenlet
pid = os.fork()
if pid == 0:
    with app.app_context():
        db.session.add(Note(origin=os.getpid()))
        db.session.commit()
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        gevent.sleep(0.01)
    gevent.sleep(WAIT + 0.5)  # a stale greenlet would have woken by now
    own = app.extensions["sessionext"].feature(Broadcast).listener
    print(json.dumps(dict(received=received, stale_dead=stale.dead,
                          own_is_new=own is not parent, delivered=own.delivered)))
    sys.stdout.flush()
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert parent.connected.is_set() and not stale.dead
""".replace("WAIT", str(WAIT))
    report = json.loads(run_python(code, timeout=60).strip().splitlines()[-1])
    ids, _ = committed(postgres_url)
    assert report == {
        "received": [[ids[0], True]],
        "stale_dead": True,
        "own_is_new": True,
        "delivered": 1,
    }


def test_sqlite_processes_on_one_machine(tmp_path: Path) -> None:
    """On SQLite, two processes publishing into one database file each
    receive every publication exactly once, in order, by polling.
    """
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    fresh_tables(url)
    with two_publishers(tmp_path, url, timeout=20) as results:
        time.sleep(1.0)
    ids, notes = committed(url)
    assert len(ids) > 10, log_tail(tmp_path / "a.log")
    check_received(
        [[tuple(r) for r in result["received"]] for result in results], ids, notes
    )
    for result in results:
        print(
            f"SQLite process {result['pid']}: published {result['published']}"
            f" (+{result['failed']} locked out), received"
            f" {len(result['received'])} of {len(ids)}"
        )


def test_listener_stops_at_interpreter_exit(postgres_url: str) -> None:
    """A process whose listener runs exits promptly and cleanly: the listener
    stops and closes its connection at interpreter exit, and no log line,
    at DEBUG, holds the password.
    """
    fresh_tables(postgres_url)
    code = f"""
import logging, sys
sys.path.insert(0, {TESTS_DIR!r})
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
from reliability._broadcast_apps import make_app, wait_until_listening
wait_until_listening(make_app({postgres_url!r}))
"""
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "flask_sessionext" in line]
    assert any(line.endswith("stopped.") for line in lines), result.stderr
    assert "Warning" not in result.stderr
    password = sa.make_url(postgres_url).password
    assert password
    assert password not in result.stderr
    assert elapsed < 10
