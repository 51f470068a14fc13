"""PostgreSQL goes away under load and comes back: clean 5xx meanwhile,
recovery within 2 seconds, no restart of the app, nothing lost or leaked.
"""

from __future__ import annotations

import math
import threading
import time
import typing as t

import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from flask_sessionext import signals

from ._webapp import (
    RAISE,
    READ,
    WRITE,
    MakeApp,
    Observer,
    Result,
    check_writes,
    endless_plan,
    fixed_plan,
    load,
    serve,
)
from _postgres import APP_PASSWORD, PostgresServer
from helpers import checked_out, open_sessions

#: How long the server stays down under load, and how long the load goes on
#: once it is back.
OUTAGE = 1.5
AFTER = 3.5
#: The longest a request may still fail once the server is back.
RECOVERY = 2.0
#: Reads, writes, and views that raise after flushing (always a 500).
MIX = [READ, WRITE, READ, WRITE, RAISE]
#: The status of each kind while the database is up.
UP = {READ: 200, WRITE: 200, RAISE: 500}


def wait_for(condition: t.Callable[[], bool], timeout: float) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_database_outage_under_load(
    make_app: MakeApp, own_postgres: PostgresServer
) -> None:
    """With the server stopped under load, requests fail with a clean 500;
    once it is back they succeed again within 2 seconds, in the same app
    with the same engine, and no committed row, session or connection is
    lost or leaked.
    """
    app, db = make_app(own_postgres.url())
    with app.app_context():
        engine = db.engine
    observer = Observer()
    stop = threading.Event()
    results: list[Result] = []
    marks: dict[str, float] = {}

    def run() -> None:
        results.extend(load(port, endless_plan(MIX, stop), clients=8))

    with (
        signals.models_committed.connected_to(observer.models_committed, sender=app),
        serve(app, threads=8) as port,
    ):
        clients = threading.Thread(target=run, name="load")
        clients.start()
        try:
            time.sleep(0.5)  # served normally
            marks["stopping"] = time.monotonic()
            own_postgres.stop()
            marks["down"] = time.monotonic()
            time.sleep(OUTAGE)
            marks["starting"] = time.monotonic()
            own_postgres.start()
            marks["up"] = time.monotonic()
            time.sleep(AFTER)
        finally:
            if not own_postgres.running:
                own_postgres.start()
            stop.set()
            clients.join(timeout=60)
    assert not clients.is_alive()

    assert [r for r in results if r.error] == []
    assert {r.status for r in results} == {200, 500}
    before = [r for r in results if r.ended < marks["stopping"]]
    outage = [
        r for r in results if marks["down"] < r.started and r.ended < marks["starting"]
    ]
    after = [r for r in results if r.started > marks["up"]]
    assert len(before) > 10
    assert [r for r in before if r.status != UP[r.kind]] == []
    assert len(outage) > 10
    assert [r for r in outage if r.status != 500] == []
    assert [
        r.text for r in outage if APP_PASSWORD in r.text or "Traceback" in r.text
    ] == []
    # Every failure is a clean database error, logged by Flask.
    assert app.failures["OperationalError"] > 0
    assert set(app.failures) <= {"Boom", "OperationalError", "PendingRollbackError"}
    first = min((r.ended for r in after if r.status == 200), default=math.inf)
    assert first - marks["up"] < RECOVERY
    late = [r for r in after if r.started > marks["up"] + RECOVERY]
    assert len(late) > 10
    assert [(r.status, r.text[:200]) for r in late if r.status != UP[r.kind]] == []

    with app.app_context():
        assert db.engine is engine
        check_writes(results, engine, observer)
    assert checked_out(engine) == 0
    assert open_sessions(app, db) == 0


def test_restart_between_requests(
    make_app: MakeApp, own_postgres: PostgresServer
) -> None:
    """Pooled connections that a server restart killed are replaced on
    checkout (the liveness check), so no request after the restart fails.
    """
    app, db = make_app(own_postgres.url())
    with app.app_context():
        engine = db.engine
    with serve(app, threads=4) as port:
        warm = load(port, fixed_plan([READ] * 40), clients=4)
        assert {r.status for r in warm} == {200}
        assert t.cast(QueuePool, engine.pool).checkedin() >= 1
        own_postgres.stop()
        own_postgres.start()
        again = load(port, fixed_plan([READ, WRITE] * 20), clients=4)
    assert [(r.status, r.text[:200]) for r in again if r.status != 200] == []
    assert checked_out(engine) == 0
    assert open_sessions(app, db) == 0
    with app.app_context(), db.session_scope() as session:
        assert session.scalar(sa.select(1)) == 1
