"""The async engines of one app: the async form of each bind's engine, from
the same settings, and the pool that lets them serve Flask's ``async def``
views.

Each bind gets an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` on the async
driver of its URL (:data:`ASYNC_DRIVERS`), or on the bind's own async URL
(``SESSIONEXT_ASYNC_DATABASE_URI``, a bind's ``async_url``), with the bind's
engine options. They are created at the first use of the app's async side
(see ``Runtime.async_state``), opening no connection; a bind whose async
driver is not installed gets no async engine, and using it raises an error
that says what to install.

**The pool.** Flask runs each ``async def`` view on an event loop of its
own, in a thread of its own (asgiref), and closes the loop when the view
returns. SQLAlchemy's default pool for async engines keeps its connections
in an ``asyncio.Queue``, which is neither thread-safe nor meant for several
loops. Under Flask, an engine whose driver's connections work on any loop,
one at a time (aiosqlite, psycopg: :data:`LOOP_FREE_DRIVERS`), gets
:class:`ThreadedAsyncPool`: SQLAlchemy's ``QueuePool`` with its thread-safe
queue, made acceptable to an async engine, so connections are reused across
requests as a sync app's are. A driver whose connections belong to the loop
that opened them (asyncpg, aiomysql) gets ``NullPool`` under Flask: a new
connection per session. Under Quart, one loop runs every request, and
SQLAlchemy's default ``AsyncAdaptedQueuePool`` is right. An explicit
``poolclass`` in the options is used as it is.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing as t
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool, QueuePool

from .._config.binds import BindSettings
from .._config.passwords import hide_passwords, mask_url
from .._config.settings import Settings
from .._sqlalchemy_private import (
    async_pool_dialect,
    lock_first_connect_with_threads,
    thread_safe_queue,
)

if t.TYPE_CHECKING:
    # Imported where used: sqlalchemy.ext.asyncio needs greenlet, which
    # only the 'async' extra installs.
    from sqlalchemy.ext.asyncio import AsyncEngine
from . import fork_safety as _fork_safety

#: The async driver of each sync ``(dialect, driver)``.
ASYNC_DRIVERS: Mapping[tuple[str, str], str] = {
    ("sqlite", "pysqlite"): "aiosqlite",
    ("postgresql", "psycopg"): "psycopg",
    ("postgresql", "psycopg2"): "psycopg",
    ("mysql", "mysqldb"): "aiomysql",
    ("mysql", "pymysql"): "aiomysql",
}

#: Async drivers whose connections any event loop may use, one at a time:
#: they hold no loop (aiosqlite runs each connection in a thread of its own;
#: psycopg waits on the socket with the loop that is running).
LOOP_FREE_DRIVERS = frozenset({"aiosqlite", "psycopg"})

#: Options of a queue pool, which ``NullPool`` refuses.
_QUEUE_OPTIONS = ("pool_size", "max_overflow", "pool_timeout", "pool_use_lifo")

#: The distribution that provides each async driver.
_PACKAGES = {
    "aiosqlite": "'Flask-SessionExt[async]'",
    "psycopg": "'Flask-SessionExt[postgresql]'",
    "asyncpg": "asyncpg",
    "aiomysql": "aiomysql",
}


class ThreadedAsyncPool(QueuePool):
    """A ``QueuePool`` for async engines whose connections the event loops
    of many threads use in turn, as Flask's ``async def`` views do: its
    queue is ``QueuePool``'s thread-safe one, and a checkout that must wait
    for a connection waits as in a sync app, blocking its own thread (and
    the loop of its one view), up to ``pool_timeout``.
    """

    _is_asyncio = True
    _queue_class = thread_safe_queue()
    _dialect = async_pool_dialect()

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        lock_first_connect_with_threads(self)


class ThreadedNullPool(NullPool):
    """``NullPool`` for async engines whose connections the loops of many
    threads open: the first connections opened together wait for the
    first one's initialisation with a thread lock, not an ``asyncio.Lock``
    of one loop.
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        lock_first_connect_with_threads(self)


