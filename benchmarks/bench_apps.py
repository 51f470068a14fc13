"""Whole requests through tiny Flask apps, one per adapter, side by side.

Each adapter is a Flask app with the same ``users`` table and the same views,
built on a different way of getting a session. Requests go straight to the
WSGI callable with a prepared environ. Within a round every (adapter,
workload) pair gets one short turn, in random order; the figures are the
median microseconds per request over the rounds and the median, with its
interquartile range, of the per-round ratios to ``raw``.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa
from flask import Flask
from sqlalchemy import orm
from werkzeug.test import EnvironBuilder

from flask_sessionext import SessionExt, signals

from ._harness import current_app_context

WORKLOADS = ("nodb", "empty", "read", "write", "bulk")
ADAPTERS = (
    "raw",
    "raw_again",
    "raw_pre_ping",
    "sessionext",
    "sessionext_noping",
    "sessionext_full",
    "fsa",
    "fsa_full",
    "lite",
)
#: Requests per turn of each workload: short turns, similar durations.
TURN = {"nodb": 200, "empty": 100, "read": 50, "write": 20, "bulk": 2}
SEED_ROWS = 100


class Base(orm.DeclarativeBase):
    """The models of the plain-SQLAlchemy adapters."""


class User(Base):
    """The one table every adapter uses."""

    __tablename__ = "users"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(40))


Session = t.Callable[[], orm.Session]


def _views(app: Flask, session: Session, model: type[t.Any]) -> None:
    """The five workloads, as views on ``session()`` and ``model``."""

    @app.get("/nodb")
    def nodb() -> str:
        return "ok"

    @app.get("/empty")
    def empty() -> str:
        session().execute(sa.select(sa.literal(1))).scalar()
        return "ok"

    @app.get("/read")
    def read() -> str:
        s = session()
        for ident in (1, 17, 33, 65, 99):
            s.get(model, ident)
        return "ok"

    @app.get("/write")
    def write() -> str:
        s = session()
        s.add_all([model(name=f"w{i}") for i in range(10)])
        s.commit()
        return "ok"

    @app.get("/rw")
    def read_write() -> str:
        s = session()
        s.get(model, 1)
        s.add(model(name="rw"))
        s.commit()
        return "ok"

    @app.get("/bulk")
    def bulk() -> str:
        s = session()
        s.add_all([model(name=f"b{i}") for i in range(1000)])
        s.commit()
        return "ok"


def _count(sender: Flask, **kwargs: t.Any) -> None:
    """A receiver doing the least possible work."""


@dataclass
class Adapter:
    """One app under test and how to reset its table between rounds."""

    app: Flask
    engine: sa.Engine
    table: sa.Table


def _raw(url: str, pre_ping: bool = False) -> Adapter:
    app = Flask("raw_pre_ping" if pre_ping else "raw")
    # With pool_pre_ping: what a careful hand-written app does for resilience.
    engine = sa.create_engine(url, pool_pre_ping=pre_ping)
    scoped = orm.scoped_session(
        orm.sessionmaker(bind=engine), scopefunc=current_app_context
    )

    @app.teardown_appcontext
    def remove(exc: BaseException | None) -> None:
        scoped.remove()

    _views(app, scoped, User)
    return Adapter(app, engine, User.__table__)


def _sessionext(
    url: str, full: bool, ping: bool = True, broadcast: str | None = None
) -> Adapter:
    app = Flask("sessionext_full" if full else "sessionext")
    app.config["SESSIONEXT_DATABASE_URI"] = url
    if broadcast is not None:
        # "publish": every commit publishes, no receiver in this process;
        # "receive": with a receiver too, so its listener thread runs.
        app.config["SESSIONEXT_BROADCAST"] = {"channel": "bench"}
    if not ping:  # no pool_pre_ping, nor the liveness check that replaces it
        app.config["SESSIONEXT_ENGINE_OPTIONS"] = {"pool_pre_ping": False}
    if full:
        app.config["SESSIONEXT_RECORD_QUERIES"] = True
    db = SessionExt(app)
    if full:
        # What fsa_full has: recording and a models_committed receiver.
        # Flask-SQLAlchemy has no cursor signals; a receiver of them (a
        # choice of the application) puts the engine on SQLAlchemy's
        # per-statement event path, which recording no longer needs.
        signals.models_committed.connect(_count, sender=app, weak=False)
    with app.app_context():
        engine = db.engine
        scoped = db.session
    if broadcast is not None:
        db.outbox_metadata.create_all(engine)
    if broadcast == "receive":  # once the table is there
        signals.models_committed_anywhere.connect(_count, sender=app, weak=False)
    _views(app, scoped, User)
    return Adapter(app, engine, User.__table__)


def _fsa(url: str, full: bool) -> Adapter:
    from flask_sqlalchemy import SQLAlchemy
    from flask_sqlalchemy.track_modifications import models_committed

    app = Flask("fsa_full" if full else "fsa")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    if full:
        app.config["SQLALCHEMY_RECORD_QUERIES"] = True
        app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = True
        models_committed.connect(_count, sender=app, weak=False)
    fsa = SQLAlchemy(app)
    with app.app_context():
        engine = fsa.engine
    _views(app, fsa.session, User)
    return Adapter(app, engine, User.__table__)


def _lite(url: str) -> Adapter:
    from flask_sqlalchemy_lite import SQLAlchemy

    app = Flask("lite")
    app.config["SQLALCHEMY_ENGINES"] = {"default": url}
    lite = SQLAlchemy(app)
    with app.app_context():
        engine = lite.engine
    _views(app, lambda: lite.session, User)
    return Adapter(app, engine, User.__table__)


def build(name: str, url: str) -> Adapter:
    """The adapter ``name`` on database ``url``, its table created and seeded."""
    adapter = make(name, url)
    reset(adapter)
    return adapter


def make(name: str, url: str) -> Adapter:
    """The adapter ``name`` on database ``url``, its table as it is."""
    factories: dict[str, t.Callable[[], Adapter]] = {
        "raw": lambda: _raw(url),
        "raw_again": lambda: _raw(url),
        "raw_pre_ping": lambda: _raw(url, pre_ping=True),
        "sessionext": lambda: _sessionext(url, False),
        "sessionext_noping": lambda: _sessionext(url, False, ping=False),
        "sessionext_full": lambda: _sessionext(url, True),
        "fsa": lambda: _fsa(url, False),
        "fsa_full": lambda: _fsa(url, True),
        "lite": lambda: _lite(url),
        # Not in ADAPTERS: the broadcast benchmark's.
        "sessionext_publish": lambda: _sessionext(url, False, broadcast="publish"),
        "sessionext_receive": lambda: _sessionext(url, False, broadcast="receive"),
    }
    return factories[name]()


def reset(adapter: Adapter) -> None:
    """Recreate the adapter's table with the seed rows."""
    with adapter.engine.begin() as conn:
        adapter.table.drop(conn, checkfirst=True)
        adapter.table.create(conn)
        conn.execute(
            adapter.table.insert(), [{"name": f"seed {i}"} for i in range(SEED_ROWS)]
        )


