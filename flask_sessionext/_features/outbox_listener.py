"""The receiving side of ``SESSIONEXT_BROADCAST``: a listener thread per app
that receives ``models_committed_anywhere``, and per process.

The thread connects as the outbox bind's pool would (its URL, ``connect_args``,
``creator`` and the receivers of ``do_connect``), then detaches the
connection from the pool and keeps it for itself. It reads the outbox with a
reader of :mod:`.outbox_reading`, which keeps its position across
reconnections, so it never delivers a publication twice; on PostgreSQL it
first writes the next tick. It wakes up when a transaction of this process
published (a byte on its pipe, :meth:`OutboxListener.wake`: the publisher
waits for nothing), when another process wrote a tick (a notification, on
PostgreSQL with psycopg, which ``LISTEN``\\s), and at the latest every
:data:`WAIT` seconds (``poll_interval`` where it does not listen).

The listener belongs to the app's :class:`~.broadcast.Broadcast`, on its
runtime. Each start of it is a :class:`_Run` of one process: its loop goes
on only while the run is current (not stopped, and in the process that
started it). A forked child gets no thread of its parent's, but under gevent
it gets its parent's greenlet, which would go on in the child: at its next
check it finds itself in another process and leaves, delivering nothing and
closing nothing. The child starts a listener of its own, from where its
parent's was at the fork (:meth:`OutboxListener.inherit`).

What is kept for the whole process, and why: the process is the scope of
these, and nothing else of the package is kept outside the runtimes.

- :data:`_origin`, the id of the process in the payloads it publishes, and
  :data:`_forked_at`, when it was forked: new in each child.
- :data:`_running`, the runs started in this process, held weakly: threads and
  sockets belong to the process, and only a process-wide hook can find them
  at a fork (where the child points each inherited listener socket at
  ``/dev/null`` and keeps it, see :func:`_detach`) and at interpreter exit
  (where the listeners stop and close their connections).

Neither takes a lock: each change is one operation on a built-in object,
atomic under the GIL (and under gevent, which switches greenlets only at
blocking calls), and the fork hook runs in the child, where the forking
thread is the only one. So no lock can be held across a fork by a thread
that the child does not have.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import os
import select
import sys
import threading
import time
import typing as t
import uuid
import weakref
from datetime import datetime

import sqlalchemy as sa
from flask import Flask

from .._config.passwords import hide_passwords, mask_url
from .._config.settings import BroadcastSettings
from .._session.frameworks import call_in_app_context
from .._sqlalchemy_private import all_registries
from ..signals import models_committed_anywhere, publications_lost
from .base import report
from .outbox import CommittedChange, Operation, is_missing_table, missing_table, utcnow
from .outbox_payload import decode, entity_name, typed_key
from .outbox_reading import Database, PgReader, Reader, SqliteReader

#: The reason of ``publications_lost`` for a row that does not decode.
UNREADABLE = "unreadable publication"

#: Where the listeners log their connections and errors; receivers' errors
#: go to their app's logger.
logger = logging.getLogger("flask_sessionext.broadcast")

#: The longest wait between two reads of the outbox on PostgreSQL, seconds.
WAIT = 1.0
#: The shortest time between two ticks (and reads) of a listener woken up by
#: its own process's commits, seconds.
TICK_EVERY = 0.005
#: The first and the longest wait before reconnecting, seconds.
MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0
#: How long a missing outbox table is only logged at DEBUG level: a CLI
#: command that creates it (``create-all``, ``db upgrade``) prints nothing.
QUIET_MISSING = 10.0
#: The prefix of ``application_name`` of the listener connections.
APPLICATION_NAME = "sessionext-broadcast"

#: Tells this process's publications apart; new in each child.
_origin = uuid.uuid4().hex
#: When this process was forked (naive UTC); ``None`` in the first process.
_forked_at: datetime | None = None
#: The listener runs started in this process (see the module's docstring).
_running: weakref.WeakSet[_Run] = weakref.WeakSet()
#: Connections inherited from the parent: kept, never closed (see module doc).
_inherited: list[object] = []
#: The runs whose gate the forking thread holds, between two fork hooks.
_held: list[_Run] = []
#: How long a fork waits for the listener threads to reach a wait, seconds.
FORK_WAIT = 5.0


def origin() -> str:
    """The id of this process in the payloads it publishes."""
    return _origin


def _after_fork_in_child() -> None:
    """In a forked child: a new origin, and the parent's listener sockets
    pointed at ``/dev/null`` and kept, before any inherited greenlet can run.
    """
    global _origin, _forked_at
    _origin = uuid.uuid4().hex
    _forked_at = utcnow()
    _held.clear()  # copies of the parent's gates, which no thread here uses
    for run in list(_running):
        if run.greenlet is not None:
            # Thrown in when the child's hub first runs, before the greenlet
            # could resume any wait on a socket it shares with the parent.
            run.greenlet.kill(block=False)
        if run.connection is not None:
            _detach(run.connection)
            _inherited.append(run.connection)
    _running.clear()


def _stop_all() -> None:
    """At interpreter exit: stop this process's listeners, closing their
    connections.
    """
    runs = [run for run in list(_running) if run.pid == os.getpid()]
    for run in runs:
        run.stop.set()
        run.wake()
    for run in runs:
        thread = run.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=WAIT + 1)


def _before_fork() -> None:
    """Before a fork: wait, :data:`FORK_WAIT` seconds at most, until each
    listener thread of this process waits for something, and keep it
    waiting until the fork is done. A thread of the parent's caught inside
    libpq or OpenSSL by the fork would leave their locks held for good in the
    child, whose first connection would then hang.
    """
    if _threading_patched():
        return  # greenlets: the forking one is the only one running
    me = threading.current_thread()
    for run in list(_running):
        thread = run.thread
        if (
            run.pid == os.getpid()
            and thread is not None
            and thread is not me
            and thread.is_alive()
            and run.gate.acquire(timeout=FORK_WAIT)
        ):
            _held.append(run)


def _after_fork_in_parent() -> None:
    """After a fork, in the parent: let the listener threads go on."""
    while _held:
        _held.pop().gate.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
atexit.register(_stop_all)


class _Run:
    """One start of a listener, in the process that started it."""

    __slots__ = (
        "__weakref__",
        "connection",
        "gate",
        "greenlet",
        "pid",
        "stop",
        "thread",
        "wake_read",
        "wake_write",
    )

    def __init__(self) -> None:
        #: The process that started it.
        self.pid = os.getpid()
        self.stop = threading.Event()
        #: The DBAPI connection it reads with, while there is one.
        self.connection: t.Any = None
        self.thread: threading.Thread | None = None
        #: The gevent greenlet of its thread, when gevent patched threading.
        self.greenlet: t.Any = None
        #: Held by its thread except while it waits (see :func:`_before_fork`).
        self.gate = threading.Lock()
        #: Its wake-up pipe: closed once the run is collected, so that a
        #: publisher holding the run never writes to a reused descriptor.
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        weakref.finalize(self, _close, self.wake_read, self.wake_write)

    def current(self) -> bool:
        """Whether its loop goes on: not stopped, and in its own process."""
        return not self.stop.is_set() and self.pid == os.getpid()

    def wake(self) -> None:
        """Wake its loop up, without waiting."""
        with contextlib.suppress(OSError):  # full: it is awake already
            os.write(self.wake_write, b"!")

    @contextlib.contextmanager
    def waiting(self) -> t.Iterator[None]:
        """Around a wait of its thread: a fork may happen meanwhile."""
        self.gate.release()
        try:
            yield
        finally:
            self.gate.acquire()

    def woken(self) -> bool:
        """Whether it was woken up since the last call."""
        try:
            return bool(os.read(self.wake_read, 4096))
        except OSError:
            return False


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class OutboxListener:
    """The thread that delivers the publications of one database to one app
    in one process.
    """

    def __init__(
        self, app: Flask, engine: sa.Engine, settings: BroadcastSettings
    ) -> None:
        self.engine = engine
        self.label = mask_url(engine.url)
        self.channel = settings.channel
        self.poll_interval = settings.poll_interval
        dialect = engine.dialect
        #: Whether it ``LISTEN``\\s (PostgreSQL with psycopg) or polls.
        self.listens = dialect.name == "postgresql" and dialect.driver == "psycopg"
        reader = PgReader if dialect.name == "postgresql" else SqliteReader
        #: Where it is in the outbox; it delivers what was published from
        #: the moment it was created on.
        self.reader: Reader = reader(settings.channel, settings.keep, utcnow())
        #: The app it delivers to, held weakly: it stops once the app is gone.
        self.app = weakref.ref(app)
        #: The process it belongs to.
        self.pid = os.getpid()
        #: How many publications it delivered, and how many losses it told.
        self.delivered = 0
        self.losses = 0
        #: Set while it is connected and up to date.
        self.connected = threading.Event()
        self._run_state: _Run | None = None
        self._backoff = MIN_BACKOFF
        self._missing_since: float | None = None
        self._models: dict[tuple[str, str], type] = {}

    def inherit(self, parent: OutboxListener) -> None:
        """Go on from where ``parent``, the listener of the process this one
        was forked from, was at the fork; from the fork, when it had not
        started reading.
        """
        if parent.reader.position is not None:
            # Immutable values: the copy goes on alone.
            self.reader = copy.copy(parent.reader)
        else:
            since = parent.reader.since or utcnow()
            self.reader.since = max(since, _forked_at) if _forked_at else since

    @property
    def connection(self) -> t.Any:
        """The DBAPI connection it reads with, while there is one."""
        run = self._run_state
        return None if run is None else run.connection

    def start(self) -> None:
        """Start the thread (once)."""
        if self._run_state is not None:
            return
        run = self._run_state = _Run()
        run.thread = threading.Thread(
            target=self._run,
            args=(run,),
            name=f"{APPLICATION_NAME} {self.label}",
            daemon=True,
        )
        _running.add(run)
        run.thread.start()

    def wake(self) -> None:
        """Read the outbox now: this process published."""
        run = self._run_state
        if run is not None and run.current():
            run.wake()

    def stop(self, *, join: bool) -> None:
        """Stop the thread; with ``join``, wait a little for it to close its
        connection.
        """
        run = self._run_state
        if run is None:
            return
        run.stop.set()
        run.wake()
        thread = run.thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=WAIT + 1)

    def _live(self, run: _Run) -> bool:
        """Whether ``run`` goes on: it is current and the app is alive."""
        return run.current() and self.app() is not None

    def _run(self, run: _Run) -> None:
        run.greenlet = _gevent_greenlet()
        run.gate.acquire()
        try:
            while self._live(run):
                try:
                    self._read_until_stopped(run)
                except Exception as e:
                    if not run.current():
                        break
                    self.connected.clear()
                    self._report(e)
                    with run.waiting():
                        run.stop.wait(self._backoff)
                    self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        finally:
            run.gate.release()
            if run.pid == os.getpid():
                self.connected.clear()
                _running.discard(run)
                logger.debug("Broadcast listener of %s stopped.", self.label)

    def _report(self, error: Exception) -> None:
        if isinstance(error, RuntimeError) and "outbox" in str(error):
            now = time.monotonic()
            if self._missing_since is None:
                self._missing_since = now
            quiet = now - self._missing_since < QUIET_MISSING
            logger.log(
                logging.DEBUG if quiet else logging.WARNING,
                "%s Retrying in %.2f s.",
                error,
                self._backoff,
            )
            return
        logger.warning(
            "Broadcast listener of %s (channel %r) lost its connection: %s: %s"
            " Reconnecting in %.2f s.",
            self.label,
            self.channel,
            type(error).__name__,
            hide_passwords(" ".join(str(error).split())),
            self._backoff,
        )

    def _read_until_stopped(self, run: _Run) -> None:
        """Connect, then tick and read at each wake-up, until stopped."""
        db = self._connect(run)
        try:
            if db is None or not run.current():  # e.g. a greenlet of the parent's
                return
            if self.listens:
                db.run(f'LISTEN "{self.channel}"')
            tick = True
            while self._live(run):
                try:
                    if tick:
                        self.reader.tick(db)
                    self.reader.read(db, self._deliver, self._lost, run.current)
                except Exception as e:
                    if is_missing_table(e):
                        raise missing_table(self.engine.url) from e
                    raise
                if not self.connected.is_set():
                    self._backoff = MIN_BACKOFF
                    self._missing_since = None
                    logger.debug(
                        "Broadcast listener of %s (channel %r) is up to date.",
                        self.label,
                        self.channel,
                    )
                    self.connected.set()
                tick = self._wait(run, db)
                if tick:
                    # Commits in a row wake it up once each: one tick and
                    # read every TICK_EVERY seconds serves them all.
                    with run.waiting():
                        run.stop.wait(TICK_EVERY)
        finally:
            if run.pid == os.getpid():
                connection, run.connection = run.connection, None
                if connection is not None:
                    connection.close()

    def _connect(self, run: _Run) -> Database | None:
        """A connection of the pool's making, detached from it, in autocommit
        mode; ``None`` when ``run`` is no longer current.

        It comes from a copy of the bind's pool (``Pool.recreate()``: the
        same creator, options and event listeners), so the listener never
        waits for a slot of the app's pool.
        """
        logger.debug("Broadcast listener connecting to %s.", self.label)
        pool = self.engine.pool.recreate()
        connection = pool.connect()
        # Known to the fork hook at once: a child points it at /dev/null.
        run.connection = connection
        try:
            # After each wait: a greenlet of the parent's, resumed in a
            # child (under gevent), leaves the connection alone.
            if not run.current():
                return None
            connection.detach()
            pool.dispose()
            dbapi_connection = connection.dbapi_connection
            assert dbapi_connection is not None, "just connected"
            dbapi_connection.rollback()
            if not run.current():
                return None
            dialect = self.engine.dialect
            dialect.set_isolation_level(dbapi_connection, "AUTOCOMMIT")
            db = Database(dbapi_connection, dialect)
            if dialect.name == "postgresql":
                db.run(f"SET application_name = '{APPLICATION_NAME}-{os.getpid()}'")
        except BaseException:
            if run.pid == os.getpid():
                run.connection = None
                connection.close()
            raise
        return db

    def _wait(self, run: _Run, db: Database) -> bool:
        """Wait for a wake-up; whether to tick (woken by this process, or
        the time is up) rather than only read (another process ticked).
        """
        timeout = WAIT if self.listens else self.poll_interval
        fds = [run.wake_read]
        if self.listens:
            fds.append(db.dbapi_connection.fileno())
        with run.waiting():
            ready = _wait_readable(fds, timeout)
        if not run.current():  # e.g. a greenlet of the parent's
            return False
        if self.listens:
            # What arrived, without waiting: the wait above is the one that
            # gevent can switch in, whenever it patched ``select``.
            for _ in db.dbapi_connection.notifies(timeout=0):
                pass
        return run.woken() or not ready

    def _lost(self, reason: str) -> None:
        """Tell the app that publications it should get are gone."""
        self.losses += 1
        logger.warning(
            "Broadcast listener of %s (channel %r) cannot deliver every"
            " publication (%s); publications_lost is sent.",
            self.label,
            self.channel,
            reason,
        )
        app = self.app()
        if app is not None:
            call_in_app_context(
                app, lambda: report(publications_lost, app, reason=reason)
            )

    def _deliver(self, sequence: int, payload: str) -> None:
        """Send one publication to the app, if it still receives."""
        try:
            sender, summaries = decode(payload)
        except ValueError as e:
            logger.error("Skipped outbox row %d of %s: %s", sequence, self.label, e)
            self._lost(UNREADABLE)
            return
        self.delivered += 1
        app = self.app()
        if app is None or not any(models_committed_anywhere.receivers_for(app)):
            return
        changes = []
        for entity, table, pk, operation, columns, previous in summaries:
            model = self._model(entity, table)
            changes.append(
                CommittedChange(
                    model=model,
                    table=table,
                    primary_key=typed_key(model, pk),
                    operation=t.cast(Operation, operation),
                    columns=columns,
                    previous_primary_key=(
                        None if previous is None else typed_key(model, previous)
                    ),
                )
            )
        call_in_app_context(
            app,
            lambda: report(
                models_committed_anywhere,
                app,
                changes=changes,
                local=sender == _origin,
                sequence=sequence,
            ),
        )

    def _model(self, entity: str, table: str) -> type | None:
        """The class this process maps as ``entity`` on ``table``; else the
        one class it maps on ``table`` (a module may have another name in
        another program, e.g. ``__main__``); else ``None``.
        """
        key = (entity, table)
        if key not in self._models:
            by_name: dict[str, type] = {}
            by_table: dict[str, list[type]] = {}
            for registry in all_registries():
                for mapper in registry.mappers:
                    name = getattr(mapper.local_table, "name", None)
                    if isinstance(name, str):
                        by_name[entity_name(mapper.class_)] = mapper.class_
                        by_table.setdefault(name, []).append(mapper.class_)
            cls = by_name.get(entity)
            same_table = by_table.get(table, [])
            if cls is None or cls not in same_table:
                cls = same_table[0] if len(same_table) == 1 else None
            if cls is None:
                return None  # looked up again next time: it may be mapped later
            self._models[key] = cls
        return self._models[key]


def _detach(connection: t.Any) -> None:
    """Point the socket descriptor of an inherited connection at
    ``/dev/null``: whatever this process's copy of it sends (libpq's
    ``Terminate`` when it is garbage-collected or closed) goes nowhere, and the
    parent's socket is left alone.
    """
    try:
        fd = connection.fileno()
        devnull = os.open(os.devnull, os.O_RDWR)
    except Exception:
        return
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _wait_readable(fds: list[int], timeout: float) -> bool:
    """Wait until one of ``fds`` is readable, for up to ``timeout`` seconds,
    with :func:`select.poll` as it is at the call: once gevent has patched
    it, the wait lets the other greenlets run, even where psycopg was
    imported before the patch (and so waits without switching). Whether one
    is readable.
    """
    if not hasattr(select, "poll"):  # Windows
        return bool(select.select(fds, [], [], timeout)[0])
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def _threading_patched() -> bool:
    """Whether gevent patched ``threading``: threads are greenlets."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def _gevent_greenlet() -> t.Any:
    """The gevent greenlet that runs this thread, once gevent has patched
    ``threading``: unlike a thread, it survives a fork.
    """
    if not _threading_patched():
        return None
    current = sys.modules["gevent"].getcurrent()
    return current if hasattr(current, "kill") else None
