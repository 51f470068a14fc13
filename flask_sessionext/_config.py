"""Reading and validating the ``SESSIONEXT_*`` configuration keys."""

from __future__ import annotations

import os
import typing as t
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import Flask
from sqlalchemy.engine import URL
from sqlalchemy.pool import QueuePool

from . import _liveness, _options
from ._options import mask_url

SynchronizeSession = t.Literal["auto", "evaluate", "fetch", False]


def get_options(
    app: Flask, key: str, default: Mapping[str, t.Any] | None
) -> dict[str, t.Any]:
    """Merge a ``*_OPTIONS`` config value over the constructor's ``default``.
    Session options are checked against what the Session takes, so that a
    mistake fails here rather than in the first request.

    :raise TypeError: the config value is neither a mapping nor ``None``; an
        option name is not a string; a Session option is unknown or of the
        wrong type.
    :raise ValueError: a Session option has a value that the Session refuses.
    """
    value = app.config.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(
            f"'{key}' must be a mapping of option names to values or None,"
            f" not {_options.describe(value)}."
        )
    options = {**(default or {}), **(value or {})}
    _options.check_names(key, options)
    if key == "SESSIONEXT_SESSION_OPTIONS":
        _options.check_session_options(app, options)
    return options


def get_bool(app: Flask, key: str, default: bool) -> bool:
    """Read a boolean config key.

    :raise TypeError: the value is not a ``bool``.
    """
    value = app.config.get(key, default)
    if not isinstance(value, bool):
        raise TypeError(f"'{key}' must be True or False, not {_options.quote(value)}.")
    return value


def get_ping_after_idle(app: Flask) -> float:
    """Read ``SESSIONEXT_PING_AFTER_IDLE``, seconds; ``30`` when unset.

    :raise TypeError: the value is not a number.
    :raise ValueError: the value is negative or NaN.
    """
    key = "SESSIONEXT_PING_AFTER_IDLE"
    value = app.config.get(key, 30)
    accepted = "a number of seconds of at least 0 (0 pings on every checkout)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'{key}' must be {accepted}, not {_options.quote(value)}.")
    if not value >= 0:  # NaN too
        raise ValueError(f"'{key}' must be {accepted}, not {_options.quote(value)}.")
    return float(value)


def get_synchronize_session(app: Flask) -> SynchronizeSession | None:
    """Read ``SESSIONEXT_SYNCHRONIZE_SESSION``; ``None`` when unset.

    :raise ValueError: the value is not one SQLAlchemy accepts.
    """
    value = app.config.get("SESSIONEXT_SYNCHRONIZE_SESSION")
    if value is None:
        return None
    if value is not False and not (
        isinstance(value, str) and value in ("auto", "evaluate", "fetch")
    ):
        raise ValueError(
            f"'SESSIONEXT_SYNCHRONIZE_SESSION' must be one of 'auto', 'evaluate',"
            f" 'fetch' or False, not {_options.quote(value)}."
        )
    return t.cast(SynchronizeSession, value)


def get_bind_configs(
    app: Flask, engine_options: Mapping[str, t.Any] | None
) -> dict[str | None, dict[str, t.Any]]:
    """Collect the ``create_engine`` arguments of every bind, keyed by bind key.

    The default bind is under ``None``. Each value holds ``url`` and the merged
    engine options: constructor, then ``SESSIONEXT_ENGINE_OPTIONS``, then the
    bind's own dict.

    :raise TypeError: a bind is neither a string nor a dict with a ``url``.
    """
    base = get_options(app, "SESSIONEXT_ENGINE_OPTIONS", engine_options)
    if get_bool(app, "SESSIONEXT_ECHO", False):
        base.setdefault("echo", True)

    binds = app.config.get("SESSIONEXT_BINDS")
    if binds is None:
        binds = {}
    elif not isinstance(binds, Mapping):
        raise TypeError(
            "'SESSIONEXT_BINDS' must be a mapping of bind keys to URLs or dicts,"
            f" not {type(binds).__name__}."
        )

    default_uri = app.config.get("SESSIONEXT_DATABASE_URI")
    if default_uri is None or default_uri == "":
        default_uri = "sqlite:///app.sqlite3"
    configs: dict[str | None, dict[str, t.Any]] = {
        None: {**base, "url": _check_url_type("SESSIONEXT_DATABASE_URI", default_uri)}
    }

    for key, value in binds.items():
        where = f"SESSIONEXT_BINDS[{key!r}]"
        if not isinstance(key, str):
            raise TypeError(
                "Bind keys in 'SESSIONEXT_BINDS' must be strings,"
                f" not {_options.quote(key)}."
            )
        if isinstance(value, Mapping):
            if "url" not in value:
                raise TypeError(
                    f"'{where}' is a dict without a 'url' key; give"
                    " {'url': 'dialect://...', **engine_options} or a URL string."
                )
            _options.check_names(where, value)
            configs[key] = {
                **base,
                **value,
                "url": _check_url_type(f"{where}['url']", value["url"]),
            }
        else:
            configs[key] = {**base, "url": _check_url_type(where, value)}

    return configs


