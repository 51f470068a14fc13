"""Async sessions side by side in one process: plain SQLAlchemy's
``async_scoped_session``, Flask-SQLAlchemy-Lite's ``async_session`` and this
extension's ``db.async_session``, in Flask ``async def`` views (each request
on a loop of its own, as Flask runs them) and in Quart (ASGI driven
in-process on one loop; Flask-SQLAlchemy-Lite serves Flask only).

Workloads: ``nodb`` (an async view that touches no database), ``empty``
(``SELECT 1``), ``read`` (five ``get()``), ``write`` (ten inserts and a
commit), and ``sync_nodb``: a *sync* view of the same app, which must pay
nothing for async support. The figures are the median microseconds per
request over interleaved rounds and the median per-round ratio to ``raw``.

Run: ``python -m benchmarks.bench_async [--db sqlite|postgresql] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from sqlalchemy import orm
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from werkzeug.test import EnvironBuilder

from flask_sessionext import SessionExt

from ._harness import current_app_context

WORKLOADS = ("nodb", "empty", "read", "write", "sync_nodb")
TURN = {"nodb": 100, "empty": 50, "read": 30, "write": 20, "sync_nodb": 300}


class Base(orm.DeclarativeBase):
    """The models of the benchmark."""


class User(Base):
    """The one table every adapter uses."""

    __tablename__ = "users"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(40))


GetSession = t.Callable[[], AsyncSession]


async def _nothing() -> None:
    pass


def _views(
    app: t.Any,
    session: GetSession,
    close: t.Callable[[], t.Awaitable[None]] = _nothing,
) -> None:
    """The workloads as views of a Flask or Quart app; ``close`` ends each
    view that used the session.
    """
    routes = t.cast(Flask, app)  # Quart's route decorators are the same

    @routes.get("/nodb")
    async def nodb() -> str:
        return "ok"

    @routes.get("/sync_nodb")
    def sync_nodb() -> str:
        return "ok"

    @routes.get("/empty")
    async def empty() -> str:
        await session().execute(sa.select(sa.literal(1)))
        await close()
        return "ok"

    @routes.get("/read")
    async def read() -> str:
        s = session()
        for ident in (1, 17, 33, 65, 99):
            await s.get(User, ident)
        await close()
        return "ok"

    @routes.get("/write")
    async def write() -> str:
        s = session()
        s.add_all([User(name=f"w{i}") for i in range(10)])
        await s.commit()
        await close()
        return "ok"


def _async_url(url: str) -> str:
    return url.replace("sqlite://", "sqlite+aiosqlite://", 1)


def flask_raw(url: str) -> Flask:
    """Plain SQLAlchemy: an ``async_scoped_session`` per app context, removed
    by an async teardown (Flask runs it through asgiref).
    """
    app = Flask("raw")
    engine = create_async_engine(_async_url(url))
    scoped = async_scoped_session(
        async_sessionmaker(engine, expire_on_commit=False),
        scopefunc=current_app_context,
    )

    @app.teardown_appcontext
    async def remove(exc: BaseException | None) -> None:
        await scoped.remove()

    _views(app, scoped)
    return app


def flask_raw_view(url: str) -> Flask:
    """Plain SQLAlchemy, the cheapest correct way: each view that used the
    ``async_scoped_session`` removes it itself, on its own loop; no teardown.
    """
    app = Flask("raw_view")
    engine = create_async_engine(_async_url(url))
    scoped = async_scoped_session(
        async_sessionmaker(engine, expire_on_commit=False),
        scopefunc=current_app_context,
    )
    _views(app, scoped, scoped.remove)
    return app


def flask_lite(url: str) -> Flask:
    """Flask-SQLAlchemy-Lite's ``async_session``."""
    from flask_sqlalchemy_lite import SQLAlchemy

    app = Flask("lite")
    app.config["SQLALCHEMY_ASYNC_ENGINES"] = {"default": _async_url(url)}
    lite = SQLAlchemy(app)
    _views(app, lambda: lite.async_session)
    return app


def flask_sessionext(url: str) -> Flask:
    """This extension's ``db.async_session``."""
    app = Flask("sessionext")
    app.config["SESSIONEXT_DATABASE_URI"] = url
    db = SessionExt(app)
    _views(app, lambda: db.async_session)
    return app


def quart_raw(url: str) -> t.Any:
    """Plain SQLAlchemy on Quart, removed by an async teardown."""
    from quart import Quart
    from quart.globals import app_ctx

    app = Quart("raw")
    engine = create_async_engine(_async_url(url))
    scoped = async_scoped_session(
        async_sessionmaker(engine, expire_on_commit=False),
        scopefunc=app_ctx._get_current_object,
    )

    @app.teardown_appcontext
    async def remove(exc: BaseException | None) -> None:
        await scoped.remove()

    _views(app, scoped)
    return app


