"""Engine and Session options that SQLAlchemy refuses, reported as errors
that name the option, where it was set, its value and what it takes.

SQLAlchemy refuses a bad option from deep inside ``create_engine()`` (an
``AttributeError``, a ``KeyError``, ...), and a bad Session option only when
the first Session is made. These helpers turn either into a ``TypeError`` or
``ValueError`` at ``init_app``, never quoting a password.
"""

from __future__ import annotations

import inspect
import re
import reprlib
import typing as t
import warnings
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as orm
from flask import Flask
from sqlalchemy.engine import URL

#: What SQLAlchemy raises, from deep inside, for an option it cannot use.
OPTION_ERRORS = (
    TypeError,
    ValueError,
    LookupError,
    AttributeError,
    sa_exc.ArgumentError,
)

#: The ``user:password@`` part of a URL that SQLAlchemy could not parse.
_USERINFO_RE = re.compile(r"^((?:[^:/@]*://)?).*@")
#: The password of a URL quoted in some text, e.g. in an error of SQLAlchemy.
_PASSWORD_RE = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
#: The names in SQLAlchemy's "Invalid argument(s) 'a','b' sent to create_engine()".
_INVALID_RE = re.compile(r"Invalid argument\(s\) (.+?) sent to create_engine")
#: Options whose values may hold secrets: messages show their type only.
_SECRET_RE = re.compile(r"pass|secret|token|key|credential|connect_args|creator", re.I)
#: Options whose values are mappings.
_MAPPINGS = frozenset({"binds", "connect_args", "execution_options", "info"})

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