def _check_url_type(where: str, value: object) -> str | URL:
    if isinstance(value, (str, URL)):
        return value
    accepted = (
        "a URL string or a dict with a 'url' key"
        if where.startswith("SESSIONEXT_BINDS") and not where.endswith("['url']")
        else "a URL string or a sqlalchemy.engine.URL"
    )
    # The type only: the repr of a list or a tuple may hold a password.
    raise TypeError(f"'{where}' must be {accepted}, not {type(value).__name__}.")


def create_engine(
    app: Flask, where: str, options: dict[str, t.Any], ping_after_idle: float
) -> sa.Engine:
    """Create an engine from a bind config of :func:`get_bind_configs`.

    Relative SQLite paths resolve against ``app.instance_path`` (created if
    missing); in-memory SQLite has one connection, which threads take in
    turn, one transaction at a time; server
    databases get ``pool_pre_ping`` unless the options say otherwise, or
    the liveness check of :mod:`._liveness` replaces it (``ping_after_idle``
    is the value of ``SESSIONEXT_PING_AFTER_IDLE``).

    :raise ValueError: the URL cannot be parsed, or names an unknown dialect or
        a driver that is not installed; an engine option has a value that
        ``create_engine()`` refuses.
    :raise TypeError: an engine option is unknown, or of the wrong type.
    """
    options = dict(options)
    raw_url = options.pop("url")
    try:
        url = sa.make_url(raw_url)
    except (sa_exc.ArgumentError, ValueError):
        # Not chained: SQLAlchemy's message may quote the URL, password included.
        raise ValueError(
            f"'{where}' is not a valid database URL: {mask_url(raw_url)!r}."
            " Give 'dialect[+driver]://user:password@host[:port]/database',"
            " for example 'sqlite:///app.sqlite3' or"
            " 'postgresql+psycopg://user:password@127.0.0.1/app'."
        ) from None

    _options.check_engine_options(app, where, url, options)
    if url.get_backend_name() == "sqlite":
        url, options = _sqlite_options(app, url, options)
    elif not _liveness.replaces_pre_ping(url, options, ping_after_idle):
        options.setdefault("pool_pre_ping", True)

    try:
        return sa.create_engine(url, **options)
    except sa_exc.NoSuchModuleError as e:
        if "sqlalchemy.plugins:" in str(e):  # a bad 'plugins' option, not the URL
            error = _options.engine_error(app, where, url, options, e)
            raise error from _options.cause(e, url.password)
        raise ValueError(
            f"'{where}' names an unknown dialect or driver"
            f" '{url.drivername}' in {mask_url(url)!r}. Use a dialect that"
            " SQLAlchemy or an installed plugin provides, such as 'sqlite',"
            " 'postgresql+psycopg' or 'mysql+pymysql'."
        ) from e
    except ImportError as e:
        # Not chained: the driver's own message is quoted, and its traceback
        # through SQLAlchemy's dialect loading would bury this one line.
        raise ValueError(_missing_driver(where, url, e)) from None
    except _options.OPTION_ERRORS as e:
        error = _options.engine_error(app, where, url, options, e)
        raise error from _options.cause(e, url.password)


#: The distribution to install for a driver module that is missing.
_DRIVER_PACKAGES = {
    "psycopg": "'Flask-SessionExt[postgresql]'",
    "psycopg2": "psycopg2-binary",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "pymysql": "PyMySQL",
    "MySQLdb": "mysqlclient",
    "mysql": "mysql-connector-python",
    "mariadb": "mariadb",
    "aiomysql": "aiomysql",
    "asyncmy": "asyncmy",
    "aiosqlite": "aiosqlite",
    "oracledb": "oracledb",
    "cx_Oracle": "cx_Oracle",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}


def _missing_driver(where: str, url: URL, error: ImportError) -> str:
    """One line naming the package that provides the driver of ``url``."""
    module = (error.name or url.get_dialect().driver).partition(".")[0]
    package = _DRIVER_PACKAGES.get(module)
    install = (
        f"pip install {package}"
        if package
        else f"install the package that provides the module '{module}'"
    )
    return (
        f"'{where}' uses '{url.drivername}', whose driver is not installed"
        f" ({error}); {install}, or name an installed driver in the URL."
    )


def _sqlite_options(
    app: Flask, url: URL, options: dict[str, t.Any]
) -> tuple[URL, dict[str, t.Any]]:
    database = url.database
    if database in (None, "", ":memory:") or (url.query.get("mode") == "memory"):
        # One connection, so every thread sees the same database, checked
        # out by one session at a time: a transaction on it is shared by all
        # its users, so another thread's commit would commit this one's work.
        options.setdefault("poolclass", QueuePool)
        if options["poolclass"] is QueuePool:
            options.setdefault("pool_size", 1)
            options.setdefault("max_overflow", 0)
        connect_args = dict(options.get("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        options["connect_args"] = connect_args
    elif not database.startswith("file:") and not os.path.isabs(database):
        os.makedirs(app.instance_path, exist_ok=True)
        url = url.set(database=os.path.join(app.instance_path, database))
    return url, options
