"""Blinker signals sent by the Flask app that owns a session or an engine.

Each bridged signal below is one line of the catalog: the SQLAlchemy event it
re-emits, under the same name, and whether a receiver's exception propagates
into SQLAlchemy (so a receiver can veto the action). Everything else, the
listeners, the docstrings, the documentation's table, the CLI and the tests, is
derived from :data:`CATALOG`.

Receive with the sender set to an app, as for Flask's own signals::

    @signals.before_flush.connect_via(app)
    def log_flush(app, session, flush_context, instances): ...
"""

from __future__ import annotations

import inspect
import typing as t
from dataclasses import dataclass

from blinker import NamedSignal, Namespace
from sqlalchemy.engine.events import ConnectionEvents, DialectEvents
from sqlalchemy.orm import SessionEvents
from sqlalchemy.pool.events import PoolEvents

__all__ = ["CATALOG", "EXTENSION_KWARGS", "BridgedEvent", "namespace"]

#: The namespace of every signal of this package.
namespace = Namespace()

Target = t.Literal["session", "engine", "pool", "dialect"]

_TARGETS: dict[type, Target] = {
    SessionEvents: "session",
    ConnectionEvents: "engine",
    PoolEvents: "pool",
    DialectEvents: "dialect",
}


@dataclass(frozen=True)
class BridgedEvent:
    """One entry of the catalog: a SQLAlchemy event and its signal."""

    #: The event's name, which is also the signal's name.
    name: str
    #: The SQLAlchemy events class that defines the event.
    events: type
    #: What the listener is installed on: the app's Session class
    #: (``"session"``) or each of its engines.
    target: Target
    #: Whether a receiver's exception propagates into SQLAlchemy.
    propagates: bool
    #: The listener's arguments, in SQLAlchemy's order.
    argnames: tuple[str, ...]
    #: The Blinker signal that re-emits the event.
    signal: NamedSignal

    @property
    def kwargs(self) -> tuple[str, ...]:
        """The keyword arguments receivers get: the listener's arguments, and
        ``bind_key`` for engine, pool and dialect events.
        """
        return (
            self.argnames if self.target == "session" else (*self.argnames, "bind_key")
        )

    @property
    def qualname(self) -> str:
        """The event's documented name, e.g. ``SessionEvents.before_flush``."""
        return f"{self.events.__name__}.{self.name}"


#: Every bridged event by name, in catalog order.
CATALOG: dict[str, BridgedEvent] = {}


def _bridged(events: type, name: str, *, propagates: bool) -> NamedSignal:
    argnames = tuple(inspect.signature(getattr(events, name)).parameters)[1:]
    target = _TARGETS[events]
    on = "the app's sessions" if target == "session" else "each engine of the app"
    policy = (
        "A receiver's exception propagates into SQLAlchemy and aborts the action."
        if propagates
        else "A receiver's exception is logged on ``app.logger`` and the other"
        " receivers still run (see ``SESSIONEXT_RAISE_RECEIVER_ERRORS``)."
    )
    signal = namespace.signal(name)
    entry = CATALOG[name] = BridgedEvent(
        name, events, target, propagates, argnames, signal
    )
    signal.__doc__ = (
        f"Re-emits SQLAlchemy's ``{entry.qualname}`` event of {on}."
        f" Sender: the Flask app. Keyword arguments: {', '.join(entry.kwargs)}."
        f" {policy}"
    )
    return signal


