"""Several processes, each a multi-threaded server, on one SQLite file with
the default settings: requests that read, then write (and roll back a
SAVEPOINT) never fail with "database is locked", and every committed write
is stored exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
from pathlib import Path

import pytest

from flask_sessionext import signals

from ._webapp import (
    READ_WRITE,
    Observer,
    Result,
    check_writes,
    create_app,
    endless_plan,
    load,
    serve,
)
from helpers import fork

#: Seconds of load in each process.
SECONDS = 2.0
THREADS = 4
#: Request ids of one process start at its index times this.
RIDS = 1_000_000


def _process(url: str, instance: str, index: int, broadcast: bool) -> str:
    """One server process of 4 threads and 4 clients, sending read-then-write
    requests for :data:`SECONDS`; its results, as JSON.
    """
    config = {"SESSIONEXT_BROADCAST": {"channel": "sqlite"}} if broadcast else {}
    app, _ = create_app(url, instance, fresh=False, **config)
    observer = Observer()
    received: list[object] = []

    def receive(sender: object, **kwargs: object) -> None:
        received.append(kwargs)

    stop = threading.Event()
    timer = threading.Timer(SECONDS, stop.set)
    with (
        signals.models_committed.connected_to(observer.models_committed, sender=app),
        signals.models_committed_anywhere.connected_to(receive, sender=app),
        serve(app, threads=THREADS) as port,
    ):
        timer.start()
        results = load(
            port,
            endless_plan([READ_WRITE], stop, start=index * RIDS),
            clients=THREADS,
        )
    for engine in app.extensions["sessionext"].engines.values():
        engine.dispose()
    return json.dumps(
        {
            "results": [dataclasses.asdict(r) for r in results],
            "committed": observer.committed,
            "failures": app.failures,
        }
    )


@pytest.mark.parametrize("broadcast", [False, True], ids=["plain", "broadcast"])
@pytest.mark.parametrize("processes", [2, 4])
def test_processes_read_then_write_without_lock_errors(
    tmp_path: Path, processes: int, broadcast: bool
) -> None:
    """2 and 4 processes of 4 threads each, all reading then writing one
    SQLite file for two seconds, with and without the broadcast: no request
    fails, every committed write is stored once with its SAVEPOINT's work
    rolled back, and models_committed reported each commit once.
    """
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    instance = str(tmp_path / "instance")
    app, db = create_app(url, instance)
    with app.app_context():
        db.outbox_metadata.create_all(db.engine)

    children = [
        fork(functools.partial(_process, url, instance, i, broadcast))
        for i in range(processes)
    ]
    outputs = [json.loads(child.result()) for child in children]

    results = [Result(**r) for out in outputs for r in out["results"]]
    observer = Observer()
    observer.committed = [
        (rid, tuple((r, n, operation) for r, n, operation in rows))
        for out in outputs
        for rid, rows in out["committed"]
    ]
    assert [out["failures"] for out in outputs] == [{}] * processes
    assert [r for r in results if r.status != 200 or r.error] == []
    assert len(results) > processes * THREADS
    with app.app_context():
        check_writes(results, db.engine, observer)
        db.engine.dispose()