@dataclasses.dataclass(frozen=True)
class AsyncEngines:
    """The async engines of one app, and why a bind has none."""

    #: The async engine of each bind that has one, by bind key.
    engines: Mapping[str | None, AsyncEngine]
    #: Why a bind has no async engine, by bind key: a message to raise.
    missing: Mapping[str | None, str]

    def sync_engines(self) -> list[tuple[str | None, sa.Engine]]:
        """The sync engine under each async engine, by bind key: the target
        of the features' engine listeners.
        """
        return [(key, engine.sync_engine) for key, engine in self.engines.items()]


def asyncio_extension() -> t.Any:
    """SQLAlchemy's asyncio extension, imported at the first async use.

    :raise ImportError: greenlet, which it needs, is not installed.
    """
    try:
        # SQLAlchemy 2.0 would only miss greenlet at the first statement.
        importlib.import_module("greenlet")
        import sqlalchemy.ext.asyncio as extension
    except ImportError as e:
        raise ImportError(
            f"The async sessions of Flask-SessionExt need SQLAlchemy's asyncio"
            f" extension, which cannot be imported: {e} Install the 'async'"
            " extra: pip install 'Flask-SessionExt[async]'."
        ) from e
    return extension


def create_async_engines(settings: Settings, *, threads: bool) -> AsyncEngines:
    """One async engine per bind of ``settings`` whose async driver is
    installed; opens no connection.

    :param threads: whether the app's views run on loops of their own, in
        threads of their own (Flask), rather than on one loop (Quart).
    """
    create_async_engine = asyncio_extension().create_async_engine

    engines: dict[str | None, AsyncEngine] = {}
    missing: dict[str | None, str] = {}
    for key, bind in settings.binds.items():
        url = async_url(bind)
        if url is None:
            missing[key] = (
                f"'{bind.where}' uses '{bind.url.drivername}', which has no"
                " async driver that the extension knows. Give the async URL of"
                " the bind in 'SESSIONEXT_ASYNC_DATABASE_URI' (default bind) or"
                " the bind's 'async_url'."
            )
            continue
        try:
            engines[key] = create_async_engine(url, **async_options(bind, url, threads))
        except ImportError as e:
            module = (e.name or url.get_driver_name()).partition(".")[0]
            package = _PACKAGES.get(module, module)
            missing[key] = (
                f"The async engine of '{bind.where}' uses '{url.drivername}',"
                f" whose driver is not installed ({e}). Install it with"
                f" 'pip install {package}'."
            )
        except (sa.exc.ArgumentError, TypeError, ValueError) as e:
            missing[key] = (
                f"The async engine of '{bind.where}' ({mask_url(url)!r}) was"
                f" refused: {type(e).__name__}: {hide_passwords(str(e))}. Check the"
                " bind's engine options."
            )
    _fork_safety.dispose_in_child([engine.sync_engine for engine in engines.values()])
    return AsyncEngines(engines, missing)


def async_url(bind: BindSettings) -> URL | None:
    """The URL of the async engine of ``bind``: its own, or its URL with the
    async driver of :data:`ASYNC_DRIVERS`; ``None`` if there is none.
    """
    if bind.async_url is not None:
        return bind.async_url
    url = bind.url
    try:
        dialect = url.get_dialect()
    except (sa.exc.ArgumentError, ImportError):  # pragma: no cover
        return None
    if dialect.is_async:
        return url
    driver = ASYNC_DRIVERS.get((url.get_backend_name(), url.get_driver_name()))
    if driver is None:
        return None
    return url.set(drivername=f"{url.get_backend_name()}+{driver}")


def async_options(bind: BindSettings, url: URL, threads: bool) -> dict[str, t.Any]:
    """The ``create_async_engine`` options of ``bind``: its engine options,
    with the pool of this module's docstring; ``pool_pre_ping`` where the
    sync engine has the liveness check and the async driver is not psycopg
    (whose async connections get the check too).
    """
    options = dict(bind.options)
    if bind.liveness and url.get_driver_name() != "psycopg":
        options.setdefault("pool_pre_ping", True)
    poolclass = options.get("poolclass")
    if poolclass not in (None, QueuePool):
        return options
    if not threads:
        options.pop("poolclass", None)  # SQLAlchemy's AsyncAdaptedQueuePool
    elif url.get_driver_name() in LOOP_FREE_DRIVERS:
        options["poolclass"] = ThreadedAsyncPool
    else:
        options["poolclass"] = ThreadedNullPool
        for name in _QUEUE_OPTIONS:
            options.pop(name, None)
    return options
