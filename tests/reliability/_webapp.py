"""The app that the reliability tests load, the WSGI server that runs it, and
the HTTP clients that load it.

The server is waitress, in this process (so the tests can look at the app's
pool and scoped registry afterwards), on 127.0.0.1, on a port of its own
choosing. The clients use :mod:`http.client`, one keep-alive connection each.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import threading
import time
import typing as t
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
import waitress  # type: ignore[import-untyped]
from flask import Flask, g
from flask.globals import app_ctx
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from waitress import wasyncore

from flask_sessionext import SessionExt

#: The kinds of request of the load: three succeed, two fail.
READ, WRITE, RAISE, CONFLICT = "read", "write", "raise", "conflict"
#: A read, then a write (as ``write``): the request that SQLite's lock
#: upgrade fails when a plain ``BEGIN`` began its transaction.
READ_WRITE = "readwrite"
#: The token of the row that every ``conflict`` request collides with.
TAKEN = "taken"


class Base(DeclarativeBase):
    """The models of the reliability app."""


class Write(Base):
    """A row that one request wrote: ``rid`` names the request."""

    __tablename__ = "reliability_writes"
    id: Mapped[int] = mapped_column(primary_key=True)
    rid: Mapped[int] = mapped_column(index=True)
    n: Mapped[int]
    token: Mapped[str | None] = mapped_column(sa.String(20), unique=True)


class _Undo(Exception):
    """Rolls back the SAVEPOINT of a write request."""


class Boom(Exception):
    """What the ``raise`` view raises after flushing."""


class QuietFlask(Flask):
    """A Flask app that counts the exceptions it would log, by type, instead
    of logging thousands of tracebacks.
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures: dict[str, int] = {}
        self._failures_lock = threading.Lock()

    def log_exception(self, exc_info: t.Any) -> None:
        """Count the exception of a failed request."""
        name = exc_info[0].__qualname__
        with self._failures_lock:
            self.failures[name] = self.failures.get(name, 0) + 1


#: What a ``models_committed`` receiver saw: the request id, and the
#: ``(rid, n, operation)`` of each changed row.
Committed = tuple[int | None, tuple[tuple[int, int, str], ...]]


class Observer:
    """A ``models_committed`` receiver that records what each request's
    commits reported.
    """

    def __init__(self) -> None:
        self.committed: list[Committed] = []
        self._lock = threading.Lock()

    def models_committed(self, sender: Flask, changes: list[tuple[t.Any, str]]) -> None:
        """Record ``changes`` under the id of the request that committed."""
        rows = tuple(
            sorted(
                (w.rid, w.n, operation)
                for w, operation in changes
                if isinstance(w, Write)
            )
        )
        with self._lock:
            self.committed.append((g.get("rid"), rows))


#: The ``make_app`` fixture: ``make_app(url, **config)`` gives ``(app, db)``.
MakeApp = Callable[..., tuple[QuietFlask, SessionExt]]


def create_app(
    url: str, instance_path: str, *, fresh: bool = True, **config: t.Any
) -> tuple[QuietFlask, SessionExt]:
    """The app under load, on a fresh ``reliability_writes`` table with the
    row that ``conflict`` requests collide with (unless not ``fresh``: on
    the table as it is).
    """
    app = QuietFlask(__name__, instance_path=instance_path)
    app.config.update(
        SESSIONEXT_DATABASE_URI=url,
        SESSIONEXT_ENGINE_OPTIONS={"pool_timeout": 10},
        SESSIONEXT_SESSION_OPTIONS={"expire_on_commit": False},
        **config,
    )
    db = SessionExt(app)
    with app.app_context():
        if fresh:
            Base.metadata.drop_all(db.engine)
            Base.metadata.create_all(db.engine)
            with db.transaction() as session:
                session.add(Write(rid=-1, n=0, token=TAKEN))

    def seen(rid: int, work: Callable[[], object]) -> dict[str, t.Any]:
        """Run ``work`` in the request's session and say which session and
        app context it used, and when.
        """
        g.rid = rid
        session = db.session()
        session.info["rid"] = rid
        started = time.monotonic()
        result = work()
        ended = time.monotonic()
        return {
            "rid": rid,
            "session": id(session),
            "context": id(app_ctx._get_current_object()),  # type: ignore[attr-defined]
            "own": db.session() is session and session.info["rid"] == rid,
            "thread": threading.get_ident(),
            "started": started,
            "ended": ended,
            "result": result,
        }

    @app.get("/read/<int:rid>")
    def read(rid: int) -> dict[str, t.Any]:
        return seen(rid, lambda: db.session.scalar(sa.select(sa.func.count(Write.id))))

    def write_rows(rid: int) -> None:
        with db.transaction() as session:
            session.add_all([Write(rid=rid, n=0), Write(rid=rid, n=1)])
            try:
                with db.transaction():  # a SAVEPOINT, rolled back
                    session.add(Write(rid=rid, n=2))
                    session.flush()
                    raise _Undo
            except _Undo:
                pass

    @app.post("/write/<int:rid>")
    def write(rid: int) -> dict[str, t.Any]:
        return seen(rid, lambda: write_rows(rid))

    @app.post("/readwrite/<int:rid>")
    def read_write(rid: int) -> dict[str, t.Any]:
        def work() -> int | None:
            count = db.session.scalar(sa.select(sa.func.count(Write.id)))
            write_rows(rid)
            return count

        return seen(rid, work)

    @app.post("/raise/<int:rid>")
    def fail_after_flush(rid: int) -> dict[str, t.Any]:
        def work() -> None:
            db.session.add_all([Write(rid=rid, n=0), Write(rid=rid, n=1)])
            db.session.flush()
            raise Boom("the view failed after flushing")

        return seen(rid, work)

    @app.post("/conflict/<int:rid>")
    def fail_at_commit(rid: int) -> dict[str, t.Any]:
        def work() -> None:
            with db.transaction() as session:
                session.add_all([Write(rid=rid, n=0), Write(rid=rid, n=1, token=TAKEN)])

        return seen(rid, work)

    return app, db