# Session events: the listener is on the app's Session class.
do_orm_execute = _bridged(SessionEvents, "do_orm_execute", propagates=True)
after_transaction_create = _bridged(
    SessionEvents, "after_transaction_create", propagates=False
)
after_transaction_end = _bridged(
    SessionEvents, "after_transaction_end", propagates=False
)
before_commit = _bridged(SessionEvents, "before_commit", propagates=True)
after_commit = _bridged(SessionEvents, "after_commit", propagates=False)
after_rollback = _bridged(SessionEvents, "after_rollback", propagates=False)
after_soft_rollback = _bridged(SessionEvents, "after_soft_rollback", propagates=False)
before_flush = _bridged(SessionEvents, "before_flush", propagates=True)
after_flush = _bridged(SessionEvents, "after_flush", propagates=False)
after_flush_postexec = _bridged(SessionEvents, "after_flush_postexec", propagates=False)
after_begin = _bridged(SessionEvents, "after_begin", propagates=False)
before_attach = _bridged(SessionEvents, "before_attach", propagates=True)
after_attach = _bridged(SessionEvents, "after_attach", propagates=False)
after_bulk_update = _bridged(SessionEvents, "after_bulk_update", propagates=False)
after_bulk_delete = _bridged(SessionEvents, "after_bulk_delete", propagates=False)
transient_to_pending = _bridged(SessionEvents, "transient_to_pending", propagates=False)
pending_to_transient = _bridged(SessionEvents, "pending_to_transient", propagates=False)
persistent_to_transient = _bridged(
    SessionEvents, "persistent_to_transient", propagates=False
)
pending_to_persistent = _bridged(
    SessionEvents, "pending_to_persistent", propagates=False
)
detached_to_persistent = _bridged(
    SessionEvents, "detached_to_persistent", propagates=False
)
loaded_as_persistent = _bridged(SessionEvents, "loaded_as_persistent", propagates=False)
persistent_to_deleted = _bridged(
    SessionEvents, "persistent_to_deleted", propagates=False
)
deleted_to_persistent = _bridged(
    SessionEvents, "deleted_to_persistent", propagates=False
)
deleted_to_detached = _bridged(SessionEvents, "deleted_to_detached", propagates=False)
persistent_to_detached = _bridged(
    SessionEvents, "persistent_to_detached", propagates=False
)

# Connection events: the listener is on each engine of the app.
before_execute = _bridged(ConnectionEvents, "before_execute", propagates=True)
after_execute = _bridged(ConnectionEvents, "after_execute", propagates=False)
before_cursor_execute = _bridged(
    ConnectionEvents, "before_cursor_execute", propagates=True
)
after_cursor_execute = _bridged(
    ConnectionEvents, "after_cursor_execute", propagates=False
)
engine_connect = _bridged(ConnectionEvents, "engine_connect", propagates=True)
set_connection_execution_options = _bridged(
    ConnectionEvents, "set_connection_execution_options", propagates=True
)
set_engine_execution_options = _bridged(
    ConnectionEvents, "set_engine_execution_options", propagates=True
)
engine_disposed = _bridged(ConnectionEvents, "engine_disposed", propagates=False)
begin = _bridged(ConnectionEvents, "begin", propagates=True)
rollback = _bridged(ConnectionEvents, "rollback", propagates=False)
commit = _bridged(ConnectionEvents, "commit", propagates=False)
savepoint = _bridged(ConnectionEvents, "savepoint", propagates=True)
rollback_savepoint = _bridged(ConnectionEvents, "rollback_savepoint", propagates=False)
release_savepoint = _bridged(ConnectionEvents, "release_savepoint", propagates=False)
begin_twophase = _bridged(ConnectionEvents, "begin_twophase", propagates=True)
prepare_twophase = _bridged(ConnectionEvents, "prepare_twophase", propagates=True)
rollback_twophase = _bridged(ConnectionEvents, "rollback_twophase", propagates=False)
commit_twophase = _bridged(ConnectionEvents, "commit_twophase", propagates=False)

# Pool events: the listener is on each engine's pool.
connect = _bridged(PoolEvents, "connect", propagates=True)
first_connect = _bridged(PoolEvents, "first_connect", propagates=True)
checkout = _bridged(PoolEvents, "checkout", propagates=True)
checkin = _bridged(PoolEvents, "checkin", propagates=False)
reset = _bridged(PoolEvents, "reset", propagates=False)
invalidate = _bridged(PoolEvents, "invalidate", propagates=False)
soft_invalidate = _bridged(PoolEvents, "soft_invalidate", propagates=False)
close = _bridged(PoolEvents, "close", propagates=False)
detach = _bridged(PoolEvents, "detach", propagates=False)
close_detached = _bridged(PoolEvents, "close_detached", propagates=False)

