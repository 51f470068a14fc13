"""Engine and Session options that SQLAlchemy refuses, reported as errors
that name the option, where it was set, its value and what it takes.

SQLAlchemy refuses a bad option from deep inside ``create_engine()`` (an
``AttributeError``, a ``KeyError``, ...), and a bad Session option only when
the first Session is made. :func:`option_error` turns either into a
``TypeError`` or ``ValueError`` at ``init_app``, never quoting a password.
"""

from __future__ import annotations

import inspect
import typing as t
import warnings
from collections.abc import Mapping

import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm

from .passwords import cause, describe, hide_passwords, is_secret

#: What SQLAlchemy raises, from deep inside, for an option it cannot use.
OPTION_ERRORS = (
    TypeError,
    ValueError,
    LookupError,
    AttributeError,
    sa_exc.ArgumentError,
)

#: Options whose values are mappings.
MAPPINGS = frozenset({"binds", "connect_args", "execution_options", "info"})

#: What the commonest options take, for the message of a refused value.
_ACCEPTED = {
    # create_engine()
    "connect_args": "a dict of arguments of the driver's connect()",
    "creator": "a function that returns a DBAPI connection",
    "echo": "True, False or 'debug'",
    "echo_pool": "True, False or 'debug'",
    "execution_options": "a dict of execution options",
    "isolation_level": "an isolation level name, such as 'READ COMMITTED'",
    "max_overflow": "an int",
    "module": "a DBAPI module",
    "plugins": "a list of plugin names",
    "pool": "a sqlalchemy.pool.Pool instance",
    "pool_reset_on_return": "'rollback', 'commit' or None",
    "pool_size": "an int",
    "poolclass": "a subclass of sqlalchemy.pool.Pool",
    # Session()
    "autobegin": "True or False",
    "autocommit": "False (SQLAlchemy 2 has no autocommit mode)",
    "autoflush": "True or False",
    "binds": "a dict of mapped classes or tables to engines",
    "expire_on_commit": "True or False",
    "future": "True",
    "info": "a dict",
    "join_transaction_mode": "'conservative_savepoint', 'create_savepoint',"
    " 'control_fully' or 'rollback_only'",
    "query_cls": "a subclass of sqlalchemy.orm.Query",
    "twophase": "True or False",
}


def check_session_options(
    options: Mapping[str, t.Any], origins: Mapping[str, str]
) -> None:
    """Refuse now what the sessionmaker would refuse only when it makes the
    first Session, by making a throwaway Session (it opens no connection).

    :param options: the Session options, ``class_`` included.
    :param origins: where each of ``options`` was set, as a message starts it.
    :raise TypeError: an option is unknown, or of the wrong type.
    :raise ValueError: an option has a value that the Session refuses.
    """
    refuser = "sqlalchemy.orm.Session"
    if "bind" in options:
        raise TypeError(
            f"{origins['bind']} sets 'bind', which the extension sets itself."
            " Remove it, and give the databases in 'SESSIONEXT_DATABASE_URI'"
            " and 'SESSIONEXT_BINDS'."
        )
    class_ = options.get("class_")
    if class_ is not None and not (
        isinstance(class_, type) and issubclass(class_, orm.Session)
    ):
        raise TypeError(
            f"{origins['class_']} has 'class_' = {describe(class_)}, but the"
            " 'class_' session option must be a subclass of"
            " sqlalchemy.orm.Session. Give one, or None."
        )
    checked = class_ or orm.Session
    takes = _keywords(checked.__init__) - {"bind"}
    if "**" not in takes:
        for name in options:
            if name != "class_" and name not in takes:
                accepted = ", ".join(repr(n) for n in sorted({*takes, "class_"}))
                raise TypeError(
                    f"{origins[name]} has the option {name!r}, which"
                    f" {checked.__qualname__} does not take. Accepted: {accepted}."
                )
    own = _keywords(orm.Session.__init__)
    trial = {name: value for name, value in options.items() if name in own}
    try:
        quietly(lambda: orm.Session(**trial))
    except OPTION_ERRORS as e:
        blamed = culprit(trial, lambda one: orm.Session(**one), e)
        raise option_error(refuser, origins, blamed, trial, e) from cause(e)


def _keywords(function: t.Callable[..., t.Any]) -> set[str]:
    """The keyword arguments ``function`` takes; ``"**"`` for any."""
    names = set()
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD:
            names.add("**")
        elif parameter.kind is not parameter.VAR_POSITIONAL:
            names.add(name)
    return names - {"self"}


def option_error(
    refuser: str,
    origins: Mapping[str, str],
    name: str | None,
    options: Mapping[str, t.Any],
    error: Exception,
    password: str | None = None,
) -> Exception:
    """``TypeError`` (wrong type) or ``ValueError`` (refused value) for the
    option ``name`` that ``refuser`` refused with ``error``.

    :param refuser: what refused it, such as ``"sqlalchemy.orm.Session"``.
    :param origins: where each of ``options`` was set, as a message starts
        it (see :attr:`._bind_settings.BindSettings.origins`).
    :param name: the option to blame; ``None`` when no one option is.
    :param password: the password of the engine's URL, never to be quoted.
    """
    reason = type(error).__name__
    if not password or password not in str(error):
        reason = f"{reason}: {hide_passwords(str(error)).rstrip('.')}"
    kind: type[Exception] = ValueError
    if isinstance(error, (TypeError, AttributeError)) or (
        name in MAPPINGS and not isinstance(options[name], Mapping)
    ):
        kind = TypeError
    if name is None:
        names = ", ".join(repr(n) for n in options)
        return kind(
            f"{refuser} refuses the options {names} together ({reason})."
            " Give only options and values that SQLAlchemy documents for it."
        )
    value = describe(options[name], secret=is_secret(name))
    if password:
        value = value.replace(password, "***")
    accepted = _ACCEPTED.get(name, "a value that SQLAlchemy documents for it")
    return kind(
        f"{origins[name]} has {name!r} = {value}, which {refuser} refuses"
        f" ({reason}). Give {accepted}."
    )


def culprit(
    options: Mapping[str, t.Any],
    attempt: t.Callable[[dict[str, t.Any]], object],
    error: Exception,
) -> str | None:
    """The option that makes ``attempt`` fail alone as it failed with all
    ``options`` (with ``error``); ``None`` when none does.
    """
    for name, value in options.items():
        try:
            quietly(lambda: attempt({name: value}))  # noqa: B023 (called at once)
        except type(error):
            return name
        except Exception:  # another error: not the culprit of this one
            continue
    return None


def quietly(call: t.Callable[[], object]) -> None:
    """Make a throwaway Engine or Session, without its warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call()
