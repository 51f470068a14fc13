"""Tests that may commit, and leave nothing behind: a pytest plugin, the same
as a context manager, and a helper that records what a signal sends.

The package registers this module as the ``sessionext`` pytest plugin
through the ``pytest11`` entry point. It defines the
:func:`sessionext_rollback` fixture and nothing else: no autouse fixture, no
option, no hook, so it changes nothing in a test session that does not use
the fixture.
"""

from __future__ import annotations

import itertools
import typing as t
import warnings
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import blinker
import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask
from flask.sansio.app import App

from ._sqlalchemy_private import JoinedConnection, JoinedEngine

if t.TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["capture_signal", "rollback", "sessionext_rollback"]

_UNCOVERED = (
    "A session created, or an Engine object obtained, before the rollback block"
    " was used in it: its work is not rolled back with the block. Create sessions"
    " and get engines ('db.engine', 'db.get_engine()') inside the block."
)


class _Block:
    """What one :func:`rollback` block must close at its end, and the names
    of its SAVEPOINTs.
    """

    def __init__(self) -> None:
        self.sessions: weakref.WeakSet[orm.Session] = weakref.WeakSet()
        self.connections: weakref.WeakSet[sa.Connection] = weakref.WeakSet()
        self.savepoints = itertools.count(1)

    def track(
        self, session: orm.Session, transaction: t.Any, connection: sa.Connection
    ) -> None:
        """``after_begin`` handler: remember each session that began a
        transaction during the block, and warn about one that was created
        before it, whose rollback would roll back the outer transaction.
        """
        self.sessions.add(session)
        if isinstance(connection, _OuterConnection) and (
            session.join_transaction_mode != "create_savepoint"
        ):
            warnings.warn(_UNCOVERED, stacklevel=2)

    def attached(self, session: orm.Session, instance: object) -> None:
        """``before_attach`` handler: remember each session that got an
        object during the block, also one that never began a transaction
        (only ``add()`` calls): left open, a teardown commit after the block
        would flush its objects into the closed connection.
        """
        self.sessions.add(session)

    def close(self) -> None:
        """Close what the code under test left open; its work is rolled back
        with the outer transactions right after.
        """
        closeables: list[orm.Session | sa.Connection] = [
            *self.sessions,
            *self.connections,
        ]
        with ExitStack() as stack:
            for closeable in closeables:
                stack.callback(closeable.close)


class _OuterConnection(sa.Connection):
    """The connection of a block's outer transaction on one bind."""

    def commit(self) -> None:
        """Refuse, and leave the transaction as it is: committing it would
        keep everything the test did so far.
        """
        raise RuntimeError(
            "The outer transaction of flask_sessionext.testing.rollback() cannot"
            " be committed. Commit the session, or a connection of 'db.engine',"
            " instead of the connection that 'db.session.connection()' returns."
        )


def _get_state(app: Flask) -> Runtime:
    state: Runtime | None = app.extensions.get("sessionext")
    if state is None:
        raise RuntimeError(
            f"The Flask app {app.name!r} has no SessionExt. Call"
            " 'db.init_app(app)' before running tests in a rollback block."
        )
    return state


def _warn_uncovered(conn: sa.Connection) -> None:
    """``engine_connect`` handler of the app's own engines during a block."""
    if not isinstance(conn, (_OuterConnection, JoinedConnection)):
        warnings.warn(_UNCOVERED, stacklevel=2)


