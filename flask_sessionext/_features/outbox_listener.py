"""The receiving side of ``SESSIONEXT_BROADCAST``: one listener thread per
process and outbox database (and channel), shared by the apps of the process
that receive ``models_committed_anywhere``.

On PostgreSQL with psycopg the thread holds a connection of its own, outside
every pool, that ``LISTEN``\\s on the channel; elsewhere it polls the outbox
every ``poll_interval`` seconds. At each wake-up (a notification, or at the
latest every :data:`WAIT` seconds) it reads the outbox rows after the last
one it delivered, in id order, and sends each to the apps. Publishing
transactions commit in id order (see :mod:`._broadcast`), so no row can
appear behind the last one read: the thread never skips one, and, keeping
that last id across reconnections, never delivers one twice.

After a fork the child has no thread: each child starts its own when the app
next needs it, and never closes (so never terminates) the connection it
inherited from its parent.
"""

from __future__ import annotations

import atexit
import logging
import os
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

_lock = threading.Lock()
_listeners: dict[tuple[str, str], OutboxListener] = {}
#: Tells this process's publications apart; new in each child.
_origin = uuid.uuid4().hex
#: Connections inherited from the parent: kept, never closed (see module doc).
_inherited: list[object] = []
_hooked = False

#: Reads the outbox: the last id (``after`` is ``None``), the rows of ``ids``,
#: or the rows after ``after``, in id order.
Fetch = Callable[[int | None, Sequence[int]], Sequence[t.Any]]


def origin() -> str:
    """The id of this process in the payloads it publishes."""
    return _origin


def subscribe(app: Flask, engine: sa.Engine, settings: BroadcastSettings) -> None:
    """Deliver the publications of ``engine``'s database to ``app``, starting
    this process's listener of that database if it is not running.
    """
    key = (engine.url.render_as_string(hide_password=False), settings.channel)
    with _lock:
        _hook_process()
        listener = _listeners.get(key)
        if listener is None:
            listener = _listeners[key] = OutboxListener(engine, settings)
        listener.apps.add(app)
        listener.ensure_running()


def unsubscribe(app: Flask, engine: sa.Engine, settings: BroadcastSettings) -> None:
    """Undo :func:`subscribe`; the listener stops with its last app."""
    key = (engine.url.render_as_string(hide_password=False), settings.channel)
    with _lock:
        listener = _listeners.get(key)
        if listener is None:
            return
        listener.apps.discard(app)
        if not listener.apps:
            del _listeners[key]
            listener.stop(join=False)


def published(engine: sa.Engine, settings: BroadcastSettings, sequence: int) -> None:
    """Tell this process's listener of ``engine``'s database, if any, of a
    publication of this process (see :meth:`OutboxListener.published`).
    """
    key = (engine.url.render_as_string(hide_password=False), settings.channel)
    listener = _listeners.get(key)
    if listener is not None:
        listener.published(sequence)


def listener_of(
    engine: sa.Engine, settings: BroadcastSettings
) -> OutboxListener | None:
    """The listener of ``engine``'s database in this process, if any."""
    key = (engine.url.render_as_string(hide_password=False), settings.channel)
    with _lock:
        return _listeners.get(key)


def _hook_process() -> None:
    global _hooked
    if _hooked:
        return
    _hooked = True
    atexit.register(_stop_all)
    if hasattr(os, "register_at_fork"):
        # The lock is held across the fork, so that the child's copy is
        # not left locked by a thread that the child does not have.
        os.register_at_fork(
            before=_lock.acquire,
            after_in_parent=_lock.release,
            after_in_child=_after_fork_in_child,
        )


def _after_fork_in_child() -> None:
    global _lock, _origin
    _lock = threading.Lock()
    _origin = uuid.uuid4().hex
    for listener in _listeners.values():
        listener.forget_parent()


def _stop_all() -> None:
    """At interpreter exit: stop this process's listeners, closing their
    connections.
    """
    with _lock:
        listeners = list(_listeners.values())
    for listener in listeners:
        listener.stop(join=True)


