"""The engines of one app, created from its :class:`._settings.Settings`;
options that ``create_engine()`` refuses are reported by name, with where
they were set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy.engine import URL

from . import _fork_safety, _liveness, _sqlite_pragmas, _sqlite_transactions
from ._bind_settings import ENGINE_ARGUMENT, BindSettings
from ._listeners import Listeners
from ._passwords import cause, mask_url
from ._refused_options import MAPPINGS, OPTION_ERRORS, culprit, option_error
from ._settings import Settings

#: The names in SQLAlchemy's "Invalid argument(s) 'a','b' sent to create_engine()".
_INVALID_RE = re.compile(r"Invalid argument\(s\) (.+?) sent to create_engine")

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


def create_engines(settings: Settings) -> dict[str | None, sa.Engine]:
    """One engine per bind of ``settings``, by bind key; opens no connection.

    :raise ValueError: a URL names an unknown dialect or a driver that is not
        installed; an engine option has a value that ``create_engine()``
        refuses.
    :raise TypeError: an engine option is unknown, or of the wrong type.
    """
    return {key: create_engine(bind) for key, bind in settings.binds.items()}


def prepare_engines(
    engines: Mapping[str | None, sa.Engine], settings: Settings, listeners: Listeners
) -> None:
    """Give each engine what the extension adds to it: the PRAGMAs of SQLite
    and the transaction fix of the ``sqlite3`` driver, the liveness check of
    PostgreSQL connections (where it replaces ``pool_pre_ping``), and fork
    safety.
    """
    for key, engine in engines.items():
        _sqlite_pragmas.install(listeners, engine, settings.binds[key].pragmas)
        if _sqlite_transactions.needs_fix(engine):
            _sqlite_transactions.install(engine)
        elif settings.binds[key].liveness:
            _liveness.install(listeners, engine, settings.ping_after_idle)
    _fork_safety.dispose_in_child(list(engines.values()))


def create_engine(bind: BindSettings) -> sa.Engine:
    """The engine of ``bind``.

    :raise ValueError: the URL names an unknown dialect or a driver that is
        not installed; an option has a value that ``create_engine()`` refuses.
    :raise TypeError: an option is unknown, or of the wrong type.
    """
    _check_mappings(bind)
    url, options = bind.url, dict(bind.options)
    try:
        return sa.create_engine(url, **options)
    except sa_exc.NoSuchModuleError as e:
        if "sqlalchemy.plugins:" in str(e):  # a bad 'plugins' option, not the URL
            raise _engine_error(bind, e) from cause(e, url.password)
        raise ValueError(
            f"'{bind.where}' names an unknown dialect or driver"
            f" '{url.drivername}' in {mask_url(url)!r}. Use a dialect that"
            " SQLAlchemy or an installed plugin provides, such as 'sqlite',"
            " 'postgresql+psycopg' or 'mysql+pymysql'."
        ) from e
    except ImportError as e:
        # Not chained: the driver's own message is quoted, and its traceback
        # through SQLAlchemy's dialect loading would bury this one line.
        raise ValueError(_missing_driver(bind.where, url, e)) from None
    except OPTION_ERRORS as e:
        raise _engine_error(bind, e) from cause(e, url.password)


def _refuser(bind: BindSettings) -> str:
    """What refuses the options of ``bind``, for messages."""
    return f"create_engine() for '{bind.where}' ({mask_url(bind.url)!r})"


def _check_mappings(bind: BindSettings) -> None:
    """Refuse engine options that must be mappings and are not, before
    anything uses them.

    :raise TypeError: such an option is not a mapping.
    """
    options = bind.options
    for name in sorted(MAPPINGS & options.keys()):
        value = options[name]
        if not isinstance(value, Mapping):
            error = TypeError(f"{type(value).__name__} is not a mapping")
            raise option_error(_refuser(bind), bind.origins, name, options, error)


def _engine_error(bind: BindSettings, error: Exception) -> Exception:
    """The error to raise for the options of ``bind`` that ``create_engine()``
    refused with ``error``.
    """
    url, options, refuser = bind.url, bind.options, _refuser(bind)
    invalid = _INVALID_RE.search(str(error))
    if invalid is None:
        name = culprit(options, lambda one: sa.create_engine(url, **one), error)
        return option_error(refuser, bind.origins, name, options, error, url.password)
    names = invalid.group(1)
    first = names.split(",")[0].strip("'")
    return TypeError(
        f"{bind.origins.get(first, ENGINE_ARGUMENT)} has the option(s) {names},"
        f" which {refuser} does not take. Remove them, or give options of"
        " its dialect and pool, such as 'pool_size', 'pool_recycle', 'echo',"
        " 'connect_args' or 'execution_options'."
    )


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
