"""The writer processes of :mod:`.broadcast_load`: each holds an app with
``SESSIONEXT_BROADCAST`` on and one with it off on the same database, and
runs the commands it is sent: commit one-row transactions until a deadline,
or commit one transaction that waits between publishing and its COMMIT.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
import traceback
import typing as t
from dataclasses import dataclass
from multiprocessing.connection import Connection

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_sessionext import SessionExt
from flask_sessionext.signals import commit

#: Seconds to wait for a writer's reply beyond its round, at most.
REPLY_TIMEOUT = 120.0
#: What the writers' fork server imports before it forks them.
_PRELOAD = ["flask", "flask_sessionext", "psycopg", "sqlalchemy"]


class Base(DeclarativeBase):
    """The load's table."""


class Row(Base):
    """One committed transaction of a writer."""

    __tablename__ = "bench_broadcast_load"
    id: Mapped[int] = mapped_column(primary_key=True)
    writer: Mapped[int]


@dataclass(frozen=True)
class Commit:
    """Commit one-row transactions from ``start`` until ``end`` (monotonic
    clock, which all processes share).
    """

    broadcast: bool
    start: float
    end: float


@dataclass(frozen=True)
class Stall:
    """At ``start``, commit one transaction that waits ``seconds`` after
    publishing, before its COMMIT.
    """

    broadcast: bool
    start: float
    seconds: float


@dataclass(frozen=True)
class Committed:
    """A writer's round: when each of its commits ended, and the longest one."""

    ends: list[float]
    slowest: float


@dataclass(frozen=True)
class Stalled:
    """When the stalled transaction began and ended its wait."""

    began: float
    ended: float


Command = Commit | Stall
Reply = Committed | Stalled


def make_app(url: str, broadcast: bool) -> tuple[Flask, SessionExt]:
    """An app on ``url``, with broadcast on or off."""
    app = Flask(__name__)
    app.config.update(
        SESSIONEXT_DATABASE_URI=url,
        SESSIONEXT_RECORD_QUERIES=False,
        SESSIONEXT_BROADCAST={"channel": "bench_load"} if broadcast else None,
    )
    return app, SessionExt(app)


def fresh(url: str) -> None:
    """Empty tables."""
    engine = sa.create_engine(url)
    for metadata in (Base.metadata, SessionExt.outbox_metadata):
        metadata.drop_all(engine)
        metadata.create_all(engine)
    engine.dispose()


def sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _commit(app: Flask, db: SessionExt, writer: int, command: Commit) -> Committed:
    """Commit one-row transactions during ``command``'s round."""
    sleep_until(command.start)
    ends: list[float] = []
    slowest = 0.0
    with app.app_context():
        while (began := time.monotonic()) < command.end:
            db.session.add(Row(writer=writer))
            db.session.commit()
            ended = time.monotonic()
            slowest = max(slowest, ended - began)
            ends.append(ended)
    return Committed(ends, slowest)


def _stall(app: Flask, db: SessionExt, writer: int, command: Stall) -> Stalled:
    """Commit one transaction that waits between publishing and COMMIT."""
    waits: list[float] = []

    def wait(sender: Flask, **kwargs: object) -> None:
        waits.append(time.monotonic())
        time.sleep(command.seconds)
        waits.append(time.monotonic())

    sleep_until(command.start)
    with commit.connected_to(wait, sender=app), app.app_context():
        db.session.add(Row(writer=writer))
        db.session.commit()
    if len(waits) != 2:
        raise RuntimeError(f"the commit signal was sent {len(waits) // 2} times")
    return Stalled(*waits)


def _writer(url: str, writer: int, pipe: Connection) -> None:
    """A writer process: run the commands that come through ``pipe`` until
    ``None``; reply to each, with the traceback when it failed.
    """
    try:
        apps = {on: make_app(url, on) for on in (False, True)}
        for app, db in apps.values():
            # Connected and compiled before any round.
            _commit(app, db, writer, Commit(False, 0.0, time.monotonic() + 0.05))
    except Exception:
        pipe.send(traceback.format_exc())
        return
    pipe.send("ready")
    while (command := pipe.recv()) is not None:
        try:
            app, db = apps[command.broadcast]
            reply: Reply | str = (
                _stall(app, db, writer, command)
                if isinstance(command, Stall)
                else _commit(app, db, writer, command)
            )
        except Exception:
            reply = traceback.format_exc()
        pipe.send(reply)


class Writers:
    """``count`` writer processes on ``url``, from entering to leaving."""

    def __init__(self, url: str, count: int) -> None:
        # Each writer is forked from a fresh process that has imported the
        # libraries once (no app, no thread, no connection in it): as clean
        # as spawn, without importing them again in each of 16 writers.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        self._pipes: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        for writer in range(count):
            ours, theirs = ctx.Pipe()
            self._pipes.append(ours)
            self._procs.append(
                ctx.Process(target=_writer, args=(url, writer, theirs), daemon=True)
            )

    def __enter__(self) -> Writers:
        try:
            for proc in self._procs:
                proc.start()
            for writer in range(len(self._procs)):
                self._receive(writer, time.monotonic() + REPLY_TIMEOUT)
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def run(self, commands: t.Mapping[int, Command]) -> dict[int, Reply]:
        """Send each writer its command and wait for all the replies."""
        for writer, command in commands.items():
            self._pipes[writer].send(command)
        end = max(
            c.end if isinstance(c, Commit) else c.start + c.seconds
            for c in commands.values()
        )
        replies: dict[int, Reply] = {}
        for writer in commands:
            reply = self._receive(writer, end + REPLY_TIMEOUT)
            assert not isinstance(reply, str)
            replies[writer] = reply
        return replies

    def _receive(self, writer: int, deadline: float) -> Reply | str:
        pipe = self._pipes[writer]
        if not pipe.poll(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"writer {writer} did not reply in time")
        reply: Reply | str = pipe.recv()
        if isinstance(reply, str) and reply != "ready":
            raise RuntimeError(f"writer {writer} failed:\n{reply}")
        return reply

    def _stop(self) -> None:
        for pipe, proc in zip(self._pipes, self._procs):
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    pipe.send(None)
        for proc in self._procs:
            if proc.pid is None:
                continue
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join()
