"""``SESSIONEXT_BROADCAST`` under pressure: no lock between publishers (a
stalled one, a deferred foreign key), ``publications_lost`` instead of silence
(pruned past a stopped listener, a re-created outbox, an unreadable row), a
forked child that receives from the fork, and a listener that connects as the
pool does (``creator``, ``do_connect``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import typing as t
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from test_broadcast import Received, outbox_rows, the_listener, wait_for
from test_broadcast import broadcast_app as broadcast_app

from flask_sessionext import CommittedChange, SessionExt, signals
from flask_sessionext._features import broadcast, outbox_commit, outbox_listener
from flask_sessionext._features.outbox import (
    outbox_metadata,
    outbox_table,
    prune,
    utcnow,
)
from flask_sessionext.signals import models_committed_anywhere, publications_lost

from models import User


@pytest.fixture
def lost(broadcast_app: tuple[Flask, SessionExt]) -> Iterator[list[str]]:
    """The reasons ``publications_lost`` sent to the broadcast app."""
    app, _ = broadcast_app
    reasons: list[str] = []

    def receiver(sender: Flask, reason: str) -> None:
        reasons.append(reason)

    with publications_lost.connected_to(receiver, app):
        yield reasons


@pytest.fixture
def received(broadcast_app: tuple[Flask, SessionExt]) -> Iterator[list[Received]]:
    """What ``models_committed_anywhere`` sends to the broadcast app, once
    its listener is up to date.
    """
    app, _ = broadcast_app
    got: list[Received] = []

    def receiver(
        sender: Flask, changes: list[CommittedChange], local: bool, sequence: int
    ) -> None:
        got.append((sequence, local, changes))

    with models_committed_anywhere.connected_to(receiver, app):
        the_listener(app)
        yield got


@contextmanager
def deferred_child_table(app: Flask, name: str, reason: str) -> Iterator[sa.Engine]:
    """A table ``name`` whose ``user_id`` references ``users`` with a
    deferred foreign key, for the test's duration; skips on SQLite with
    ``reason``. Yields the engine.
    """
    engine: sa.Engine = app.extensions["sessionext"].engines[None]
    if engine.dialect.name != "postgresql":
        pytest.skip(reason)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {name} (id serial PRIMARY KEY, user_id int REFERENCES"
            " users (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    try:
        yield engine
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {name}")


def add_user(app: Flask, db: SessionExt, name: str) -> None:
    """Commit a new user through ``db.session``."""
    with app.app_context():
        db.session.add(User(name=name))
        db.session.commit()


def age_outbox(app: Flask, seconds: float) -> None:
    """Make every outbox row and tick ``seconds`` older."""
    engine = app.extensions["sessionext"].engines[None]
    with engine.begin() as conn:
        for table in outbox_metadata.sorted_tables:
            if engine.dialect.name == "postgresql":
                older = table.c.created_at - timedelta(seconds=seconds)
            else:
                older = sa.func.strftime(
                    "%Y-%m-%d %H:%M:%f", table.c.created_at, f"-{int(seconds)} seconds"
                )
            conn.execute(table.update().values(created_at=older))


def user_names(app: Flask, db: SessionExt, received: list[Received]) -> list[str]:
    """The names of the users whose changes were received, in order."""
    with app.app_context():
        by_id = {user.id: user.name for user in db.session.scalars(sa.select(User))}
    return [by_id.get(changes[0].primary_key[0], "?") for _, _, changes in received]


# No lock between publishers


@pytest.mark.parametrize("path", ["with the COMMIT", "as a statement"])
def test_a_stalled_publisher_does_not_stop_the_others(
    broadcast_app: tuple[Flask, SessionExt],
    received: list[Received],
    path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While one publisher waits 1.5 s before its COMMIT (after its outbox
    row, when the row goes as a statement of its own), another commits over
    and over; every publication arrives.
    """
    app, db = broadcast_app
    if path == "as a statement":
        monkeypatch.setattr(outbox_commit, "DRIVERS", ())
    if app.extensions["sessionext"].engines[None].dialect.name != "postgresql":
        pytest.skip("SQLite runs one writing transaction at a time")
    stalled = threading.Event()

    def hold(sender: Flask, **kwargs: t.Any) -> None:
        if threading.current_thread().name == "stalled":
            stalled.set()
            time.sleep(1.5)

    def stall() -> None:
        add_user(app, db, "stalled")

    with signals.commit.connected_to(hold, app):
        thread = threading.Thread(target=stall, name="stalled")
        thread.start()
        assert stalled.wait(5)
        commits = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            add_user(app, db, f"other {commits}")
            commits += 1
        assert thread.is_alive(), "the stalled publisher has not committed yet"
        thread.join()
    assert commits >= 10
    wait_for(lambda: len(received) == commits + 1)


