"""A forked child never uses a pooled connection of its parent, and forks
again without hanging, with a listener of its own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from flask import Flask

from flask_sessionext import CommittedChange, SessionExt
from flask_sessionext._engines.fork_safety import process_lock
from flask_sessionext._features.broadcast import Broadcast
from flask_sessionext._features.outbox_listener import APPLICATION_NAME
from flask_sessionext.signals import models_committed, models_committed_anywhere

from ._broadcast_apps import SETTINGS, Note
from ._webapp import MakeApp, Write
from .test_broadcast_processes import committed, fresh_tables
from helpers import fork

QUERIES = 50
BACKEND_PID = sa.text("SELECT pg_backend_pid()")


def test_forked_child_opens_its_own_connections(
    make_app: MakeApp, postgres_url: str
) -> None:
    """After ``os.fork()`` the child queries on connections of its own while
    the parent goes on with its pooled one, in parallel, without errors.
    """
    app, db = make_app(postgres_url)
    with app.app_context():
        parent_backend = db.session.scalar(BACKEND_PID)

    def child() -> str:
        backends = set()
        with app.app_context():
            for _ in range(QUERIES):
                backends.add(db.session.scalar(BACKEND_PID))
                db.session.commit()
        return ",".join(map(str, backends))

    forked = fork(child)
    with app.app_context():
        for _ in range(QUERIES):
            assert db.session.scalar(BACKEND_PID) == parent_backend
            db.session.commit()
    child_backends = forked.result()
    assert child_backends
    assert str(parent_backend) not in child_backends.split(",")
    with app.app_context():
        assert db.session.scalar(BACKEND_PID) == parent_backend


#: What ``models_committed_anywhere`` sent a process: (sequence, local).
Received = list[tuple[int, bool]]
#: The app, its extension and its receiver's list in a process that starts a
#: ``multiprocessing`` pool: the pool's processes, forked, find them here.
_pooled: tuple[Flask, SessionExt, Received] | None = None


def commit_and_receive(app: Flask, db: SessionExt, received: Received) -> Received:
    """In this process: push an app context (which starts this process's
    listener, if it has none), commit a note once the listener is up to date,
    and wait until its publication arrives; what arrived meanwhile.
    """
    before = len(received)
    with app.app_context():
        listener = app.extensions["sessionext"].feature(Broadcast).listener
        assert listener is not None
        assert listener.pid == os.getpid()
        assert listener.connected.wait(10), "the listener did not start"
        db.session.add(Note(origin=os.getpid()))
        db.session.commit()
    deadline = time.monotonic() + 10
    while not any(local for _, local in received[before:]):
        assert time.monotonic() < deadline, f"received {received[before:]}"
        time.sleep(0.01)
    return received[before:]


def _pool_task(_: int) -> Received:
    """A task of the pool: :func:`commit_and_receive` in its process."""
    assert _pooled is not None
    return commit_and_receive(*_pooled)


def test_forks_of_forks_with_broadcast_receivers(
    make_app: MakeApp, postgres_url: str
) -> None:
    """A child forked from a process with a ``models_committed_anywhere``
    receiver forks again, with ``os.fork()`` and with a ``fork`` pool of
    ``multiprocessing``, without hanging; every process starts a listener of
    its own and receives its own publication, and the first process receives
    each publication exactly once, in order.
    """
    fresh_tables(postgres_url)
    # Only the notes: the app publishes no row of its own set-up.
    broadcast = {**SETTINGS, "models": [Note]}
    app, db = make_app(postgres_url, SESSIONEXT_BROADCAST=broadcast)
    received: Received = []

    def receiver(
        sender: Flask, changes: list[CommittedChange], local: bool, sequence: int
    ) -> None:
        received.append((sequence, local))

    def child() -> str:
        global _pooled
        own = commit_and_receive(app, db, received)
        grandchild = fork(lambda: json.dumps(commit_and_receive(app, db, received)))
        forked: Received = json.loads(grandchild.result(timeout=30))
        _pooled = (app, db, received)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # see fork()
            pool = multiprocessing.get_context("fork").Pool(2)
        with pool:
            pooled = pool.map_async(_pool_task, range(2)).get(timeout=30)
        return json.dumps([own, forked, *pooled])

    with models_committed_anywhere.connected_to(receiver, app):
        listener = app.extensions["sessionext"].feature(Broadcast).listener
        assert listener is not None
        assert listener.connected.wait(10)
        reports = [
            [(sequence, local) for sequence, local in report]
            for report in json.loads(fork(child).result(timeout=90))
        ]
        reports.append(commit_and_receive(app, db, received))
    ids, notes = committed(postgres_url)
    assert len(ids) == len(notes) == 5
    assert received == [(i, i == ids[-1]) for i in ids]
    local = []
    for report in reports:
        sequences = [sequence for sequence, _ in report]
        assert sequences == sorted(set(sequences)), f"not once, in order: {report}"
        local += [sequence for sequence, is_local in report if is_local]
    assert sorted(local) == ids, "each publication is local to one process"


def test_fork_while_a_thread_refreshes(make_app: MakeApp, postgres_url: str) -> None:
    """A child forked while a thread of its parent holds the app's refresh
    lock (as it does while a receiver connects) connects and disconnects
    receivers without waiting for that thread, which the child does not have.
    """
    app, db = make_app(postgres_url)
    runtime = app.extensions["sessionext"]
    inside, release = threading.Event(), threading.Event()

    def refreshing() -> None:
        with process_lock(runtime._locks):
            inside.set()
            release.wait(30)

    def receiver(sender: Flask, **kwargs: object) -> None:
        pass

    def child() -> str:
        with models_committed.connected_to(receiver, app), app.app_context():
            db.session.add(Write(rid=1, n=1, token="child"))
            db.session.commit()
        return "ok"

    thread = threading.Thread(target=refreshing)
    thread.start()
    try:
        assert inside.wait(10)
        forked = fork(child)
    finally:
        release.set()
        thread.join(10)
    assert forked.result(timeout=30) == "ok"


def test_first_contexts_of_a_child_start_one_listener(
    make_app: MakeApp, postgres_url: str
) -> None:
    """In a child forked from a process with a ``models_committed_anywhere``
    receiver, 8 threads pushing their first app contexts at once start one
    listener, and one thread, of the child's own.
    """
    fresh_tables(postgres_url)
    app, _ = make_app(postgres_url, SESSIONEXT_BROADCAST={**SETTINGS, "models": [Note]})

    def receiver(sender: Flask, **kwargs: object) -> None:
        pass

    def child() -> str:
        barrier = threading.Barrier(8)

        def first_context(_: int) -> object:
            barrier.wait(10)
            with app.app_context():
                return app.extensions["sessionext"].feature(Broadcast).listener

        with ThreadPoolExecutor(8) as pool:
            found = set(map(id, pool.map(first_context, range(8))))
        threads = [
            thread.name
            for thread in threading.enumerate()
            if thread.name.startswith(APPLICATION_NAME)
        ]
        return json.dumps([len(found), threads])

    with models_committed_anywhere.connected_to(receiver, app):
        parent = app.extensions["sessionext"].feature(Broadcast).listener
        assert parent is not None
        assert parent.connected.wait(10)
        listeners, threads = json.loads(fork(child).result(timeout=30))
    assert listeners == 1
    assert len(threads) == 1, threads
