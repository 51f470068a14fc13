"""The receiving side of ``SESSIONEXT_BROADCAST``: a listener thread per app
that receives ``models_committed_anywhere``, and per process.

On PostgreSQL with psycopg the thread holds a connection of its own, outside
every pool, that ``LISTEN``\\s on the channel; elsewhere it polls the outbox
every ``poll_interval`` seconds. At each wake-up (a notification, or at the
latest every :data:`WAIT` seconds) it reads the outbox rows after the last
one it delivered, in id order, and sends each to the app. Publishing
transactions commit in id order (see :mod:`._broadcast`), so no row can
appear behind the last one read: the thread never skips one, and, keeping
that last id across reconnections, never delivers one twice.

The listener belongs to the app's :class:`~._broadcast.Broadcast`, on its
runtime. Each start of it is a :class:`_Run` of one process: its loop goes
on only while the run is current (not stopped, and in the process that
started it). A forked child gets no thread of its parent's, but under gevent
it gets its parent's greenlet, which would go on in the child: at its next
check it finds itself in another process and leaves, delivering nothing and
closing nothing. The child starts a listener of its own when it needs one.

What is kept for the whole process, and why: the process is the scope of
these, and nothing else of the package is kept outside the runtimes.

- :data:`_origin`, the id of the process in the payloads it publishes: new
  in each child.
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
import logging
import os
import select
import sys
import threading
import typing as t
import uuid
import weakref
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.pool import NullPool

from .._config.passwords import hide_passwords, mask_url
from .._config.settings import BroadcastSettings
from .._sqlalchemy_private import all_registries
from ..signals import models_committed_anywhere
from .base import report
from .outbox import (
    OUTBOX,
    CommittedChange,
    EnumName,
    Operation,
    decode,
    entity_name,
    is_missing_table,
    missing_table,
    outbox_table,
)

#: Where the listeners log their connections and errors; receivers' errors
#: go to their app's logger.
logger = logging.getLogger("flask_sessionext.broadcast")

#: The longest wait between two reads of the outbox on PostgreSQL, seconds.
WAIT = 1.0
#: The first and the longest wait before reconnecting, seconds.
MIN_BACKOFF = 0.05
MAX_BACKOFF = 2.0
#: Rows read per query.
BATCH = 500
#: The prefix of ``application_name`` of the listener connections.
APPLICATION_NAME = "sessionext-broadcast"

#: Tells this process's publications apart; new in each child.
_origin = uuid.uuid4().hex
#: The listener runs started in this process (see the module's docstring).
_running: weakref.WeakSet[_Run] = weakref.WeakSet()
#: Connections inherited from the parent: kept, never closed (see module doc).
_inherited: list[object] = []

#: Reads the outbox: the last id (``after`` is ``None``), the rows of ``ids``,
#: or the rows after ``after``, in id order.
Fetch = Callable[[int | None, Sequence[int]], Sequence[t.Any]]


def origin() -> str:
    """The id of this process in the payloads it publishes."""
    return _origin


def _after_fork_in_child() -> None:
    """In a forked child: a new origin, and the parent's listener sockets
    pointed at ``/dev/null`` and kept, before any inherited greenlet can run.
    """
    global _origin
    _origin = uuid.uuid4().hex
    for run in list(_running):
        if run.greenlet is not None:
            # Thrown in when the child's hub first runs, before the greenlet
            # could resume any wait on a socket it shares with the parent.
            run.greenlet.kill(block=False)
        if run.connection is not None:
            _detach(run.connection)
            _inherited.append(run.connection)
        if run.poll_engine is not None:
            _inherited.append(run.poll_engine)
    _running.clear()


def _stop_all() -> None:
    """At interpreter exit: stop this process's listeners, closing their
    connections.
    """
    runs = [run for run in list(_running) if run.pid == os.getpid()]
    for run in runs:
        run.stop.set()
    for run in runs:
        thread = run.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=WAIT + 1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_all)


class _Run:
    """One start of a listener, in the process that started it."""

    __slots__ = (
        "__weakref__",
        "connection",
        "greenlet",
        "pid",
        "poll_engine",
        "stop",
        "thread",
    )

    def __init__(self) -> None:
        #: The process that started it.
        self.pid = os.getpid()
        self.stop = threading.Event()
        #: The connection of the ``LISTEN``, while there is one.
        self.connection: t.Any = None
        #: The engine it polls with, where it polls.
        self.poll_engine: sa.Engine | None = None
        self.thread: threading.Thread | None = None
        #: The gevent greenlet of its thread, when gevent patched threading.
        self.greenlet: t.Any = None

    def current(self) -> bool:
        """Whether its loop goes on: not stopped, and in its own process."""
        return not self.stop.is_set() and self.pid == os.getpid()


class OutboxListener:
    """The thread that delivers the publications of one database to one app
    in one process.
    """

    def __init__(
        self, app: Flask, engine: sa.Engine, settings: BroadcastSettings
    ) -> None:
        self.url = engine.url
        self.label = mask_url(engine.url)
        self.channel = settings.channel
        self.poll_interval = settings.poll_interval
        self._connect_args = dict(settings.connect_args)
        dialect = engine.dialect
        #: Whether it ``LISTEN``\\s (PostgreSQL with psycopg) or polls.
        self.listens = dialect.name == "postgresql" and dialect.driver == "psycopg"
        self._engine = engine
        #: The app it delivers to, held weakly: it stops once the app is gone.
        self.app = weakref.ref(app)
        #: The process it belongs to.
        self.pid = os.getpid()
        #: The id of the last row delivered; ``None`` until the first start.
        self.last_seen: int | None = None
        #: How many publications it delivered.
        self.delivered = 0
        #: Set while it is connected and up to date.
        self.connected = threading.Event()
        self._run_state: _Run | None = None
        self._backoff = MIN_BACKOFF
        self._models: dict[tuple[str, str], type] = {}
        #: This process's publications made before :attr:`last_seen` was
        #: read (see :meth:`published`).
        self._early: list[int] = []

    @property
    def connection(self) -> t.Any:
        """The connection of the ``LISTEN``, while there is one."""
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

    def stop(self, *, join: bool) -> None:
        """Stop the thread; with ``join``, wait a little for it to close its
        connection.
        """
        run = self._run_state
        if run is None:
            return
        run.stop.set()
        thread = run.thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=WAIT + 1)

    def _live(self, run: _Run) -> bool:
        """Whether ``run`` goes on: it is current and the app is alive."""
        return run.current() and self.app() is not None

    def _run(self, run: _Run) -> None:
        run.greenlet = _gevent_greenlet()
        try:
            while self._live(run):
                try:
                    if self.listens:
                        self._listen(run)
                    else:
                        self._poll(run)
                except Exception as e:
                    if not run.current():
                        break
                    self.connected.clear()
                    self._report(e)
                    run.stop.wait(self._backoff)
                    self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        finally:
            if run.pid == os.getpid():
                self.connected.clear()
                _running.discard(run)
                logger.debug("Broadcast listener of %s stopped.", self.label)

    def _report(self, error: Exception) -> None:
        if isinstance(error, RuntimeError) and OUTBOX in str(error):
            logger.error("%s Retrying in %.2f s.", error, self._backoff)
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

    def _listen(self, run: _Run) -> None:
        """``LISTEN`` on a connection of its own, and read the outbox at each
        notification, or every :data:`WAIT` seconds, until stopped.
        """
        connection = run.connection = self._connect()
        try:
            if not run.current():  # e.g. a greenlet of the parent's
                return
            channel = self.channel
            connection.execute(f'LISTEN "{channel}"')

            def fetch(after: int | None, ids: Sequence[int] = ()) -> Sequence[t.Any]:
                if ids:
                    sql = (
                        f"SELECT id, payload FROM {OUTBOX} WHERE id = ANY(%s)"
                        " ORDER BY id"
                    )
                    return connection.execute(sql, (list(ids),)).fetchall()  # type: ignore[no-any-return]
                if after is None:
                    sql = (
                        f"SELECT coalesce(max(id), 0) FROM {OUTBOX} WHERE channel = %s"
                    )
                    return connection.execute(sql, (channel,)).fetchall()  # type: ignore[no-any-return]
                sql = (
                    f"SELECT id, payload FROM {OUTBOX} WHERE channel = %s AND id > %s"
                    f" ORDER BY id LIMIT {BATCH}"
                )
                return connection.execute(sql, (channel, after)).fetchall()  # type: ignore[no-any-return]

            self._catch_up(run, fetch)
            while self._live(run):
                _wait_readable(connection.fileno(), WAIT)
                if not run.current():  # e.g. a greenlet of the parent's
                    return
                # What arrived, without waiting: the wait above is the one
                # that gevent can switch in, whenever it patched ``select``.
                for _ in connection.notifies(timeout=0):
                    pass
                self._catch_up(run, fetch)
        finally:
            if run.pid == os.getpid():
                run.connection = None
                connection.close()

    def _connect(self) -> t.Any:
        """A new autocommit DBAPI connection, outside the engine's pool."""
        dialect = self._engine.dialect
        cargs, cparams = dialect.create_connect_args(self.url)
        params = {**cparams, **self._connect_args}
        params.setdefault("connect_timeout", 5)
        params.update(
            autocommit=True, application_name=f"{APPLICATION_NAME}-{os.getpid()}"
        )
        logger.debug("Broadcast listener connecting to %s.", self.label)
        return dialect.loaded_dbapi.connect(*cargs, **params)

    def _poll(self, run: _Run) -> None:
        """Read the outbox every ``poll_interval`` seconds, until stopped."""
        engine = run.poll_engine
        if engine is None:
            url = self.url
            memory = url.get_backend_name() == "sqlite" and url.database in (
                None,
                "",
                ":memory:",
            )
            # An in-memory database lives in the app's one connection.
            engine = (
                self._engine if memory else sa.create_engine(url, poolclass=NullPool)
            )
            run.poll_engine = engine
        while self._live(run):
            with engine.connect() as conn:

                def fetch(
                    after: int | None, ids: Sequence[int] = ()
                ) -> Sequence[t.Any]:
                    mine = outbox_table.c.channel == self.channel
                    if ids:
                        return conn.execute(
                            sa.select(outbox_table.c.id, outbox_table.c.payload)
                            .where(outbox_table.c.id.in_(ids))
                            .order_by(outbox_table.c.id)
                        ).all()
                    if after is None:
                        return conn.execute(
                            sa.select(
                                sa.func.coalesce(sa.func.max(outbox_table.c.id), 0)
                            ).where(mine)
                        ).all()
                    return conn.execute(
                        sa.select(outbox_table.c.id, outbox_table.c.payload)
                        .where(mine, outbox_table.c.id > after)
                        .order_by(outbox_table.c.id)
                        .limit(BATCH)
                    ).all()

                self._catch_up(run, fetch)
                conn.rollback()
            run.stop.wait(self.poll_interval)

    def published(self, sequence: int) -> None:
        """Note a publication of this process, before it commits: one made
        before the listener read where to start is delivered too.
        """
        if self.last_seen is None:
            self._early.append(sequence)

    def _catch_up(self, run: _Run, fetch: Fetch) -> None:
        """Deliver every row after :attr:`last_seen`, in id order; on the
        first start, only this process's publications since its first
        receiver connected, then those after the last id.
        """
        try:
            if self.last_seen is None:
                start = int(fetch(None, ())[0][0])
                # A publication up to ``start`` committed before that read,
                # so its publisher noted it before (no lock needed); one noted
                # later is after ``start``, and read below.
                early = sorted(i for i in self._early if i <= start)
                self.last_seen = start
                self._early = []
                for row_id, payload in fetch(None, early) if early else ():
                    if not run.current():
                        return
                    self._deliver(int(row_id), payload)
            if not self.connected.is_set():
                self._backoff = MIN_BACKOFF
                logger.debug(
                    "Broadcast listener of %s (channel %r) reads after %d.",
                    self.label,
                    self.channel,
                    self.last_seen,
                )
                self.connected.set()
            while run.current():
                rows = fetch(self.last_seen, ())
                for row_id, payload in rows:
                    if not run.current():
                        return
                    self.last_seen = int(row_id)
                    self._deliver(int(row_id), payload)
                if len(rows) < BATCH:
                    return
        except Exception as e:
            if is_missing_table(e):
                raise missing_table(self.url) from e
            raise

    def _deliver(self, sequence: int, payload: str) -> None:
        """Send one publication to the app, if it still receives."""
        try:
            sender, summaries = decode(payload)
        except ValueError as e:
            logger.error("Skipped outbox row %d of %s: %s", sequence, self.label, e)
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
                    primary_key=_typed_key(model, pk),
                    operation=t.cast(Operation, operation),
                    columns=columns,
                    previous_primary_key=(
                        None if previous is None else _typed_key(model, previous)
                    ),
                )
            )
        with app.app_context():
            report(
                models_committed_anywhere,
                app,
                changes=changes,
                local=sender == _origin,
                sequence=sequence,
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


def _typed_key(model: type | None, pk: tuple[t.Any, ...]) -> tuple[t.Any, ...]:
    """``pk`` with the names of Enum members replaced by the members of the
    Enum types of ``model``'s primary key columns; plain names where this
    process does not map the class or the member.
    """
    if not any(isinstance(value, EnumName) for value in pk):
        return pk
    columns: list[sa.Column[t.Any]] = (
        list(sa.inspect(model).primary_key) if model is not None else []
    )
    typed = []
    for i, value in enumerate(pk):
        if isinstance(value, EnumName):
            column_type = columns[i].type if i < len(columns) else None
            enum_class = getattr(column_type, "enum_class", None)
            members = getattr(enum_class, "__members__", {})
            value = members[value] if value in members else str(value)
        typed.append(value)
    return tuple(typed)


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


def _wait_readable(fd: int, timeout: float) -> None:
    """Wait until ``fd`` is readable, for up to ``timeout`` seconds, with
    :func:`select.poll` as it is at the call: once gevent has patched it, the
    wait lets the other greenlets run, even where psycopg was imported before
    the patch (and so waits without switching).
    """
    if not hasattr(select, "poll"):  # Windows
        select.select([fd], [], [], timeout)
        return
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(int(timeout * 1000))


def _gevent_greenlet() -> t.Any:
    """The gevent greenlet that runs this thread, once gevent has patched
    ``threading``: unlike a thread, it survives a fork.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return None
    current = sys.modules["gevent"].getcurrent()
    return current if hasattr(current, "kill") else None