# Dialect events: the listener is on each engine's dialect.
do_connect = _bridged(DialectEvents, "do_connect", propagates=True)
handle_error = _bridged(DialectEvents, "handle_error", propagates=True)

# Signals of the extension itself.
session_created = namespace.signal(
    "session_created",
    "Sent when the scoped session creates a Session for an app context."
    " Sender: the Flask app. Keyword arguments: session.",
)
session_removed = namespace.signal(
    "session_removed",
    "Sent after the app context's Session was closed and removed at teardown."
    " Sender: the Flask app. Keyword arguments: session, exception (the"
    " exception that ended the context, or ``None``).",
)
before_models_committed = namespace.signal(
    "before_models_committed",
    "Sent before the outermost transaction of a session of the app commits,"
    " after its last flush. Sender: the Flask app. Keyword arguments: changes,"
    ' a list of (instance, "insert" | "update" | "delete"). A receiver that'
    " raises aborts the commit.",
)
models_committed = namespace.signal(
    "models_committed",
    "Sent after the outermost transaction of a session of the app committed."
    " Sender: the Flask app. Keyword arguments: changes, a list of"
    ' (instance, "insert" | "update" | "delete"). A receiver\'s exception is'
    " logged on ``app.logger`` and the other receivers still run.",
)
models_committed_anywhere = namespace.signal(
    "models_committed_anywhere",
    "Sent in every process that has ``SESSIONEXT_BROADCAST`` on for the same"
    " database, the committing one included, once per committed transaction of"
    " any of them that changed published models, in the same order in every"
    " process (transactions that changed the same row: in commit order), on a"
    " listener thread of the process inside an app context. Sender: the Flask"
    " app. Keyword arguments: changes, a list of"
    " :class:`~flask_sessionext.CommittedChange`; local, whether this process"
    " committed it; sequence, the publication's number (its outbox row id;"
    " not always increasing on PostgreSQL). A"
    " receiver's exception is logged on ``app.logger`` and the other receivers"
    " still run.",
)
publications_lost = namespace.signal(
    "publications_lost",
    "Sent in a process that receives ``models_committed_anywhere`` when its"
    " listener finds that publications it should deliver are gone: pruned"
    " while it was stopped or disconnected for longer than ``keep``, the outbox"
    " table created again, a listener that could not start within ``keep``, a"
    " row that does not decode. Once per incident, on the listener thread"
    " inside an app context, after a WARNING on the"
    " ``flask_sessionext.broadcast`` logger. Sender: the Flask app. Keyword"
    " arguments: reason, a short string. A receiver should drop whatever it"
    " keeps up to date from ``models_committed_anywhere`` (a cache: clear it)."
    " A receiver's exception is logged on ``app.logger`` and the other"
    " receivers still run.",
)
slow_query = namespace.signal(
    "slow_query",
    "Sent when a query took longer than ``SESSIONEXT_SLOW_QUERY_THRESHOLD``."
    " Sender: the Flask app. Keyword arguments: query, a"
    " :class:`~flask_sessionext.QueryRecord`. A receiver's exception is logged"
    " on ``app.logger`` and the other receivers still run.",
)

#: The keyword arguments each of the extension's own signals sends, by name;
#: a bridged signal's are :attr:`BridgedEvent.kwargs`.
EXTENSION_KWARGS: dict[str, tuple[str, ...]] = {
    "session_created": ("session",),
    "session_removed": ("session", "exception"),
    "before_models_committed": ("changes",),
    "models_committed": ("changes",),
    "models_committed_anywhere": ("changes", "local", "sequence"),
    "publications_lost": ("reason",),
    "slow_query": ("query",),
}