class OutboxListener:
    """The thread that delivers the publications of one database to the
    apps of this process.
    """

    def __init__(self, engine: sa.Engine, settings: BroadcastSettings) -> None:
        self.url = engine.url
        self.label = mask_url(engine.url)
        self.channel = settings.channel
        self.poll_interval = settings.poll_interval
        self._connect_args = dict(settings.connect_args)
        dialect = engine.dialect
        #: Whether it ``LISTEN``\\s (PostgreSQL with psycopg) or polls.
        self.listens = dialect.name == "postgresql" and dialect.driver == "psycopg"
        self._engine = engine
        #: The apps it delivers to, held weakly.
        self.apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        #: The id of the last row delivered; ``None`` until the first start.
        self.last_seen: int | None = None
        #: How many publications it delivered, in this process.
        self.delivered = 0
        #: Set while it is connected and up to date.
        self.connected = threading.Event()
        #: The connection of the ``LISTEN``, while there is one.
        self.connection: t.Any = None
        self._poll_engine: sa.Engine | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._backoff = MIN_BACKOFF
        self._models: dict[tuple[str, str], type] = {}
        self._early: list[int] = []
        self._early_lock = threading.Lock()

    def ensure_running(self) -> None:
        """Start the thread unless it runs in this process."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"{APPLICATION_NAME} {self.label}", daemon=True
        )
        self._thread.start()

    def stop(self, *, join: bool) -> None:
        """Stop the thread; with ``join``, wait a little for it to close its
        connection.
        """
        self._stop.set()
        thread = self._thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=WAIT + 1)

    def forget_parent(self) -> None:
        """In a forked child: drop the parent's thread and keep, unused and
        open, the parent's connection, whose close would end the parent's
        session on the shared socket.
        """
        if self.connection is not None:
            _detach(self.connection)
            _inherited.append(self.connection)
        if self._poll_engine is not None:
            _inherited.append(self._poll_engine)
        self.connection = None
        self._poll_engine = None
        self._thread = None
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.last_seen = None
        self.delivered = 0
        self._early = []
        self._early_lock = threading.Lock()

    def _run(self) -> None:
        while not self._stop.is_set() and self._has_apps():
            try:
                if self.listens:
                    self._listen()
                else:
                    self._poll()
            except Exception as e:
                self.connected.clear()
                if self._stop.is_set():
                    break
                self._report(e)
                self._stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self.connected.clear()
        logger.debug("Broadcast listener of %s stopped.", self.label)

    def _has_apps(self) -> bool:
        """Whether an app of the listener is alive; it stops, and leaves the
        process's listeners, once they are all garbage-collected.
        """
        with _lock:  # so that no subscribe() picks it up meanwhile
            if self.apps:
                return True
            self._stop.set()
            for key, listener in list(_listeners.items()):
                if listener is self:
                    del _listeners[key]
        return False

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

    def _listen(self) -> None:
        """``LISTEN`` on a connection of its own, and read the outbox at each
        notification, or every :data:`WAIT` seconds, until stopped.
        """
        connection = self._connect()
        self.connection = connection
        try:
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

            self._catch_up(fetch)
            while not self._stop.is_set() and self._has_apps():
                for _ in connection.notifies(timeout=WAIT, stop_after=1):
                    pass
                self._catch_up(fetch)
        finally:
            self.connection = None
            if os.getpid() == self._pid:
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

    def _poll(self) -> None:
        """Read the outbox every ``poll_interval`` seconds, until stopped."""
        engine = self._poll_engine
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
            self._poll_engine = engine
        while not self._stop.is_set() and self._has_apps():
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

                self._catch_up(fetch)
                conn.rollback()
            self._stop.wait(self.poll_interval)

    def published(self, sequence: int) -> None:
        """Note a publication of this process, before it commits: one made
        before the listener read where to start is delivered too.
        """
        with self._early_lock:
            if self.last_seen is None:
                self._early.append(sequence)

    def _catch_up(self, fetch: Fetch) -> None:
        """Deliver every row after :attr:`last_seen`, in id order; on the
        first start, only this process's publications since its first
        receiver connected, then those after the last id.
        """
        try:
            if self.last_seen is None:
                start = int(fetch(None, ())[0][0])
                with self._early_lock:
                    early = sorted(i for i in self._early if i <= start)
                    self._early.clear()
                    self.last_seen = start
                for row_id, payload in fetch(None, early) if early else ():
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
            while not self._stop.is_set():
                rows = fetch(self.last_seen, ())
                for row_id, payload in rows:
                    if self._stop.is_set():
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
        """Send one publication to every app of the process that receives."""
        try:
            sender, summaries = decode(payload)
        except ValueError as e:
            logger.error("Skipped outbox row %d of %s: %s", sequence, self.label, e)
            return
        self.delivered += 1
        local = sender == _origin
        changes: list[CommittedChange] | None = None
        for app in list(self.apps):
            if next(models_committed_anywhere.receivers_for(app), None) is None:
                continue
            if changes is None:
                changes = [
                    CommittedChange(
                        model=self._model(entity, table),
                        table=table,
                        primary_key=pk,
                        operation=t.cast(Operation, operation),
                        columns=columns,
                    )
                    for entity, table, pk, operation, columns in summaries
                ]
            with app.app_context():
                report(
                    models_committed_anywhere,
                    app,
                    changes=list(changes),
                    local=local,
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