@contextmanager
def rollback(app: Flask) -> Iterator[Flask]:
    """Run the block in one outer transaction per bind of ``app``, and roll
    them all back at its end, also when it raises. The code in the block may
    commit, nest SAVEPOINTs and use :meth:`~SessionExt.session_scope`: its
    work is seen inside the block and gone after it. Pushes no application
    context; yields ``app``.

    How the block covers the app's database work:

    -   Each engine of the app opens one connection and begins the outer
        transaction on it. Its ``commit()`` raises ``RuntimeError``.
    -   Sessions created in the block (:attr:`~SessionExt.session`,
        :meth:`~SessionExt.session_scope`, the app's ``sessionmaker``) are
        bound to those connections with
        ``join_transaction_mode="create_savepoint"``: a session's
        transaction is a SAVEPOINT, its commit releases it, its rollback
        rolls back to it. Session events, and the signals built on them,
        fire as in production. Every session that began a transaction or
        got an object in the block is closed at its end, so its pending
        objects are gone too (an app or request context that outlives the
        block, as pytest-flask's does, commits nothing of them at teardown).
        In the block, ``session.bind`` is the outer connection.
    -   :attr:`~SessionExt.engine`, :attr:`~SessionExt.engines` and
        :meth:`~SessionExt.get_engine` return stand-ins for the app's
        engines, sharing their pool, dialect and event listeners, whose
        ``connect()`` and ``begin()`` give connections on the outer
        connection, with SAVEPOINTs for transactions; so do the engines that
        their ``execution_options()`` makes. Connections left open are
        closed at the end.

    Not covered, and warned about: ``Engine`` objects obtained before the
    block (they are the app's own engines, whose connections are real) and
    sessions created before the block. Not covered: ``raw_connection()``,
    other processes.
    All work shares one connection per bind, so it runs in one thread at a
    time and its transactions must nest: a transaction that begins after
    another ends before it (as a ``session_scope()`` inside a request does).
    Changing the isolation level (``AUTOCOMMIT`` included) is not supported.

    :param app: a Flask app that has a :class:`SessionExt`.
    :raise RuntimeError: ``app`` has no :class:`SessionExt`, or a block is
        already running on it.
    """
    state = _get_state(app)
    state.check_not_joined()  # before this block takes the pools' connections
    block = _Block()
    outers: dict[str | None, sa.Connection] = {}
    engines: dict[str | None, sa.Engine] = {}
    with ExitStack() as stack:
        for key, engine in state.engines.items():
            outer = stack.enter_context(_OuterConnection(engine))  # rolls back on close
            outer.begin()
            outers[key] = outer
            engines[key] = JoinedEngine(engine, {}, (outer, block))
        stack.enter_context(state.join_transactions(outers, engines))
        listeners: list[tuple[t.Any, str, t.Callable[..., None]]] = [
            (state.session_class, "after_begin", block.track),
            (state.session_class, "before_attach", block.attached),
        ]
        listeners += [
            (engine, "engine_connect", _warn_uncovered)
            for engine in state.engines.values()
        ]
        for target, identifier, handler in listeners:
            state.listeners.add(target, identifier, handler)
            stack.callback(state.listeners.remove, target, identifier, handler)
        stack.callback(block.close)
        # Exits first: the block's async sessions close on their connections.
        stack.enter_context(state.join_async())
        yield app


def sessionext_rollback(app: Flask) -> Iterator[Flask]:
    """Run the test in :func:`rollback` on the app of the ``app`` fixture
    (the pytest-flask convention), so everything it commits is rolled
    back at its end, whether it passed, failed or raised. Yields the app.

    Use it in a test, or in an autouse fixture of ``conftest.py``::

        @pytest.fixture(autouse=True)
        def _rollback(sessionext_rollback):
            pass  # every test runs in transactions that are rolled back

    :param app: the ``app`` fixture of the test session.
    """
    with rollback(app):
        yield app


# The module serves unittest and scripts too, which may run without pytest
# installed (and so do Sphinx and ``from flask_sessionext.testing import *``):
# the fixture is a plain generator function there.
try:
    import pytest
except ImportError:
    pass
else:
    sessionext_rollback = pytest.fixture(sessionext_rollback)


@contextmanager
def capture_signal(
    signal: blinker.Signal, app: App | None = None
) -> Iterator[list[tuple[t.Any, dict[str, t.Any]]]]:
    """Record what ``signal`` sends during the block: yields a list that gets
    ``(sender, kwargs)`` for each send, in order. The receiver is connected
    for the block only, and strongly referenced.

    ::

        with capture_signal(signals.models_committed, app) as sent:
            client.post("/users/ada")
        [(sender, kwargs)] = sent

    :param signal: any Blinker signal, of this package, of Flask or your own.
    :param app: record only what this app sends; by default every sender.
    """
    sent: list[tuple[t.Any, dict[str, t.Any]]] = []

    def receiver(sender: t.Any, /, **kwargs: t.Any) -> None:
        sent.append((sender, kwargs))

    with signal.connected_to(receiver, sender=blinker.ANY if app is None else app):
        yield sent