def _turn(app: Flask, environ: dict[str, t.Any], n: int) -> float:
    """Seconds for ``n`` requests of ``environ`` to ``app``."""

    def start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
        if not status.startswith("200"):
            raise RuntimeError(f"{app.name} answered {status}")
        return None

    wsgi = app.wsgi_app
    start = time.perf_counter()
    for _ in range(n):
        body = wsgi(dict(environ), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - start


@dataclass
class Result:
    """The figures of one adapter on one workload."""

    us_per_request: float
    ratio: float
    ratio_q1: float
    ratio_q3: float


def run(
    adapters: dict[str, Adapter],
    workloads: t.Sequence[str],
    rounds: int,
    scale: float = 1.0,
    baseline: str = "raw",
) -> dict[str, dict[str, Result]]:
    """Interleaved rounds over every adapter and workload; the ratios are
    to the adapter ``baseline``.
    """
    environs = {w: EnvironBuilder(path=f"/{w}").get_environ() for w in workloads}
    turns = {w: max(1, int(TURN[w] * scale)) for w in workloads}
    times: dict[tuple[str, str], list[float]] = {
        (a, w): [] for a in adapters for w in workloads
    }
    pairs = list(times)
    for name, workload in pairs:  # warm-up
        _turn(adapters[name].app, environs[workload], 1)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            random.shuffle(pairs)
            for name, workload in pairs:
                seconds = _turn(adapters[name].app, environs[workload], turns[workload])
                times[name, workload].append(seconds / turns[workload])
            gc.collect()
            for adapter in adapters.values():
                reset(adapter)
    finally:
        if gc_was_enabled:
            gc.enable()
    results: dict[str, dict[str, Result]] = {}
    for name in adapters:
        for workload in workloads:
            values = times[name, workload]
            ratios = [v / r for v, r in zip(values, times[baseline, workload])]
            q1, _, q3 = (
                statistics.quantiles(ratios, n=4)
                if len(ratios) > 1
                else [ratios[0]] * 3
            )
            results.setdefault(name, {})[workload] = Result(
                statistics.median(values) * 1e6, statistics.median(ratios), q1, q3
            )
    return results