def mask_url(url: str | URL) -> str:
    """Render ``url`` for a message, with its password replaced by ``***``."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError, TypeError):
        # Unparsable: hide everything that might be user info.
        return _USERINFO_RE.sub(r"\1***@", url, count=1)


def describe(value: object, *, secret: bool = False) -> str:
    """``value`` for a message: its type and a short repr, in which anything
    like user info of a URL, and the values of secret-looking keys, are hidden.
    """
    kind = type(value).__name__
    if secret:
        return f"a {kind} (hidden)"
    if isinstance(value, str):
        text = _USERINFO_RE.sub(r"\1***@", value, count=1)
        return f"{kind} {text if len(text) <= 60 else text[:57] + '...'!r}"
    if isinstance(value, Mapping):
        value = {
            k: "***" if isinstance(k, str) and _SECRET_RE.search(k) else v
            for k, v in value.items()
        }
    text = reprlib.repr(value)
    if "@" in text:
        return f"a {kind}"  # it may hold a URL with a password
    return f"{kind} {text}"


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


class Source:
    """Says which config key, or constructor argument, set an option."""

    def __init__(self, app: Flask, refuser: str, where: str | None = None) -> None:
        #: What refused the option, for messages.
        self.refuser = refuser
        kind = "SESSION" if where is None else "ENGINE"
        self._key = f"SESSIONEXT_{kind}_OPTIONS"
        self._configured: Mapping[str, t.Any] = app.config.get(self._key) or {}
        self._where = where
        self._own: Mapping[str, t.Any] = {}
        binds = app.config.get("SESSIONEXT_BINDS")
        for key, value in binds.items() if isinstance(binds, Mapping) else ():
            if f"SESSIONEXT_BINDS[{key!r}]" == where and isinstance(value, Mapping):
                self._own = value

    def __call__(self, name: str | None) -> str:
        """Where option ``name`` was set, as a message starts it."""
        if name in self._own:
            return f"'{self._where}'"
        if name in self._configured:
            return f"'{self._key}'"
        argument = "session_options" if self._where is None else "engine_options"
        return f"The '{argument}' of SessionExt()"


def check_session_options(app: Flask, options: Mapping[str, t.Any]) -> None:
    """Refuse now what the sessionmaker would refuse only when it makes the
    first Session, by making a throwaway Session (it opens no connection).

    :raise TypeError: an option is unknown, or of the wrong type.
    :raise ValueError: an option has a value that the Session refuses.
    """
    source = Source(app, "sqlalchemy.orm.Session")
    if "bind" in options:
        raise TypeError(
            f"{source('bind')} sets 'bind', which the extension sets itself."
            " Remove it, and give the databases in 'SESSIONEXT_DATABASE_URI'"
            " and 'SESSIONEXT_BINDS'."
        )
    class_ = options.get("class_")
    if class_ is None:
        class_ = orm.Session
    elif not (isinstance(class_, type) and issubclass(class_, orm.Session)):
        raise TypeError(
            f"{source('class_')} has 'class_' = {describe(class_)}, but the"
            " 'class_' session option must be a subclass of"
            " sqlalchemy.orm.Session. Give one, or None."
        )
    takes = _keywords(class_.__init__) - {"bind"}
    if "**" not in takes:
        for name in options:
            if name != "class_" and name not in takes:
                accepted = ", ".join(repr(n) for n in sorted({*takes, "class_"}))
                raise TypeError(
                    f"{source(name)} has the option {name!r}, which"
                    f" {class_.__qualname__} does not take. Accepted: {accepted}."
                )
    own = _keywords(orm.Session.__init__)
    trial = {name: value for name, value in options.items() if name in own}
    try:
        _quietly(lambda: orm.Session(**trial))
    except OPTION_ERRORS as e:
        culprit = _culprit(trial, lambda one: orm.Session(**one), e)
        raise option_error(source, culprit, trial, e) from cause(e)


def _keywords(function: t.Callable[..., t.Any]) -> set[str]:
    """The keyword arguments ``function`` takes; ``"**"`` for any."""
    names = set()
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD:
            names.add("**")
        elif parameter.kind is not parameter.VAR_POSITIONAL:
            names.add(name)
    return names - {"self"}


def check_engine_options(
    app: Flask, where: str, url: URL, options: Mapping[str, t.Any]
) -> None:
    """Refuse engine options that must be mappings and are not, before
    anything uses them.

    :raise TypeError: such an option is not a mapping.
    """
    for name in sorted(_MAPPINGS & options.keys()):
        value = options[name]
        if not isinstance(value, Mapping):
            error = TypeError(f"{type(value).__name__} is not a mapping")
            raise option_error(engine_source(app, where, url), name, options, error)


def engine_source(app: Flask, where: str, url: URL) -> Source:
    """The :class:`Source` of the engine options of bind ``where``."""
    return Source(app, f"create_engine() for '{where}' ({mask_url(url)!r})", where)


def engine_error(
    app: Flask, where: str, url: URL, options: Mapping[str, t.Any], error: Exception
) -> Exception:
    """The error to raise for engine ``options`` that ``create_engine()``
    refused with ``error``.
    """
    source = engine_source(app, where, url)
    invalid = _INVALID_RE.search(str(error))
    if invalid is None:
        name = _culprit(options, lambda one: sa.create_engine(url, **one), error)
        return option_error(source, name, options, error, url.password)
    names = invalid.group(1)
    return TypeError(
        f"{source(names.split(',')[0].strip(chr(39)))} has the option(s) {names},"
        f" which {source.refuser} does not take. Remove them, or give options of"
        " its dialect and pool, such as 'pool_size', 'pool_recycle', 'echo',"
        " 'connect_args' or 'execution_options'."
    )


def _culprit(
    options: Mapping[str, t.Any],
    attempt: t.Callable[[dict[str, t.Any]], object],
    error: Exception,
) -> str | None:
    """The option that makes ``attempt`` fail alone as it failed with all
    ``options`` (with ``error``); ``None`` when none does.
    """
    for name, value in options.items():
        try:
            _quietly(lambda: attempt({name: value}))  # noqa: B023 (called at once)
        except type(error):
            return name
        except Exception:  # another error: not the culprit of this one
            continue
    return None


def option_error(
    source: Source,
    name: str | None,
    options: Mapping[str, t.Any],
    error: Exception,
    password: str | None = None,
) -> Exception:
    """``TypeError`` (wrong type) or ``ValueError`` (refused value) for the
    option ``name`` that ``source.refuser`` refused with ``error``.
    """
    reason = type(error).__name__
    if not password or password not in str(error):
        reason = f"{reason}: {hide_passwords(str(error)).rstrip('.')}"
    kind: type[Exception] = ValueError
    if isinstance(error, (TypeError, AttributeError)) or (
        name in _MAPPINGS and not isinstance(options[name], Mapping)
    ):
        kind = TypeError
    if name is None:
        names = ", ".join(repr(n) for n in options)
        return kind(
            f"{source.refuser} refuses the options {names} together ({reason})."
            " Give only options and values that SQLAlchemy documents for it."
        )
    value = describe(options[name], secret=bool(_SECRET_RE.search(name)))
    if password:
        value = value.replace(password, "***")
    accepted = _ACCEPTED.get(name, "a value that SQLAlchemy documents for it")
    return kind(
        f"{source(name)} has {name!r} = {value}, which {source.refuser} refuses"
        f" ({reason}). Give {accepted}."
    )


def _quietly(call: t.Callable[[], object]) -> None:
    """Make a throwaway Engine or Session, without its warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call()


def cause(error: BaseException, password: str | None = None) -> BaseException | None:
    """``error``, to chain a new error to; ``None`` when it, or an exception
    it chains to, may quote ``password`` or the password of any URL.
    """
    seen: BaseException | None = error
    while seen is not None:
        text = f"{seen} {seen.args!r}"
        if (password and password in text) or _PASSWORD_RE.search(text):
            return None
        seen = seen.__cause__ or seen.__context__
    return error


def quote(value: object) -> str:
    """``repr(value)`` with the password of any URL in it hidden."""
    return hide_passwords(repr(value))


def hide_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _PASSWORD_RE.sub(r"\1***@", text)
