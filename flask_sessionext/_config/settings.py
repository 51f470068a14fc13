"""The settings of one app: its ``SESSIONEXT_*`` keys and the constructor's
defaults, read and checked in one pass by :func:`read_settings`.

Every key is read once, in ``init_app``, except two that are read when they
are used, through :func:`commit_on_teardown` and
:func:`raise_receiver_errors`: an app (often a test) may change them while it
runs, to commit at the teardown of one request or to let a receiver's error
be logged rather than raised, and the documentation promises that the raise
setting is read when the error happens. ``init_app`` checks both too, so a
bad value fails when the app starts.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing as t
from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import unquote

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import Flask

from .binds import BindSettings, is_memory, merge_options, read_binds
from .keys import check_keys
from .passwords import describe, quote
from .refused_options import check_session_options

SynchronizeSession = t.Literal["auto", "evaluate", "fetch", False]

#: SQLAlchemy 2.1 takes session-wide execution options; 2.0 needs a listener.
SESSION_EXECUTION_OPTIONS = (
    "execution_options" in inspect.signature(orm.Session).parameters
)

_SESSION_KEY = "SESSIONEXT_SESSION_OPTIONS"
#: Where an option of the constructor was set, as a message starts it.
_SESSION_ARGUMENT = "The 'session_options' of SessionExt()"


@dataclasses.dataclass(frozen=True)
class RecordingSettings:
    """The keyword arguments of :class:`.recording.Recorder`."""

    record: bool
    limit: int | None
    parameters: bool
    threshold: float | None
    server_timing: bool
    root_path: str


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything ``init_app`` needs of one app's configuration."""

    #: The binds by key, the default bind (``None``) first.
    binds: Mapping[str | None, BindSettings]
    #: The keyword arguments of the ``sessionmaker``, checked, without
    #: ``class_``; with SQLAlchemy 2.1 they carry ``synchronize_session``.
    session_options: Mapping[str, t.Any]
    #: The ``class_`` session option: a subclass of SQLAlchemy's Session.
    session_class: type[orm.Session] | None
    synchronize_session: SynchronizeSession | None
    ping_after_idle: float
    #: As ``init_app`` read it; the teardown reads it again, see
    #: :func:`commit_on_teardown`.
    commit_on_teardown: bool
    recording: RecordingSettings
    #: ``SESSIONEXT_BROADCAST``; ``None`` while it is off.
    broadcast: BroadcastSettings | None = None


@dataclasses.dataclass(frozen=True)
class BroadcastSettings:
    """``SESSIONEXT_BROADCAST``: which committed changes are published to
    the other processes of the deployment, and how they are received.
    """

    #: The PostgreSQL ``LISTEN`` channel, and the name that tells deployments
    #: sharing one outbox table apart.
    channel: str
    #: The mapped classes whose changes are published (with their
    #: subclasses); ``None`` with :attr:`tables` empty: every mapped class.
    models: frozenset[type] | None
    #: The table names whose changes are published, besides :attr:`models`.
    tables: frozenset[str]
    #: The bind key of the database that holds the outbox table.
    bind: str | None
    #: Seconds between two reads of the outbox where there is no ``LISTEN``.
    poll_interval: float
    #: Seconds an outbox row is kept; older rows are pruned.
    keep: float
    #: The ``connect_args`` engine option of the outbox bind, which the
    #: listener's own connection takes too.
    connect_args: Mapping[str, t.Any] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}), compare=False
    )


def read_settings(
    app: Flask,
    *,
    engine_options: Mapping[str, t.Any],
    session_options: Mapping[str, t.Any],
) -> Settings:
    """Read and check the ``SESSIONEXT_*`` keys of ``app.config``, over the
    constructor's ``engine_options`` and ``session_options``. Creates
    ``app.instance_path`` when a SQLite path is relative to it.

    :raise TypeError: a value has the wrong type.
    :raise ValueError: a value is not accepted; a ``SESSIONEXT_*`` key is
        unknown, or a Flask-SQLAlchemy key is set without its counterpart.
    """
    config = app.config
    check_keys(config)
    commit = get_bool(app, "SESSIONEXT_COMMIT_ON_TEARDOWN", False)
    raise_receiver_errors(app)
    recording = _recording(app)
    synchronize = _synchronize_session(config)
    ping_after_idle = _ping_after_idle(config)
    options, session_class = _session_options(config, session_options)
    if synchronize is not None and SESSION_EXECUTION_OPTIONS:
        options["execution_options"] = {
            "synchronize_session": synchronize,
            **options.get("execution_options", {}),
        }
    binds = {
        bind.key: bind
        for bind in read_binds(
            app,
            engine_options,
            echo=get_bool(app, "SESSIONEXT_ECHO", False),
            ping_after_idle=ping_after_idle,
        )
    }
    broadcast = _broadcast(config, binds)
    return Settings(
        binds=MappingProxyType(binds),
        session_options=MappingProxyType(options),
        session_class=session_class,
        synchronize_session=synchronize,
        ping_after_idle=ping_after_idle,
        commit_on_teardown=commit,
        recording=recording,
        broadcast=broadcast,
    )