def test_no_deadlock_with_a_deferred_foreign_key(
    broadcast_app: tuple[Flask, SessionExt], received: list[Received]
) -> None:
    """T2 holds a parent row FOR UPDATE; T1 inserts a child whose deferred
    foreign key waits at COMMIT for that row; T2 then publishes and commits:
    both commit, as they would without broadcast.
    """
    app, db = broadcast_app
    with deferred_child_table(
        app, "child", "deferrable foreign keys that wait: PostgreSQL"
    ) as engine:
        add_user(app, db, "parent")
        errors: list[BaseException] = []
        with app.app_context():
            parent = db.session.scalars(sa.select(User).with_for_update()).one()

            def insert_child() -> None:
                try:
                    with engine.begin() as conn:
                        conn.exec_driver_sql(
                            "INSERT INTO child (user_id) VALUES (%s)", (parent.id,)
                        )
                        with app.app_context():
                            db.session.add(User(name="sibling"))
                            db.session.commit()
                except BaseException as e:  # recorded for the assertion
                    errors.append(e)

            child = threading.Thread(target=insert_child)
            child.start()
            time.sleep(0.5)  # T1 waits at its COMMIT for the parent row
            parent.name = "parent, renamed"
            db.session.commit()
        child.join(10)
        assert not child.is_alive()
        assert errors == []
        wait_for(lambda: len(received) >= 2)


