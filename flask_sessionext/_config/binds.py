"""The binds of one app: each bind's URL and ``create_engine`` options, merged
from the constructor, ``SESSIONEXT_ENGINE_OPTIONS`` and the bind's own entry
of ``SESSIONEXT_BINDS``, with where each option was set. Part of the one pass
of :func:`._settings.read_settings`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing as t
from collections.abc import Mapping
from types import MappingProxyType

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import Flask
from sqlalchemy.engine import URL
from sqlalchemy.pool import QueuePool

from .passwords import describe, mask_url, quote

_ENGINE_KEY = "SESSIONEXT_ENGINE_OPTIONS"
#: Where an engine option of the constructor was set, as a message starts it.
ENGINE_ARGUMENT = "The 'engine_options' of SessionExt()"


@dataclasses.dataclass(frozen=True)
class BindSettings:
    """How to create the engine of one bind."""

    #: The bind key; ``None`` for the default bind.
    key: str | None
    #: The config key that names the bind, for messages:
    #: ``"SESSIONEXT_DATABASE_URI"`` or ``"SESSIONEXT_BINDS['key']"``.
    where: str
    #: The parsed URL; a relative SQLite path is under ``app.instance_path``.
    url: URL
    #: The keyword arguments of ``create_engine()``, with the extension's
    #: defaults (``pool_pre_ping``, the in-memory SQLite pool, ``echo``).
    options: Mapping[str, t.Any]
    #: Where each of :attr:`options` was set, as a message starts it:
    #: ``"'SESSIONEXT_BINDS['key']'"``, ``"'SESSIONEXT_ENGINE_OPTIONS'"``,
    #: ``"'SESSIONEXT_ECHO'"`` or ``"The 'engine_options' of SessionExt()"``
    #: (the extension's own defaults too).
    origins: Mapping[str, str]
    #: Whether the check of :mod:`.._engines.liveness` replaces ``pool_pre_ping``.
    liveness: bool
    #: The PRAGMAs set on every new connection of a SQLite bind (see
    #: :mod:`.._engines.sqlite_transactions`); empty for other databases.
    pragmas: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    #: The URL of the bind's async engine, when the config names one
    #: (``SESSIONEXT_ASYNC_DATABASE_URI``, or the bind's ``async_url``);
    #: else :mod:`.._engines.async_engines` derives it from :attr:`url`.
    async_url: URL | None = None


def merge_options(
    config: Mapping[str, t.Any],
    key: str,
    default: Mapping[str, t.Any],
    argument: str,
) -> tuple[dict[str, t.Any], dict[str, str]]:
    """A ``*_OPTIONS`` config value merged over the constructor's ``default``,
    and where each option was set (``argument`` for the constructor).

    :raise TypeError: the config value is neither a mapping nor ``None``; an
        option name is not a string.
    """
    value = config.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(
            f"'{key}' must be a mapping of option names to values or None,"
            f" not {describe(value)}."
        )
    options = {**default, **(value or {})}
    check_names(key, options)
    origins = {
        name: f"'{key}'" if name in (value or {}) else argument for name in options
    }
    return options, origins


def check_names(where: str, options: Mapping[t.Any, t.Any]) -> None:
    """Refuse option names that are not strings.

    :raise TypeError: a name is not a string.
    """
    for name in options:
        if not isinstance(name, str):
            raise TypeError(
                f"'{where}' has an option name that is not a string:"
                f" {describe(name)}. Option names are strings, such as"
                " 'pool_size' or 'expire_on_commit'."
            )


def read_binds(
    app: Flask,
    engine_options: Mapping[str, t.Any],
    *,
    echo: bool,
    ping_after_idle: float,
) -> list[BindSettings]:
    """The settings of every bind, the default bind first.

    Engine options merge constructor, then ``SESSIONEXT_ENGINE_OPTIONS``,
    then the bind's own dict; ``echo`` is ``SESSIONEXT_ECHO``.

    :raise TypeError: a bind is neither a string nor a dict with a ``url``.
    :raise ValueError: a URL cannot be parsed.
    """
    config = app.config
    base, base_origins = merge_options(
        config, _ENGINE_KEY, engine_options, ENGINE_ARGUMENT
    )
    if echo and "echo" not in base:
        base["echo"] = True
        base_origins["echo"] = "'SESSIONEXT_ECHO'"

    binds = config.get("SESSIONEXT_BINDS")
    if binds is None:
        binds = {}
    elif not isinstance(binds, Mapping):
        raise TypeError(
            "'SESSIONEXT_BINDS' must be a mapping of bind keys to URLs or dicts,"
            f" not {type(binds).__name__}."
        )

    default_uri = config.get("SESSIONEXT_DATABASE_URI")
    if default_uri is None or default_uri == "":
        default_uri = "sqlite:///app.sqlite3"
    where = "SESSIONEXT_DATABASE_URI"
    url = _check_url_type(where, default_uri)
    raw = [
        _RawBind(
            None,
            where,
            url,
            dict(base),
            dict(base_origins),
            _async_url(
                "SESSIONEXT_ASYNC_DATABASE_URI",
                config.get("SESSIONEXT_ASYNC_DATABASE_URI"),
            ),
        )
    ]
    for key, value in binds.items():
        where = f"SESSIONEXT_BINDS[{key!r}]"
        if not isinstance(key, str):
            raise TypeError(
                f"Bind keys in 'SESSIONEXT_BINDS' must be strings, not {quote(key)}."
            )
        if not isinstance(value, Mapping):
            url = _check_url_type(where, value)
            raw.append(_RawBind(key, where, url, dict(base), dict(base_origins)))
            continue
        if "url" not in value:
            raise TypeError(
                f"'{where}' is a dict without a 'url' key; give"
                " {'url': 'dialect://...', **engine_options} or a URL string."
            )
        check_names(where, value)
        url = _check_url_type(f"{where}['url']", value["url"])
        own = {
            name: option
            for name, option in value.items()
            if name not in ("url", "async_url")
        }
        options = {**base, **own}
        origins = {**base_origins, **dict.fromkeys(own, f"'{where}'")}
        async_url = _async_url(f"{where}['async_url']", value.get("async_url"))
        raw.append(_RawBind(key, where, url, options, origins, async_url))

    return [_bind(app, bind, ping_after_idle) for bind in raw]


def _check_url_type(where: str, value: object) -> str | URL:
    if isinstance(value, (str, URL)):
        return value
    accepted = (
        "a URL string or a dict with a 'url' key"
        # A bind itself, not its 'url' or 'async_url'.
        if where.startswith("SESSIONEXT_BINDS") and where.count("[") == 1
        else "a URL string or a sqlalchemy.engine.URL"
    )
    # The type only: the repr of a list or a tuple may hold a password.
    raise TypeError(f"'{where}' must be {accepted}, not {type(value).__name__}.")


def _async_url(where: str, value: object) -> URL | None:
    """The async URL that ``where`` names, parsed; ``None`` when unset.

    :raise TypeError: it is not a string or a URL.
    :raise ValueError: it cannot be parsed.
    """
    if value is None or value == "":
        return None
    return _parse_url(where, _check_url_type(where, value))


def _parse_url(where: str, raw_url: str | URL) -> URL:
    """``raw_url`` parsed.

    :raise ValueError: it cannot be parsed.
    """
    try:
        return sa.make_url(raw_url)
    except (sa_exc.ArgumentError, ValueError):
        # Not chained: SQLAlchemy's message may quote the URL, password included.
        raise ValueError(
            f"'{where}' is not a valid database URL: {mask_url(raw_url)!r}."
            " Give 'dialect[+driver]://user:password@host[:port]/database',"
            " for example 'sqlite:///app.sqlite3' or"
            " 'postgresql+psycopg://user:password@127.0.0.1/app'."
        ) from None


class _RawBind(t.NamedTuple):
    """A bind as the config gives it, its URL not yet parsed."""

    key: str | None
    where: str
    url: str | URL
    options: dict[str, t.Any]
    origins: dict[str, str]
    async_url: URL | None = None


def _bind(app: Flask, raw: _RawBind, ping_after_idle: float) -> BindSettings:
    """The settings of one bind, with the extension's defaults: relative
    SQLite paths resolve against ``app.instance_path`` (created if missing);
    in-memory SQLite has one connection, which threads take in turn, one
    transaction at a time; server databases get ``pool_pre_ping`` unless the
    options say otherwise, or the check of :mod:`.._engines.liveness` replaces it.

    :raise ValueError: the URL cannot be parsed.
    """
    key, where, raw_url, options, origins, async_url = raw
    url = _parse_url(where, raw_url)
    liveness = replaces_pre_ping(url, options, ping_after_idle)
    # Not an option of create_engine(); ignored on other databases.
    pragma_option = options.pop(PRAGMAS_OPTION, None)
    pragma_origin = origins.pop(PRAGMAS_OPTION, ENGINE_ARGUMENT)
    pragmas: Mapping[str, str] = MappingProxyType({})
    if url.get_backend_name() == "sqlite":
        file = not is_memory(url)
        url = _sqlite_defaults(app, url, options)
        pragmas = read_pragmas(pragma_origin, pragma_option, file=file)
    elif not liveness:
        options.setdefault("pool_pre_ping", True)
    for name in options:
        origins.setdefault(name, ENGINE_ARGUMENT)
    return BindSettings(
        key=key,
        where=where,
        url=url,
        options=MappingProxyType(options),
        origins=MappingProxyType(origins),
        liveness=liveness,
        pragmas=pragmas,
        async_url=None if async_url is None else _relative_sqlite(app, async_url),
    )


def _relative_sqlite(app: Flask, url: URL) -> URL:
    """``url``, with a relative SQLite path under ``app.instance_path``."""
    database = url.database
    if (
        url.get_backend_name() != "sqlite"
        or not database
        or is_memory(url)
        or database.startswith("file:")
        or os.path.isabs(database)
    ):
        return url
    os.makedirs(app.instance_path, exist_ok=True)
    return url.set(database=os.path.join(app.instance_path, database))


def is_memory(url: URL) -> bool:
    """Whether the SQLite ``url`` names an in-memory database: ``sqlite://``,
    ``sqlite:///:memory:``, or a URI filename ``file::memory:`` or with
    ``mode=memory``.
    """
    database = url.database
    return (
        database in (None, "", ":memory:")
        or (database or "").startswith("file::memory:")
        or url.query.get("mode") == "memory"
    )


def _sqlite_defaults(app: Flask, url: URL, options: dict[str, t.Any]) -> URL:
    """Set the defaults of a SQLite bind in ``options``; its URL, with a
    relative path under ``app.instance_path``.
    """
    database = url.database
    if database is None or is_memory(url):
        # One connection, so every thread sees the same database, checked
        # out by one session at a time: a transaction on it is shared by all
        # its users, so another thread's commit would commit this one's work.
        options.setdefault("poolclass", QueuePool)
        if options["poolclass"] is QueuePool:
            options.setdefault("pool_size", 1)
            options.setdefault("max_overflow", 0)
        connect_args = options.get("connect_args", {})
        # Not a mapping: create_engines() reports it, naming where it was set.
        if isinstance(connect_args, Mapping):
            options["connect_args"] = {**connect_args}
            options["connect_args"].setdefault("check_same_thread", False)
    elif not database.startswith("file:") and not os.path.isabs(database):
        os.makedirs(app.instance_path, exist_ok=True)
        url = url.set(database=os.path.join(app.instance_path, database))
    return url


def replaces_pre_ping(
    url: URL, options: Mapping[str, t.Any], after_idle: float
) -> bool:
    """Whether an engine of ``url`` and engine ``options`` gets the check of
    this module instead of ``pool_pre_ping``: its driver is psycopg (and no
    ``module`` option puts another DBAPI in its place), the options do not set
    ``pool_pre_ping`` themselves, and ``after_idle`` (the value of
    ``SESSIONEXT_PING_AFTER_IDLE``) is not ``0``.
    """
    if not after_idle or "pool_pre_ping" in options or "module" in options:
        return False
    try:
        dialect = url.get_dialect()
    except (sa_exc.ArgumentError, ImportError):
        return False
    return (
        dialect.name == "postgresql"
        and dialect.driver == "psycopg"
        and not dialect.is_async
    )


#: The engine option that changes the PRAGMAs; not one of ``create_engine()``.
PRAGMAS_OPTION = "sqlite_pragmas"

#: What a file database gets, in this order (journal_mode needs no
#: transaction, so it goes first):
#:
#: - ``journal_mode=WAL``: readers do not block the writer, nor it them;
#: - ``synchronous=NORMAL``: in WAL mode, durable except for the last
#:   commits at a power loss, never corrupt, and no fsync per commit;
#: - ``foreign_keys=ON``: the ``FOREIGN KEY`` constraints are enforced.
PRAGMA_DEFAULTS: Mapping[str, str] = MappingProxyType(
    {"journal_mode": "WAL", "synchronous": "NORMAL", "foreign_keys": "ON"}
)

_PRAGMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PRAGMA_VALUE = re.compile(r"-?[A-Za-z0-9_]+\Z")


def read_pragmas(where: str, value: object, *, file: bool) -> Mapping[str, str]:
    """The PRAGMAs of a SQLite bind: :data:`PRAGMA_DEFAULTS` for a file database
    (none for an in-memory one), updated by ``value``, the ``sqlite_pragmas``
    option set in ``where``; a PRAGMA whose value is ``None`` is not set.

    :raise TypeError: ``value`` is not a mapping of names to strings,
        integers or ``None``.
    :raise ValueError: a name or value is not a plain word or number.
    """
    pragmas = dict(PRAGMA_DEFAULTS) if file else {}
    if value is None:
        return MappingProxyType(pragmas)
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{where} has '{PRAGMAS_OPTION}' = {describe(value)}; give a mapping of"
            " PRAGMA names to values, such as {'journal_mode': 'DELETE'},"
            " where None leaves a PRAGMA unset."
        )
    for name, setting in value.items():
        if not isinstance(name, str) or not _PRAGMA_NAME.match(name):
            raise ValueError(
                f"{where} has '{PRAGMAS_OPTION}' with the PRAGMA name {describe(name)};"
                " give a PRAGMA name such as 'journal_mode' or 'cache_size'."
            )
        if setting is None:
            pragmas.pop(name, None)
            continue
        if isinstance(setting, bool) or not isinstance(setting, (str, int)):
            raise TypeError(
                f"{where} has '{PRAGMAS_OPTION}' with {name!r} = {describe(setting)};"
                " give a string or an integer, or None to leave it unset."
            )
        if not _PRAGMA_VALUE.match(str(setting)):
            raise ValueError(
                f"{where} has '{PRAGMAS_OPTION}' with {name!r} = {setting!r}; give a"
                " word or a number, such as 'WAL', 'NORMAL', 'ON' or -64000."
            )
        pragmas[name] = str(setting)
    return MappingProxyType(pragmas)