def commit_on_teardown(app: Flask) -> bool:
    """``SESSIONEXT_COMMIT_ON_TEARDOWN`` of ``app``, read now.

    :raise TypeError: the value is not a ``bool``.
    """
    return get_bool(app, "SESSIONEXT_COMMIT_ON_TEARDOWN", False)


def raise_receiver_errors(app: Flask) -> bool:
    """``SESSIONEXT_RAISE_RECEIVER_ERRORS`` of ``app``, read now; ``app.testing``
    when unset.

    :raise TypeError: the value is not a ``bool``.
    """
    return get_bool(app, "SESSIONEXT_RAISE_RECEIVER_ERRORS", app.testing)


def get_bool(app: Flask, key: str, default: bool) -> bool:
    """Read a boolean config key.

    :raise TypeError: the value is not a ``bool``.
    """
    value = app.config.get(key, default)
    if not isinstance(value, bool):
        raise TypeError(f"'{key}' must be True or False, not {quote(value)}.")
    return value


def _recording(app: Flask) -> RecordingSettings:
    """Read the recording keys.

    :raise TypeError: a key has a value of the wrong type.
    :raise ValueError: a number is out of range.
    """
    return RecordingSettings(
        record=get_bool(app, "SESSIONEXT_RECORD_QUERIES", app.debug or app.testing),
        limit=_record_limit(app.config),
        parameters=get_bool(app, "SESSIONEXT_RECORD_PARAMETERS", app.debug),
        threshold=_slow_query_threshold(app.config),
        server_timing=get_bool(app, "SESSIONEXT_SERVER_TIMING", False),
        root_path=app.root_path,
    )


def _record_limit(config: Mapping[str, t.Any]) -> int | None:
    key = "SESSIONEXT_RECORD_QUERIES_LIMIT"
    value = config.get(key, 1000)
    accepted = "an int of at least 1, or None for no limit"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{key}' must be {accepted}, not {quote(value)}.")
    if value < 1:
        raise ValueError(
            f"'{key}' must be {accepted}, not {quote(value)}. To record nothing, set"
            " 'SESSIONEXT_RECORD_QUERIES' to False."
        )
    return value


def _slow_query_threshold(config: Mapping[str, t.Any]) -> float | None:
    key = "SESSIONEXT_SLOW_QUERY_THRESHOLD"
    value = config.get(key)
    if value is None:
        return None
    return _seconds(
        key, value, "a number of seconds of at least 0, or None for no reports"
    )


def _ping_after_idle(config: Mapping[str, t.Any]) -> float:
    """``SESSIONEXT_PING_AFTER_IDLE``, seconds; ``30`` when unset."""
    key = "SESSIONEXT_PING_AFTER_IDLE"
    return _seconds(
        key,
        config.get(key, 30),
        "a number of seconds of at least 0 (0 pings on every checkout)",
    )


