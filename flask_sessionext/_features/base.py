"""The protocol that every feature implements, and what it gets of its app.

A feature is one capability built on SQLAlchemy's events: the signal bridge,
model changes, ``on_commit``, query recording, broadcast, the liveness check,
the SQLite transaction fix, the default ``synchronize_session``. The app's
:class:`~flask_sessionext._runtime.Runtime` makes one object of each feature
class that :meth:`Feature.wanted` the app's settings, and loops over them; it
knows none by name. The class attributes say what the feature costs, and the
documentation's features table is made from them.

Adding a built-in feature is one module here, with one :class:`Feature`
subclass, and one line in :data:`flask_sessionext._features.FEATURES`.
"""

from __future__ import annotations

import typing as t
import weakref
from collections.abc import Mapping, Sequence

# What features need to call user code: the one place that does it, as the
# features reach it (see :mod:`.._receivers.calls`).
from .._receivers.calls import (
    Resolved,
    collect_receiver_errors,
    reference,
    report,
    resolve,
    run,
    strong,
    veto,
)

__all__ = [
    "EVERY_OPERATION",
    "Feature",
    "Parts",
    "Resolved",
    "collect_receiver_errors",
    "reference",
    "report",
    "resolve",
    "run",
    "strong",
    "veto",
]

if t.TYPE_CHECKING:
    import sqlalchemy as sa
    from flask import Flask
    from sqlalchemy import orm

    from .._config.settings import Settings
    from .._engines.listeners import Handler, Listeners

_F = t.TypeVar("_F", bound="Feature")

#: ``raises_after`` of a feature whose receivers may raise during any
#: session operation.
EVERY_OPERATION: frozenset[str] = frozenset({"*"})


class Parts(t.Protocol):
    """What a feature gets of its app's runtime."""

    @property
    def app(self) -> weakref.ref[Flask]:
        """The app, held weakly: SQLAlchemy's listener registry is global."""

    @property
    def session_class(self) -> type[orm.Session]:
        """The app's own Session class, the target of session listeners."""

    @property
    def engines(self) -> Mapping[str | None, sa.Engine]:
        """The app's engines by bind key."""

    @property
    def listeners(self) -> Listeners:
        """Where features add and remove their SQLAlchemy listeners."""

    @property
    def settings(self) -> Settings:
        """The app's settings, read once in ``init_app``."""

    def refresh(self) -> None:
        """Bring every feature in line with the receivers again."""

    def feature(self, cls: type[_F]) -> _F:
        """The app's feature of class ``cls``, which another one relies on."""


class Feature:
    """One capability of the extension; subclasses override what they use.

    The order of the features in :data:`~flask_sessionext._features.FEATURES`
    is the order of their handlers of one event, whenever each was added
    (:meth:`listen`): a feature whose ``before_commit`` handler must see what
    the others' receivers changed (broadcast publishes the final changes)
    comes after them.
    """

    #: What the feature is, for people.
    name: t.ClassVar[str]
    #: The signals it sends; it is on while one of them has a receiver for
    #: the app (or, for the features with none, while its setting is on).
    sends: t.ClassVar[tuple[str, ...]] = ()
    #: The SQLAlchemy events it listens to while it is on.
    listens: t.ClassVar[tuple[str, ...]] = ()
    #: Whether its sends wait until the commit is complete (the end of the
    #: outermost transaction), whichever way the session commits.
    deferred: t.ClassVar[bool] = False
    #: The session operations after which an error of its receivers, raised
    #: during them, is raised (with ``SESSIONEXT_RAISE_RECEIVER_ERRORS``)
    #: while :meth:`may_raise`; :data:`EVERY_OPERATION` for all of them.
    raises_after: t.ClassVar[frozenset[str]] = frozenset()

    def __init__(self, parts: Parts, rank: int) -> None:
        self.parts = parts
        #: Its place in ``FEATURES``: the place of its handlers.
        self.rank = rank

    def listen(self, target: t.Any, event: str, handler: Handler) -> None:
        """Call ``handler`` when ``event`` fires on ``target``, in the order
        of the features.
        """
        self.parts.listeners.add(target, event, handler, rank=self.rank)

    def unlisten(self, target: t.Any, event: str, handler: Handler) -> None:
        """Undo :meth:`listen`."""
        self.parts.listeners.remove(target, event, handler)

    @classmethod
    def wanted(cls, settings: Settings) -> bool:
        """Whether an app with ``settings`` has this feature at all."""
        return True

    def start(self, app: Flask) -> None:
        """Install what the settings turn on, at the end of ``init_app``."""

    def add_engines(
        self, app: Flask, engines: Sequence[tuple[str | None, sa.Engine]]
    ) -> None:
        """Install on ``engines`` (the sync engines under the app's async
        engines, created at their first use, after :meth:`start`) what
        :meth:`start` and the receivers installed on the app's engines.
        """

    def refresh(self, app: Flask) -> None:
        """Bring the listeners in line with the receivers for ``app``, after
        a receiver of a signal connected or disconnected for it (or for
        every sender). Never called while one of its events dispatches.
        """

    def tables(self) -> tuple[tuple[str | None, sa.MetaData], ...]:
        """The tables the feature needs in the app's databases, as ``(bind
        key, MetaData)`` pairs: :attr:`SessionExt.metadatas` adds them to the
        bind's, for Flask-Migrate, and :meth:`SessionExt.create_all` creates
        them.
        """
        return ()

    def may_raise(self) -> bool:
        """Whether a receiver of its signals may raise now, so that the
        session operations of :attr:`raises_after` must collect its errors.
        """
        return False

    def has_receivers(self) -> bool:
        """Whether receivers of its signals for the app, seen by the last
        refresh, are held weakly here (and may die unseen).
        """
        return False

    def has_dead_receivers(self) -> bool:
        """Whether a receiver seen by the last refresh was garbage-collected
        (Blinker says nothing of it); checked at each app-context teardown.
        """
        return False