@contextmanager
def serve(app: Flask, *, threads: int = 8) -> Iterator[int]:
    """Run ``app`` under waitress with ``threads`` worker threads on
    127.0.0.1; yields the port. On exit, waits for the requests in progress
    (their teardown included), then stops every thread it started.
    """
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            wasyncore.loop(timeout=0.05, map=server._map, count=1)

    thread = threading.Thread(target=loop, name="waitress-loop")
    thread.start()
    try:
        yield int(server.effective_port)
    finally:
        # The workers finish their requests (teardown included) and exit;
        # the loop keeps running meanwhile to send what they write.
        server.task_dispatcher.shutdown(timeout=30)
        stop.set()
        thread.join(timeout=10)
        for channel in list(server._map.values()):
            channel.close()
        assert not thread.is_alive(), "the waitress loop did not stop"
        assert not server.task_dispatcher.threads, "waitress workers did not stop"


@dataclass
class Result:
    """One request as the client saw it."""

    kind: str
    rid: int
    started: float
    ended: float = 0.0
    status: int | None = None
    #: The JSON body of a 200 response.
    body: dict[str, t.Any] = field(default_factory=dict)
    #: The raw body of any other response.
    text: str = ""
    #: A transport error: no HTTP response at all.
    error: str | None = None


Plan = Callable[[], tuple[str, int] | None]


def load(
    port: int,
    plan: Plan,
    *,
    clients: int = 16,
    timeout: float = 15.0,
    deadline: float = 120.0,
) -> list[Result]:
    """Send the requests that ``plan`` gives (``None`` ends a client) from
    ``clients`` threads, each on one keep-alive connection, for at most
    ``deadline`` seconds; returns every request's :class:`Result`.
    """
    results: list[Result] = []
    lock = threading.Lock()
    end = time.monotonic() + deadline

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            while time.monotonic() < end and (request := plan()) is not None:
                result = send(conn, *request)
                if result.error is not None:
                    conn.close()  # reconnects on the next request
                with lock:
                    results.append(result)
        finally:
            conn.close()

    threads = [
        threading.Thread(target=client, name=f"client-{i}") for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(end - time.monotonic(), 0) + timeout + 5)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    return results


def send(conn: http.client.HTTPConnection, kind: str, rid: int) -> Result:
    """Send one request of ``kind`` for request id ``rid``."""
    result = Result(kind, rid, time.monotonic())
    try:
        conn.request("GET" if kind == READ else "POST", f"/{kind}/{rid}")
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as e:
        result.error = f"{type(e).__name__}: {e}"
    else:
        result.status = response.status
        if response.status == 200:
            result.body = json.loads(body)
        else:
            result.text = body.decode(errors="replace")
    result.ended = time.monotonic()
    return result


def fixed_plan(kinds: list[str]) -> Plan:
    """A plan that hands out ``kinds`` once each, with request ids 0, 1, ..."""
    requests = iter(list(enumerate(kinds)))
    lock = threading.Lock()

    def plan() -> tuple[str, int] | None:
        with lock:
            rid, kind = next(requests, (None, ""))
        return None if rid is None else (kind, rid)

    return plan


def endless_plan(kinds: list[str], stop: threading.Event, *, start: int = 0) -> Plan:
    """A plan that cycles through ``kinds`` with new request ids from
    ``start`` until ``stop`` is set.
    """
    counter = itertools.count(start)
    lock = threading.Lock()

    def plan() -> tuple[str, int] | None:
        if stop.is_set():
            return None
        with lock:
            rid = next(counter)
        return kinds[rid % len(kinds)], rid

    return plan


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stored_rows(engine: sa.Engine) -> dict[int, list[int]]:
    """The ``n`` of every written row by request id, read on a connection of
    its own; the seed row is left out.
    """
    rows: dict[int, list[int]] = {}
    with engine.connect() as conn:
        for rid, n in conn.execute(sa.select(Write.rid, Write.n).where(Write.rid >= 0)):
            rows.setdefault(rid, []).append(n)
    return {rid: sorted(ns) for rid, ns in rows.items()}


def check_writes(results: list[Result], engine: sa.Engine, observer: Observer) -> None:
    """Every committed write is stored exactly once, no write of a failed
    request is, and ``models_committed`` was sent exactly once per committed
    request, with exactly that request's rows.
    """
    committed = {
        r.rid for r in results if r.kind in (WRITE, READ_WRITE) and r.status == 200
    }
    failed = {r.rid for r in results if r.kind != READ and r.status != 200}
    rows = stored_rows(engine)
    assert {rid: rows.get(rid) for rid in committed} == {
        rid: [0, 1] for rid in committed
    }
    assert set(rows) == committed, f"rows of failed requests: {set(rows) & failed}"
    reported: dict[int | None, list[tuple[tuple[int, int, str], ...]]] = {}
    for rid, changes in observer.committed:
        reported.setdefault(rid, []).append(changes)
    assert reported == {
        rid: [((rid, 0, "insert"), (rid, 1, "insert"))] for rid in committed
    }