def quart_sessionext(url: str) -> t.Any:
    """This extension on Quart."""
    from quart import Quart

    app = Quart("sessionext")
    app.config["SESSIONEXT_DATABASE_URI"] = url
    db = SessionExt(app)
    _views(app, lambda: db.async_session)
    return app


def _reset(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        Base.metadata.drop_all(conn)
        Base.metadata.create_all(conn)
        conn.execute(sa.insert(User), [{"name": f"u{i}"} for i in range(100)])
    engine.dispose()


def _flask_turn(app: Flask, path: str, n: int) -> float:
    environ = EnvironBuilder(path=path).get_environ()

    def start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> t.Any:
        if not status.startswith("200"):
            raise RuntimeError(f"{app.name} answered {status} on {path}")

    wsgi = app.wsgi_app
    start = time.perf_counter()
    for _ in range(n):
        body = wsgi(dict(environ), start_response)
        for _chunk in body:
            pass
        getattr(body, "close", lambda: None)()
    return time.perf_counter() - start


async def _quart_turn(app: t.Any, path: str, n: int) -> float:
    """``n`` requests straight to the ASGI callable, on the running loop."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "extensions": {},
    }

    async def receive() -> dict[str, t.Any]:
        # The body once; then, as a client that stays, nothing until the
        # app cancels its wait at the end of the request.
        if not received:
            received.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, t.Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"{app.name} answered {message['status']} on {path}")

    received: list[bool] = []
    start = time.perf_counter()
    for _ in range(n):
        received.clear()
        await app(dict(scope), receive, send)
    return time.perf_counter() - start


def run(url: str, rounds: int) -> dict[str, dict[str, dict[str, float]]]:
    """``{framework: {adapter: {workload: µs, workload + " ratio": ratio}}}``."""
    _reset(url)
    flask_apps = {
        "raw": flask_raw(url),
        "raw_view": flask_raw_view(url),
        "lite": flask_lite(url),
        "sessionext": flask_sessionext(url),
    }
    quart_apps = {"raw": quart_raw(url), "sessionext": quart_sessionext(url)}
    times: dict[tuple[str, str, str], list[float]] = {}

    async def quart_rounds() -> None:
        for app in quart_apps.values():
            await app.startup()
        for app in quart_apps.values():
            for workload in WORKLOADS:  # warm-up
                await _quart_turn(app, f"/{workload}", 2)
        for _ in range(rounds):
            for workload in WORKLOADS:
                for name, app in quart_apps.items():
                    n = TURN[workload]
                    seconds = await _quart_turn(app, f"/{workload}", n)
                    times.setdefault(("quart", name, workload), []).append(seconds / n)
        for app in quart_apps.values():
            await app.shutdown()

    for app in flask_apps.values():
        for workload in WORKLOADS:
            _flask_turn(app, f"/{workload}", 2)
    for _ in range(rounds):
        for workload in WORKLOADS:
            for name, app in flask_apps.items():
                n = TURN[workload]
                seconds = _flask_turn(app, f"/{workload}", n)
                times.setdefault(("flask", name, workload), []).append(seconds / n)
    asyncio.run(quart_rounds())
    results: dict[str, dict[str, dict[str, float]]] = {}
    for (framework, name, workload), values in times.items():
        raw = times[framework, "raw", workload]
        ratios = [v / r for v, r in zip(values, raw)]
        row = results.setdefault(framework, {}).setdefault(name, {})
        row[workload] = statistics.median(values) * 1e6
        row[f"{workload} ratio"] = statistics.median(ratios)
    return results


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """The results as a Markdown table."""
    cells = " | ".join(f"{w} µs (ratio to raw)" for w in WORKLOADS)
    lines = [
        f"| framework | adapter | {cells} |",
        "|---|---|" + "---|" * len(WORKLOADS),
    ]
    for framework, adapters in results.items():
        for name, row in adapters.items():
            values = " | ".join(
                f"{row[w]:.0f} ({row[f'{w} ratio']:.2f})" for w in WORKLOADS
            )
            lines.append(f"| {framework} | {name} | {values} |")
    return "\n".join(lines)


def section(quick: bool) -> None:
    """Print the table of a run on SQLite: one round with ``quick`` (a smoke
    run, for ``python -m benchmarks --quick``), seven otherwise.
    """
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        print("async adapters, SQLite (aiosqlite), µs per request (ratio to raw)")
        print(table(run(url, 1 if quick else 7)))


def main() -> None:
    """Run the benchmark on the chosen database and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.db == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        else:
            sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
            from _postgres import start_for_session  # type: ignore[import-not-found]

            server = start_for_session()
            if server is None:
                raise SystemExit("PostgreSQL server binaries not found")
            url = server.create_database("bench_async")
        try:
            print(table(run(url, args.rounds)))
        finally:
            if server is not None:
                server.close()


if __name__ == "__main__":
    main()