def test_a_failed_publication_leaves_nothing_behind(
    broadcast_app: tuple[Flask, SessionExt], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that fails after its outbox row was held for the COMMIT
    leaves no row for the next transaction of the pooled connection.
    """
    app, db = broadcast_app

    def fail(*args: t.Any) -> None:
        raise RuntimeError("pruning failed")

    monkeypatch.setattr(broadcast, "prune", fail)
    with app.app_context():
        db.session.add(User(name="failed"))
        with pytest.raises(RuntimeError, match="pruning failed"):
            db.session.commit()
        db.session.rollback()
    engine = app.extensions["sessionext"].engines[None]
    with engine.begin() as conn:
        conn.execute(sa.select(1))
    assert outbox_rows(app) == []


def test_a_failing_commit_raises_as_sqlalchemy_does(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """A deferred foreign key that fails at COMMIT raises SQLAlchemy's
    IntegrityError, the outbox row going with the COMMIT or not, and
    publishes nothing.
    """
    app, db = broadcast_app
    with deferred_child_table(app, "orphan", "deferrable foreign keys: PostgreSQL"):
        with app.app_context():
            db.session.add(User(name="with an orphan"))
            db.session.flush()
            db.session.execute(sa.text("INSERT INTO orphan (user_id) VALUES (-1)"))
            with pytest.raises(sa.exc.IntegrityError, match="orphan"):
                db.session.commit()
            db.session.rollback()
        assert outbox_rows(app) == []


# No silent loss


def test_pruned_past_a_stopped_listener(
    broadcast_app: tuple[Flask, SessionExt], received: list[Received], lost: list[str]
) -> None:
    """A listener held in a receiver while its rows (and ticks) are pruned
    away sends ``publications_lost`` once, then delivers what comes next.
    """
    app, db = broadcast_app
    entered, release = threading.Event(), threading.Event()

    def stuck(sender: Flask, **kwargs: t.Any) -> None:
        entered.set()
        release.wait(10)

    with models_committed_anywhere.connected_to(stuck, app):
        add_user(app, db, "first")
        assert entered.wait(10)
        for name in ("gone 1", "gone 2"):
            add_user(app, db, name)
        age_outbox(app, 7200)
        settings = app.extensions["sessionext"].settings.broadcast
        engine = app.extensions["sessionext"].engines[None]
        with engine.begin() as conn:
            prune(conn, settings.channel, settings.keep)
        release.set()
        wait_for(lambda: lost == ["pruned"])
    add_user(app, db, "after")
    wait_for(lambda: "after" in user_names(app, db, received))
    assert lost == ["pruned"]
    assert "gone 1" not in user_names(app, db, received)


def test_recreated_outbox(
    broadcast_app: tuple[Flask, SessionExt], received: list[Received], lost: list[str]
) -> None:
    """Dropping and creating the outbox tables again is told once as
    ``publications_lost``, and the publications after it arrive.
    """
    app, db = broadcast_app
    engine = app.extensions["sessionext"].engines[None]
    for name in ("a", "b", "c", "d", "e"):
        add_user(app, db, name)
    wait_for(lambda: len(received) == 5)
    outbox_metadata.drop_all(engine)
    outbox_metadata.create_all(engine)
    add_user(app, db, "new 1")
    wait_for(lambda: lost == ["outbox re-created"])
    add_user(app, db, "new 2")
    wait_for(lambda: "new 2" in user_names(app, db, received))
    assert lost == ["outbox re-created"]


def test_unreadable_row_is_a_loss(
    broadcast_app: tuple[Flask, SessionExt], received: list[Received], lost: list[str]
) -> None:
    """A row whose payload does not decode is skipped with
    ``publications_lost``; the next ones arrive.
    """
    app, db = broadcast_app
    engine = app.extensions["sessionext"].engines[None]
    with engine.begin() as conn:
        txid = (
            conn.exec_driver_sql("SELECT pg_current_xact_id()::text::bigint").scalar()
            if engine.dialect.name == "postgresql"
            else None
        )
        conn.execute(
            outbox_table.insert().values(
                channel="sessionext", created_at=utcnow(), payload="{", txid=txid
            )
        )
    add_user(app, db, "after")
    wait_for(lambda: "after" in user_names(app, db, received))
    assert lost == ["unreadable publication"]


# Every worker from its first moment


def _receive_in_fork(app: Flask, go: int, result: int, generations: int) -> None:
    """In a forked process: fork ``generations - 1`` more times first; the
    last one waits for ``go``, pushes its first app context, and writes to
    ``result`` the keys of what it received within 10 s.
    """
    status = 1
    try:
        if generations > 1:
            pid = os.fork()
            if pid:
                _, child_status = os.waitpid(pid, 0)
                os._exit(os.waitstatus_to_exitcode(child_status))
            _receive_in_fork(app, go, result, generations - 1)
        os.read(go, 1)  # the first process committed
        got: list[list[t.Any]] = []

        def child_receiver(sender: Flask, changes: t.Any, **kw: t.Any) -> None:
            got.append([c.primary_key[0] for c in changes])

        with models_committed_anywhere.connected_to(child_receiver, app):
            with app.app_context():  # this process's first
                pass
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                time.sleep(0.02)
        os.write(result, json.dumps(got).encode())
        status = 0
    finally:
        os._exit(status)


@pytest.mark.parametrize("generations", [1, 2], ids=["child", "grandchild"])
def test_forked_child_receives_from_the_fork(
    broadcast_app: tuple[Flask, SessionExt],
    received: list[Received],
    generations: int,
) -> None:
    """A child (and its own child) forked while the first process receives
    gets a change committed after the forks and before its first app
    context.
    """
    app, db = broadcast_app
    add_user(app, db, "before")
    wait_for(lambda: len(received) == 1)
    read, write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _receive_in_fork(app, go_read, write, generations)
    os.close(write)
    time.sleep(0.2)  # every fork is done
    add_user(app, db, "after the fork")
    os.write(go_write, b"!")
    data = b""
    while chunk := os.read(read, 4096):
        data += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with app.app_context():
        after = db.session.scalars(
            sa.select(User.id).where(User.name == "after the fork")
        ).one()
    assert json.loads(data) == [[after]]


# The listener connects as the pool does


@pytest.mark.parametrize("how", ["creator", "do_connect"])
def test_listener_connects_as_the_pool_does(
    app: Flask, database: str, how: str
) -> None:
    """On a URL without password, a bind whose connections come from a
    ``creator`` engine option, or get their password from a receiver of
    ``do_connect``, delivers: its listener connects through the pool.
    """
    if database != "postgresql":
        pytest.skip("a server with a password")
    url = sa.make_url(app.config["SESSIONEXT_DATABASE_URI"])
    import psycopg

    app.config["SESSIONEXT_DATABASE_URI"] = url.set(password=None)
    app.config["SESSIONEXT_BROADCAST"] = {"poll_interval": 0.02}
    if how == "creator":
        app.config["SESSIONEXT_ENGINE_OPTIONS"] = {
            "creator": lambda: psycopg.connect(
                host=url.host,
                port=url.port,
                user=url.username,
                password=url.password,
                dbname=url.database,
            )
        }

    def inject_password(sender: Flask, cparams: dict[str, t.Any], **kw: t.Any) -> None:
        cparams["password"] = url.password

    db = SessionExt(app)
    engine = app.extensions["sessionext"].engines[None]
    got: list[int] = []

    def receiver(sender: Flask, sequence: int, **kwargs: t.Any) -> None:
        got.append(sequence)

    with signals.do_connect.connected_to(inject_password, app):
        User.metadata.create_all(engine)
        outbox_metadata.create_all(engine)
        try:
            with models_committed_anywhere.connected_to(receiver, app):
                the_listener(app)
                add_user(app, db, "created")
                wait_for(lambda: len(got) == 1)
            assert got == [row_id for row_id, _ in outbox_rows(app)]
        finally:
            User.metadata.drop_all(engine)
            outbox_metadata.drop_all(engine)
            engine.dispose()


def test_listener_takes_no_slot_of_the_apps_pool(app: Flask) -> None:
    """With every connection of the app's pool checked out, the listener
    still connects, and delivers once the pool is free again.
    """
    app.config["SESSIONEXT_BROADCAST"] = {"poll_interval": 0.02}
    app.config["SESSIONEXT_ENGINE_OPTIONS"] = {
        "pool_size": 1,
        "max_overflow": 0,
        "pool_timeout": 30,
    }
    db = SessionExt(app)
    engine = app.extensions["sessionext"].engines[None]
    User.metadata.create_all(engine)
    outbox_metadata.create_all(engine)
    got: list[int] = []

    def receiver(sender: Flask, sequence: int, **kwargs: t.Any) -> None:
        got.append(sequence)

    try:
        with models_committed_anywhere.connected_to(receiver, app):
            with engine.connect():  # the pool's only connection
                the_listener(app)
            add_user(app, db, "pool")
            wait_for(lambda: len(got) == 1)
    finally:
        User.metadata.drop_all(engine)
        outbox_metadata.drop_all(engine)
        engine.dispose()


def test_rows_carry_what_orders_them(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """The outbox of a PostgreSQL bind holds each publication's transaction
    id, which the ticks order by; SQLite's, the channel's previous row.
    """
    app, db = broadcast_app
    add_user(app, db, "one")
    add_user(app, db, "two")
    engine = app.extensions["sessionext"].engines[None]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                outbox_table.c.id, outbox_table.c.txid, outbox_table.c.previous_id
            ).order_by(outbox_table.c.id)
        ).all()
    if engine.dialect.name == "postgresql":
        assert all(txid is not None for _, txid, _ in rows)
        assert rows[0].txid != rows[1].txid
    else:
        assert [previous for _, _, previous in rows] == [None, rows[0].id]


# Quiet commands


def test_cli_commands_print_no_listener_noise(tmp_path: Path) -> None:
    """``flask sessionext create-all`` on an app that receives, before its
    outbox exists, prints what it did and nothing of the listener.
    """
    (tmp_path / "quietapp.py").write_text(
        textwrap.dedent(
            f"""
            import logging
            from flask import Flask
            from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
            from flask_sessionext import SessionExt
            from flask_sessionext.signals import models_committed_anywhere

            class Base(DeclarativeBase):
                pass

            class Thing(Base):
                __tablename__ = "things"
                id: Mapped[int] = mapped_column(primary_key=True)

            logging.basicConfig(level=logging.INFO)
            app = Flask(__name__)
            app.config["SESSIONEXT_DATABASE_URI"] = "sqlite:///{tmp_path / "q.db"}"
            app.config["SESSIONEXT_BROADCAST"] = {{"poll_interval": 0.01}}
            db = SessionExt(app, metadata=Base.metadata)
            models_committed_anywhere.connect(
                lambda sender, **kwargs: None, app, weak=False
            )
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "quietapp",
            "sessionext",
            "create-all",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Created 3 table(s) in the default bind" in result.stdout
    assert "broadcast" not in result.stderr.lower(), result.stderr


# A real process, stopped past 'keep'

_LISTENING_PROCESS = """
import sys, time
from flask import Flask
from flask_sessionext import SessionExt
from flask_sessionext.signals import models_committed_anywhere, publications_lost

app = Flask("stopped")
app.config["SESSIONEXT_DATABASE_URI"] = sys.argv[1]
app.config["SESSIONEXT_BROADCAST"] = {"poll_interval": 0.02}
db = SessionExt(app)

def delivered(sender, sequence, **kwargs):
    print("delivered", sequence, flush=True)

def lost(sender, reason):
    print("lost", reason, flush=True)

models_committed_anywhere.connect(delivered, app, weak=False)
publications_lost.connect(lost, app, weak=False)
listener = app.extensions["sessionext"].feature(
    __import__("flask_sessionext._features.broadcast", fromlist=["x"]).Broadcast
).listener
listener.connected.wait(20)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_process_stopped_past_keep(
    broadcast_app: tuple[Flask, SessionExt],
) -> None:
    """A listening process stopped (SIGSTOP) while what it missed is pruned
    sends ``publications_lost`` once when it continues, then delivers what
    comes next.
    """
    app, db = broadcast_app
    url = app.extensions["sessionext"].engines[None].url
    child = subprocess.Popen(
        [sys.executable, "-c", _LISTENING_PROCESS, url.render_as_string(False)],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(child.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        wait_for(lambda: "ready\n" in lines, timeout=30)
        add_user(app, db, "seen")
        wait_for(lambda: any(line.startswith("delivered") for line in lines))
        os.kill(child.pid, signal.SIGSTOP)
        for name in ("missed 1", "missed 2"):
            add_user(app, db, name)
        age_outbox(app, 7200)
        settings = app.extensions["sessionext"].settings.broadcast
        engine = app.extensions["sessionext"].engines[None]
        with engine.begin() as conn:
            prune(conn, settings.channel, settings.keep)
        os.kill(child.pid, signal.SIGCONT)
        wait_for(lambda: any(line.startswith("lost") for line in lines), timeout=20)
        add_user(app, db, "after")
        last = max(row_id for row_id, _ in outbox_rows(app))
        wait_for(lambda: f"delivered {last}\n" in lines, timeout=20)
    finally:
        child.kill()
        child.wait()
        reader.join(5)
        child.stdout.close()  # type: ignore[union-attr]
    assert [line for line in lines if line.startswith("lost")] == ["lost pruned\n"]


# Forks wait for the listener thread to be in a wait


def _fork_and_wait() -> tuple[float, int]:
    """Fork a child that exits at once; when the fork returned in the parent
    (``time.monotonic()``), and the child's exit code.
    """
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    forked = time.monotonic()
    _, status = os.waitpid(pid, 0)
    return forked, os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("stall", [0.6, 30.0], ids=["connecting", "stalled"])
def test_fork_waits_for_a_connecting_listener(
    broadcast_app: tuple[Flask, SessionExt],
    monkeypatch: pytest.MonkeyPatch,
    stall: float,
) -> None:
    """A fork made while the listener thread connects (inside the driver,
    whose C locks a child would inherit held) waits until the connection is
    made; one that stalls longer than FORK_WAIT delays the fork by FORK_WAIT
    only.
    """
    app, _ = broadcast_app
    monkeypatch.setattr(outbox_listener, "FORK_WAIT", 1.0)
    connecting, connected = threading.Event(), threading.Event()
    ended: list[float] = []

    def slow_connect(sender: Flask, **kwargs: t.Any) -> None:
        if threading.current_thread().name.startswith("sessionext-broadcast"):
            connecting.set()
            connected.wait(stall)
            ended.append(time.monotonic())

    with (
        signals.connect.connected_to(slow_connect, app),
        models_committed_anywhere.connected_to(lambda sender, **kw: None, app),
    ):
        assert connecting.wait(10)
        started = time.monotonic()
        forked, code = _fork_and_wait()
        connected.set()
        the_listener(app)
    assert code == 0
    if stall < 1.0:
        assert ended
        assert forked >= ended[0]  # the fork waited for the connect
    else:
        assert 0.9 <= forked - started < 5  # the fork waited FORK_WAIT, no more
