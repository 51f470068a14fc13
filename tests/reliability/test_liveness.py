"""Dead pooled PostgreSQL connections are replaced at checkout without a ping
per checkout: after a restart or ``pg_terminate_backend`` no request fails,
and only a connection idle past ``SESSIONEXT_PING_AFTER_IDLE`` is pinged.
"""

from __future__ import annotations

import threading
import time
import typing as t

from sqlalchemy.pool import QueuePool

from ._webapp import READ, WRITE, MakeApp, Result, endless_plan, fixed_plan, load, serve
from _postgres import APP_ROLE, PostgresServer
from helpers import checked_out, open_sessions

#: How long the load goes on before the restart, and once the server is back.
BEFORE = 0.5
AFTER = 2.0


def wait_for(condition: t.Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def failed(results: list[Result]) -> list[tuple[str, int | None, str]]:
    """The requests of ``results`` that did not answer 200."""
    return [
        (r.kind, r.status, r.error or r.text[:200]) for r in results if r.status != 200
    ]


def test_no_failure_after_restart_under_load(
    make_app: MakeApp, own_postgres: PostgresServer
) -> None:
    """Requests from a few threads pause while the server restarts, and go on
    once it is back: none of them fails, though every pooled connection, used
    a moment before, was closed by the restart.

    (A request that runs while the server is down fails, and its disconnection
    makes SQLAlchemy replace the whole pool; so the pooled connections are
    only stale afterwards when no request ran during the restart, as here.)
    """
    app, db = make_app(own_postgres.url())
    with app.app_context():
        engine = db.engine
    assert engine.pool._pre_ping is False
    stop = threading.Event()
    running = threading.Event()
    running.set()
    results: list[Result] = []
    marks: dict[str, float] = {}
    requests = endless_plan([READ, WRITE], stop)

    def plan() -> tuple[str, int] | None:
        running.wait()
        return requests()

    def run() -> None:
        results.extend(load(port, plan, clients=4))

    with serve(app, threads=4) as port:
        clients = threading.Thread(target=run, name="load")
        clients.start()
        try:
            time.sleep(BEFORE)
            running.clear()
            # A request handed out just before may not have checked out its
            # connection yet: let it start, then wait for it to end.
            time.sleep(0.3)
            wait_for(lambda: checked_out(engine) == 0)
            pooled = t.cast(QueuePool, engine.pool).checkedin()
            own_postgres.stop()
            own_postgres.start()
            marks["up"] = time.monotonic()
            running.set()
            time.sleep(AFTER)
        finally:
            if not own_postgres.running:
                own_postgres.start()
            stop.set()
            running.set()
            clients.join(timeout=60)
    assert not clients.is_alive()

    before = [r for r in results if r.ended < marks["up"]]
    after = [r for r in results if r.started > marks["up"]]
    assert pooled >= 2
    assert len(before) > 10
    assert len(after) > 50
    assert failed(before + after) == []
    assert checked_out(engine) == 0
    assert open_sessions(app, db) == 0


def test_no_failure_after_backends_terminated(
    make_app: MakeApp, own_postgres: PostgresServer
) -> None:
    """With the app idle, ``pg_terminate_backend`` of every pooled connection's
    backend fails no request that follows.
    """
    app, db = make_app(own_postgres.url())
    with app.app_context():
        engine = db.engine
    with serve(app, threads=4) as port:
        warm = load(port, fixed_plan([READ, WRITE] * 40), clients=4)
        assert failed(warm) == []
        pooled = t.cast(QueuePool, engine.pool).checkedin()
        assert pooled >= 2
        with own_postgres.superuser_connection() as su:
            killed = su.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE usename = %s",
                (APP_ROLE,),
            ).fetchall()
        assert len(killed) == pooled
        time.sleep(0.2)  # the backends are gone, their sockets closed
        again = load(port, fixed_plan([READ, WRITE] * 40), clients=4)
    assert failed(again) == []
    assert checked_out(engine) == 0
    assert open_sessions(app, db) == 0


def test_only_idle_connections_are_pinged(
    make_app: MakeApp, own_postgres: PostgresServer
) -> None:
    """A connection idle past ``SESSIONEXT_PING_AFTER_IDLE`` is pinged at
    checkout, one checked in a moment ago is not; the server says what each
    backend ran last.
    """
    app, db = make_app(own_postgres.url(), SESSIONEXT_PING_AFTER_IDLE=0.5)
    with app.app_context():
        engine = db.engine

    def last_query(pid: int) -> str:
        with own_postgres.superuser_connection() as su:
            row = su.execute(
                "SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
        assert row is not None
        return t.cast(str, row[0])

    with engine.connect() as conn:
        pid = t.cast(int, conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())
        conn.commit()
    assert last_query(pid) == "COMMIT"
    with engine.connect() as conn:  # used a moment ago: no ping
        assert conn.connection.dbapi_connection.info.backend_pid == pid  # type: ignore[union-attr]
    assert last_query(pid) == "COMMIT"

    time.sleep(0.7)
    with engine.connect() as conn:  # idle past the threshold: pinged
        assert conn.connection.dbapi_connection.info.backend_pid == pid  # type: ignore[union-attr]
        # The ping of the psycopg dialect: an empty statement, or SELECT 1.
        assert last_query(pid) in (";", "SELECT 1")