def _seconds(key: str, value: object, accepted: str) -> float:
    """``value`` of ``key``, a number of at least 0.

    :raise TypeError: the value is not a number.
    :raise ValueError: the value is negative or NaN.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'{key}' must be {accepted}, not {quote(value)}.")
    if not value >= 0:  # NaN too
        raise ValueError(f"'{key}' must be {accepted}, not {quote(value)}.")
    return float(value)


_BROADCAST_KEY = "SESSIONEXT_BROADCAST"
_BROADCAST_DEFAULTS: dict[str, t.Any] = {
    "channel": "sessionext",
    "models": None,
    "bind": None,
    "poll_interval": 1.0,
    "keep": 3600.0,
}
#: A channel is an SQL identifier of PostgreSQL (at most 63 bytes); one that
#: needs no quoting reads the same everywhere it is shown.
_CHANNEL_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _broadcast(
    config: Mapping[str, t.Any], binds: Mapping[str | None, BindSettings]
) -> BroadcastSettings | None:
    """``SESSIONEXT_BROADCAST``: ``None`` or ``False`` (off), ``True`` (on,
    with the defaults) or a dict of the settings that differ from them.

    :raise TypeError: the value, or one of its settings, has the wrong type.
    :raise ValueError: a setting is unknown or out of range, or the bind is
        not configured.
    """
    key = _BROADCAST_KEY
    value = config.get(key)
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"'{key}' must be True, False, None or a dict of settings"
            f" ({', '.join(map(repr, _BROADCAST_DEFAULTS))}), not {describe(value)}."
        )
    unknown = [name for name in value if name not in _BROADCAST_DEFAULTS]
    if unknown:
        raise ValueError(
            f"'{key}' has an unknown setting {quote(unknown[0])}; the settings"
            f" are {', '.join(map(repr, _BROADCAST_DEFAULTS))}."
        )
    merged = {**_BROADCAST_DEFAULTS, **value}
    channel = merged["channel"]
    if not isinstance(channel, str):
        raise TypeError(f"'{key}['channel']' must be a str, not {describe(channel)}.")
    if not _CHANNEL_RE.fullmatch(channel):
        raise ValueError(
            f"'{key}['channel']' must be 1 to 63 lowercase letters, digits or"
            f" underscores, not starting with a digit, not {quote(channel)}."
        )
    models, tables = _broadcast_models(merged["models"])
    bind = merged["bind"]
    if bind not in binds:
        known = ", ".join(repr(k) for k in binds)
        raise ValueError(
            f"'{key}['bind']' is {quote(bind)}, which is not a configured bind;"
            f" the binds are {known} (None is the default bind)."
        )
    poll_interval = _seconds(
        f"{key}['poll_interval']",
        merged["poll_interval"],
        "a number of seconds greater than 0",
    )
    if poll_interval == 0:
        raise ValueError(
            f"'{key}['poll_interval']' must be a number of seconds greater than"
            " 0, not 0."
        )
    keep = _seconds(
        f"{key}['keep']", merged["keep"], "a number of seconds of at least 0"
    )
    _check_shared(binds[bind])
    return BroadcastSettings(
        channel=channel,
        models=models,
        tables=tables,
        bind=bind,
        poll_interval=poll_interval,
        keep=keep,
        connect_args=MappingProxyType(
            dict(binds[bind].options.get("connect_args") or {})
        ),
    )


def _check_shared(bind: BindSettings) -> None:
    """Refuse an outbox bind that no other process can open.

    :raise ValueError: it is an in-memory SQLite database.
    """
    if bind.url.get_backend_name() == "sqlite" and is_memory(bind.url):
        name = "the default bind" if bind.key is None else f"bind {bind.key!r}"
        # Its password hidden; ":memory:" reads better unquoted.
        url = unquote(bind.url.render_as_string())
        raise ValueError(
            f"'{_BROADCAST_KEY}' cannot publish through {name} ('{bind.where}' is"
            f" {url!r}): an in-memory SQLite database is one process's, so no"
            " other process would receive anything. Use a SQLite file such as"
            " 'sqlite:///app.sqlite3', or a server database, for that bind or"
            " for the 'bind' setting."
        )


def _broadcast_models(value: object) -> tuple[frozenset[type] | None, frozenset[str]]:
    """The ``models`` setting: the classes and the table names it lists.

    :raise TypeError: it is not ``None`` or a list of mapped classes and
        table names.
    """
    where = f"'{_BROADCAST_KEY}['models']'"
    if value is None:
        return None, frozenset()
    if isinstance(value, (str, bytes)) or not isinstance(
        value, (list, tuple, set, frozenset)
    ):
        raise TypeError(
            f"{where} must be None (every mapped class) or a list of mapped"
            f" classes and table names, not {describe(value)}."
        )
    models: set[type] = set()
    tables: set[str] = set()
    for item in value:
        if isinstance(item, str) and item:
            tables.add(item)
        elif isinstance(item, type) and sa.inspect(item, raiseerr=False) is not None:
            models.add(item)
        else:
            raise TypeError(
                f"{where} lists {describe(item)}; it takes mapped classes and"
                " table names."
            )
    return frozenset(models), frozenset(tables)


def _synchronize_session(config: Mapping[str, t.Any]) -> SynchronizeSession | None:
    """``SESSIONEXT_SYNCHRONIZE_SESSION``; ``None`` when unset.

    :raise ValueError: the value is not one SQLAlchemy accepts.
    """
    value = config.get("SESSIONEXT_SYNCHRONIZE_SESSION")
    if value is None:
        return None
    if value is not False and not (
        isinstance(value, str) and value in ("auto", "evaluate", "fetch")
    ):
        raise ValueError(
            f"'SESSIONEXT_SYNCHRONIZE_SESSION' must be one of 'auto', 'evaluate',"
            f" 'fetch' or False, not {quote(value)}."
        )
    return t.cast(SynchronizeSession, value)


def _session_options(
    config: Mapping[str, t.Any], default: Mapping[str, t.Any]
) -> tuple[dict[str, t.Any], type[orm.Session] | None]:
    """The checked Session options, without ``class_``, and ``class_``.

    :raise TypeError: an option is unknown, or of the wrong type.
    :raise ValueError: an option has a value that the Session refuses.
    """
    options, origins = merge_options(config, _SESSION_KEY, default, _SESSION_ARGUMENT)
    check_session_options(options, origins)
    class_: type[orm.Session] | None = options.pop("class_", None)
    return options, class_
