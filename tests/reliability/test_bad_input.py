"""Every misconfiguration and misuse (a bad URL, bind, option or key, a
session or engine used outside an app context, a second init_app, a
misnamed listener) fails where it happens, with a clear built-in error that
names what was wrong and what is accepted, and never quotes a password; so
does random garbage.
"""

from __future__ import annotations

import re
import traceback
import typing as t
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flask_sessionext
from flask_sessionext import SessionExt, signals
from flask_sessionext.testing import rollback

from _postgres import APP_PASSWORD

PW = APP_PASSWORD
PG = f"postgresql+psycopg://user:{PW}@127.0.0.1:5432/app"
PACKAGE = str(Path(flask_sessionext.__file__).parent)


def make_app(tmp_path: Path, **config: t.Any) -> Flask:
    """A Flask app with an instance folder under ``tmp_path``."""
    app = Flask("bad_input", instance_path=str(tmp_path / "instance"))
    app.config.update(config)
    return app


def init(**config: t.Any) -> Callable[[Path], object]:
    """``SessionExt(app)`` on an app with ``config``."""
    return lambda tmp_path: SessionExt(make_app(tmp_path, **config))


def twice(tmp_path: Path) -> None:
    """``init_app`` on an app that already has a SessionExt."""
    app = make_app(tmp_path)
    SessionExt(app)
    SessionExt().init_app(app)


def in_context(
    use: Callable[[SessionExt], object], **config: t.Any
) -> Callable[[Path], object]:
    """``use(db)`` in an app context of an app of ``db``."""

    def action(tmp_path: Path) -> None:
        app = make_app(tmp_path, **config)
        db = SessionExt(app)
        with app.app_context():
            use(db)

    return action


def unregistered(use: Callable[[SessionExt], object]) -> Callable[[Path], object]:
    """``use(db)`` in an app context of an app that was never init_app-ed."""

    def action(tmp_path: Path) -> None:
        with make_app(tmp_path).app_context():
            use(SessionExt())

    return action


def outside(use: Callable[[SessionExt], object]) -> Callable[[Path], object]:
    """``use(db)`` with no app context."""
    return lambda tmp_path: use(SessionExt(make_app(tmp_path)))


class Misspelt:
    """A listener with a misspelt signal method, and a right one."""

    def before_flsuh(self, sender: Flask, **kwargs: t.Any) -> None:
        """Misspelt."""

    def after_commit(self, sender: Flask, **kwargs: t.Any) -> None:
        """Right."""


class NoSignals:
    """A listener with no signal method."""

    def handle(self, sender: Flask, **kwargs: t.Any) -> None:
        """Not a signal name."""


def nested_rollback(tmp_path: Path) -> None:
    """Two ``rollback()`` blocks on one app."""
    app = make_app(tmp_path, SESSIONEXT_DATABASE_URI="sqlite://")
    SessionExt(app)
    with rollback(app), rollback(app):
        pass


@dataclass(frozen=True)
class Case:
    """One mistake: what raises, the error type, and patterns that the
    message must match: what was wrong, and what is accepted.
    """

    id: str
    action: Callable[[Path], object]
    error: type[Exception]
    wrong: str
    accepted: str


CASES = [
    # URLs
    Case(
        "unparsable URL",
        init(SESSIONEXT_DATABASE_URI=f"not a url :{PW}@"),
        ValueError,
        r"'SESSIONEXT_DATABASE_URI' is not a valid database URL: '\*\*\*@'",
        r"Give 'dialect\[\+driver\]://user:password@host\[:port\]/database'",
    ),
    Case(
        "unknown dialect",
        init(SESSIONEXT_DATABASE_URI=f"nosuchdb://u:{PW}@h/x"),
        ValueError,
        r"unknown dialect or driver 'nosuchdb' in 'nosuchdb://u:\*\*\*@h/x'",
        r"such as 'sqlite', 'postgresql\+psycopg'",
    ),
    Case(
        "driver not installed",
        init(SESSIONEXT_DATABASE_URI=f"mysql+pymysql://u:{PW}@h/x"),
        ValueError,
        r"'SESSIONEXT_DATABASE_URI' uses 'mysql\+pymysql', whose driver is"
        r" not installed",
        r"pip install PyMySQL, or name an installed driver",
    ),
    Case(
        "unparsable bind URL",
        init(SESSIONEXT_BINDS={"reports": f"::{PW}@"}),
        ValueError,
        r"'SESSIONEXT_BINDS\['reports'\]' is not a valid database URL",
        r"for example 'sqlite:///app.sqlite3'",
    ),
    Case(
        "database URI of the wrong type",
        init(SESSIONEXT_DATABASE_URI=5),
        TypeError,
        r"'SESSIONEXT_DATABASE_URI' must be .*, not int",
        r"a URL string or a sqlalchemy\.engine\.URL",
    ),
    # Binds
    Case(
        "bind as int",
        init(SESSIONEXT_BINDS={"x": 42}),
        TypeError,
        r"'SESSIONEXT_BINDS\['x'\]' must be .*, not int",
        r"a URL string or a dict with a 'url' key",
    ),
    Case(
        "bind as list holding a password",
        init(SESSIONEXT_BINDS={"x": [PG]}),
        TypeError,
        r"'SESSIONEXT_BINDS\['x'\]' must be .*, not list",
        r"a URL string or a dict with a 'url' key",
    ),
    Case(
        "bind as None",
        init(SESSIONEXT_BINDS={"x": None}),
        TypeError,
        r"'SESSIONEXT_BINDS\['x'\]' must be .*, not NoneType",
        r"a URL string or a dict with a 'url' key",
    ),
    Case(
        "bind dict without url",
        init(SESSIONEXT_BINDS={"x": {"echo": True}}),
        TypeError,
        r"'SESSIONEXT_BINDS\['x'\]' is a dict without a 'url' key",
        r"give \{'url': 'dialect://\.\.\.', \*\*engine_options\} or a URL string",
    ),
    Case(
        "bind dict whose url is an int",
        init(SESSIONEXT_BINDS={"x": {"url": 5}}),
        TypeError,
        r"'SESSIONEXT_BINDS\['x'\]\['url'\]' must be .*, not int",
        r"a URL string or a sqlalchemy\.engine\.URL",
    ),
    Case(
        "binds not a mapping",
        init(SESSIONEXT_BINDS=[PG]),
        TypeError,
        r"'SESSIONEXT_BINDS' must be .*, not list",
        r"a mapping of bind keys to URLs or dicts",
    ),
    Case(
        "binds an empty list",
        init(SESSIONEXT_BINDS=[]),
        TypeError,
        r"'SESSIONEXT_BINDS' must be .*, not list",
        r"a mapping of bind keys to URLs or dicts",
    ),
    Case(
        "bind key not a string",
        init(SESSIONEXT_BINDS={1: "sqlite://"}),
        TypeError,
        r"Bind keys in 'SESSIONEXT_BINDS' .*, not 1",
        r"must be strings",
    ),
    # Options
    Case(
        "engine options a string",
        init(SESSIONEXT_ENGINE_OPTIONS="echo=True"),
        TypeError,
        r"'SESSIONEXT_ENGINE_OPTIONS' must be .*, not str 'echo=True'",
        r"a mapping of option names to values or None",
    ),
    Case(
        "engine options a URL",
        init(SESSIONEXT_ENGINE_OPTIONS=PG),
        TypeError,
        r"'SESSIONEXT_ENGINE_OPTIONS' must be .*, not str 'postgresql\+psycopg://\*\*\*@",
        r"a mapping of option names to values or None",
    ),
    Case(
        "session options a list",
        init(SESSIONEXT_SESSION_OPTIONS=[("autoflush", False)]),
        TypeError,
        r"'SESSIONEXT_SESSION_OPTIONS' must be .*, not list",
        r"a mapping of option names to values or None",
    ),
    Case(
        "engine_options argument not a mapping",
        lambda tmp_path: SessionExt(engine_options=[("echo", True)]),  # type: ignore[arg-type]
        TypeError,
        r"'engine_options' must be .*, not list",
        r"a mapping of option names to values or None",
    ),
    Case(
        "session_options argument not a mapping",
        lambda tmp_path: SessionExt(session_options="autoflush"),  # type: ignore[arg-type]
        TypeError,
        r"'session_options' must be .*, not str 'autoflush'",
        r"a mapping of option names to values or None",
    ),
    Case(
        "option name not a string",
        init(SESSIONEXT_ENGINE_OPTIONS={1: 2}),
        TypeError,
        r"'SESSIONEXT_ENGINE_OPTIONS' has an option name that is not a string: int 1",
        r"Option names are strings",
    ),
    Case(
        "unknown engine option",
        init(SESSIONEXT_ENGINE_OPTIONS={"no_such_option": 1}),
        TypeError,
        r"'SESSIONEXT_ENGINE_OPTIONS' has the option\(s\) 'no_such_option', which"
        r" create_engine\(\) for 'SESSIONEXT_DATABASE_URI' .* does not take",
        r"such as 'pool_size', 'pool_recycle', 'echo', 'connect_args'",
    ),
    Case(
        "unknown engine option of a bind",
        init(SESSIONEXT_BINDS={"r": {"url": PG, "nope": 1}}),
        TypeError,
        r"'SESSIONEXT_BINDS\['r'\]' has the option\(s\) 'nope', which create_engine\(\)"
        r" for 'SESSIONEXT_BINDS\['r'\]' \('postgresql\+psycopg://user:\*\*\*@",
        r"such as 'pool_size'",
    ),
    Case(
        "engine option of the wrong type",
        init(SESSIONEXT_ENGINE_OPTIONS={"pool_size": "big"}),
        TypeError,
        r"'SESSIONEXT_ENGINE_OPTIONS' has 'pool_size' = str 'big',"
        r" which create_engine\(\)",
        r"Give an int",
    ),
    Case(
        "engine option with a bad value",
        init(SESSIONEXT_DATABASE_URI=PG, SESSIONEXT_ENGINE_OPTIONS={"echo": "loud"}),
        ValueError,
        r"'SESSIONEXT_ENGINE_OPTIONS' has 'echo' = str 'loud', which create_engine\(\)",
        r"Give True, False or 'debug'",
    ),
    Case(
        "engine option poolclass not a pool",
        init(SESSIONEXT_ENGINE_OPTIONS={"poolclass": "QueuePool"}),
        TypeError,
        r"has 'poolclass' = str 'QueuePool'",
        r"Give a subclass of sqlalchemy\.pool\.Pool",
    ),
    Case(
        "connect_args holding a password, not a dict",
        init(SESSIONEXT_ENGINE_OPTIONS={"connect_args": f"password={PW}"}),
        TypeError,
        r"has 'connect_args' = a str \(hidden\)",
        r"Give a dict of arguments of the driver's connect\(\)",
    ),
    Case(
        "engine_options argument with an unknown option",
        lambda tmp_path: SessionExt(make_app(tmp_path), engine_options={"nope": 1}),
        TypeError,
        r"The 'engine_options' of SessionExt\(\) has the option\(s\) 'nope'",
        r"such as 'pool_size'",
    ),
    Case(
        "unknown session option",
        init(SESSIONEXT_SESSION_OPTIONS={"no_such": 1}),
        TypeError,
        r"'SESSIONEXT_SESSION_OPTIONS' has the option 'no_such',"
        r" which Session does not take",
        r"Accepted: 'autobegin', .*'expire_on_commit'",
    ),
    Case(
        "session option bind",
        init(SESSIONEXT_SESSION_OPTIONS={"bind": sa.create_engine("sqlite://")}),
        TypeError,
        r"'SESSIONEXT_SESSION_OPTIONS' sets 'bind', which the extension sets itself",
        r"give the databases in 'SESSIONEXT_DATABASE_URI' and 'SESSIONEXT_BINDS'",
    ),
    Case(
        "session option with a bad value",
        init(SESSIONEXT_SESSION_OPTIONS={"join_transaction_mode": "sometimes"}),
        ValueError,
        r"'SESSIONEXT_SESSION_OPTIONS' has 'join_transaction_mode' = str 'sometimes'",
        r"Give 'conservative_savepoint', 'create_savepoint', 'control_fully' or"
        r" 'rollback_only'",
    ),
    Case(
        "session option of the wrong type",
        lambda tmp_path: SessionExt(make_app(tmp_path), session_options={"info": 1}),
        TypeError,
        r"The 'session_options' of SessionExt\(\) has 'info' = int 1",
        r"Give a dict",
    ),
    Case(
        "session class not a Session",
        init(SESSIONEXT_SESSION_OPTIONS={"class_": dict}),
        TypeError,
        r"'SESSIONEXT_SESSION_OPTIONS' has 'class_' = type <class 'dict'>",
        r"must be a subclass of sqlalchemy\.orm\.Session\. Give one, or None",
    ),
    # Other keys
    Case(
        "unknown synchronize_session",
        init(SESSIONEXT_SYNCHRONIZE_SESSION="sometimes"),
        ValueError,
        r"'SESSIONEXT_SYNCHRONIZE_SESSION' must be .*, not 'sometimes'",
        r"one of 'auto', 'evaluate', 'fetch' or False",
    ),
    Case(
        "boolean key of the wrong type",
        init(SESSIONEXT_COMMIT_ON_TEARDOWN="yes"),
        TypeError,
        r"'SESSIONEXT_COMMIT_ON_TEARDOWN' must be .*, not 'yes'",
        r"True or False",
    ),
    Case(
        "boolean key holding a URL",
        init(SESSIONEXT_RECORD_QUERIES=PG),
        TypeError,
        r"'SESSIONEXT_RECORD_QUERIES' must be .*,"
        r" not 'postgresql\+psycopg://user:\*\*\*@127\.0\.0\.1:5432/app'",
        r"True or False",
    ),
    Case(
        "echo of the wrong type",
        init(SESSIONEXT_ECHO="debug"),
        TypeError,
        r"'SESSIONEXT_ECHO' must be .*, not 'debug'",
        r"True or False",
    ),
    Case(
        "record queries limit of the wrong type",
        init(SESSIONEXT_RECORD_QUERIES_LIMIT="many"),
        TypeError,
        r"'SESSIONEXT_RECORD_QUERIES_LIMIT' must be .*, not 'many'",
        r"an int of at least 1",
    ),
    Case(
        "slow query threshold out of range",
        init(SESSIONEXT_SLOW_QUERY_THRESHOLD=-1),
        ValueError,
        r"'SESSIONEXT_SLOW_QUERY_THRESHOLD' must be .*, not -1",
        r"a number of seconds of at least 0",
    ),
    # Misuse
    Case(
        "init_app twice",
        twice,
        RuntimeError,
        r"The Flask app 'bad_input' already has a SessionExt",
        r"Use that instance, or a new Flask app",
    ),
    Case(
        "session outside an app context",
        outside(lambda db: db.session.execute(sa.text("SELECT 1"))),
        RuntimeError,
        r"Working outside of an application context",
        r"with app\.app_context\(\):",
    ),
    Case(
        "engine outside an app context",
        outside(lambda db: db.engine),
        RuntimeError,
        r"Working outside of an application context",
        r"with app\.app_context\(\):",
    ),
    Case(
        "on_commit outside an app context",
        outside(lambda db: db.on_commit(print)),
        RuntimeError,
        r"Working outside of an application context",
        r"with app\.app_context\(\):",
    ),
    Case(
        "unknown bind key",
        in_context(
            lambda db: db.get_engine("nope"), SESSIONEXT_BINDS={"other": "sqlite://"}
        ),
        KeyError,
        r"No bind 'nope' is configured",
        r"the known bind keys are None, 'other'",
    ),
    Case(
        "app never init_app-ed",
        unregistered(lambda db: db.session.execute(sa.select(1))),
        RuntimeError,
        r"The Flask app 'bad_input' is not registered with this SessionExt",
        r"Call 'db\.init_app\(app\)'",
    ),
    Case(
        "engine of an app never init_app-ed",
        unregistered(lambda db: db.engine),
        RuntimeError,
        r"'bad_input' is not registered with this SessionExt",
        r"Call 'db\.init_app\(app\)'",
    ),
    Case(
        "register() a misspelt signal method",
        lambda tmp_path: SessionExt().register(Misspelt()),
        ValueError,
        r"Misspelt\.before_flsuh\(\) is named like no signal",
        r"did you mean 'before_flush'\?",
    ),
    Case(
        "register() no signal method",
        lambda tmp_path: SessionExt().register(NoSignals()),
        TypeError,
        r"NoSignals has no public method named like a signal",
        r"Valid names: .*'?after_commit",
    ),
    Case(
        "rollback() on an app without SessionExt",
        lambda tmp_path: rollback(make_app(tmp_path)).__enter__(),
        RuntimeError,
        r"The Flask app 'bad_input' has no SessionExt",
        r"Call 'db\.init_app\(app\)'",
    ),
    Case(
        "nested rollback() blocks",
        nested_rollback,
        RuntimeError,
        r"A rollback block is already running on the Flask app 'bad_input'",
        r"blocks do not nest\. Use one block per test",
    ),
]


def assert_clean(error: BaseException) -> None:
    """``error`` and what its traceback would print quote no password."""
    printed = "".join(traceback.format_exception(error))
    assert PW not in printed
    assert PW not in repr(error.args)


def message(error: BaseException) -> str:
    """The message of ``error`` (a KeyError's too, without its quotes)."""
    return str(error.args[0]) if error.args else ""


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    """The mistake raises its built-in error type, whose message of one or
    two sentences names what was wrong and what is accepted, and quotes no
    password.
    """
    with pytest.raises(case.error, match=case.wrong) as info:
        case.action(tmp_path)
    assert type(info.value) is case.error
    text = message(info.value)
    assert re.search(case.wrong, text)
    assert re.search(case.accepted, text), text
    assert len(re.findall(r"[.?!](?:\s|$)", text)) <= 2, text
    assert_clean(info.value)


def test_the_table_covers_every_error_type() -> None:
    """The table has at least 20 cases, with every error type the extension
    raises for bad input: ValueError, TypeError, RuntimeError and KeyError.
    """
    assert len(CASES) >= 20
    assert {case.error for case in CASES} == {
        ValueError,
        TypeError,
        RuntimeError,
        KeyError,
    }


def test_register_that_raises_connects_nothing() -> None:
    """When register() refuses a listener, none of its methods stays connected."""
    with pytest.raises(ValueError, match="before_flsuh"):
        SessionExt().register(Misspelt())
    assert not signals.after_commit.receivers


# Hypothesis: garbage, with the password hidden in some of it.

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from([PG, f"sqlite://u:{PW}@/x.db", f"nosuch://u:{PW}@h/x", f"::{PW}@"]),
)
_garbage = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    ),
    max_leaves=6,
)
ENGINE_NAMES = [
    "connect_args",
    "echo",
    "echo_pool",
    "execution_options",
    "isolation_level",
    "max_overflow",
    "module",
    "plugins",
    "pool",
    "pool_pre_ping",
    "pool_recycle",
    "pool_reset_on_return",
    "pool_size",
    "pool_timeout",
    "poolclass",
]
SESSION_NAMES = [
    "autobegin",
    "autocommit",
    "autoflush",
    "binds",
    "class_",
    "execution_options",
    "expire_on_commit",
    "info",
    "join_transaction_mode",
    "query_cls",
    "twophase",
]


def _options(names: list[str]) -> st.SearchStrategy[object]:
    keys = st.one_of(st.sampled_from(names), st.text(max_size=8), st.integers())
    return st.one_of(_garbage, st.dictionaries(keys, _garbage, max_size=3))


_bind = st.one_of(
    _garbage,
    st.fixed_dictionaries(
        {"url": st.one_of(_garbage, st.just("sqlite://"))},
        optional={name: _garbage for name in ENGINE_NAMES[:6]},
    ),
)
_binds = st.one_of(
    _garbage,
    st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), _bind, max_size=3),
)

GARBAGE_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def bare_password(value: object) -> bool:
    """Whether ``value`` holds the password outside a URL's user info (as
    Hypothesis may draw it from this module's literals): a message may quote
    a bad value, so only passwords in URLs are secret there.
    """
    if isinstance(value, str):
        return PW in re.sub(rf"://[^:/@\s]*:{re.escape(PW)}@", "", value)
    if isinstance(value, dict):
        return any(bare_password(k) or bare_password(v) for k, v in value.items())
    if isinstance(value, list):
        return any(bare_password(item) for item in value)
    return False


def check_garbage(tmp_path: Path, key: str, **config: t.Any) -> None:
    """Initialising an app with ``config`` either works, and then makes a
    session, or raises TypeError or ValueError from this package, naming
    ``key`` and quoting no password of a URL. A ``key`` whose value is
    neither a mapping nor None must raise.
    """
    value = config[key]
    must_fail = value is not None and not isinstance(value, Mapping)
    app = make_app(tmp_path, SESSIONEXT_DATABASE_URI="sqlite://", **config)
    error: Exception | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLAlchemy's, about odd URLs
            db = SessionExt(app)
    except (TypeError, ValueError) as e:  # any other error fails the test
        error = e
    if error is None:
        assert not must_fail, f"{key} = {value!r} was accepted"
        with app.app_context():
            db.session()
        for engine in app.extensions["sessionext"].engines.values():
            engine.dispose()
        return
    assert key in message(error) or "SessionExt()" in message(error), message(error)
    raised_in = traceback.extract_tb(error.__traceback__)[-1].filename
    assert raised_in.startswith(PACKAGE), raised_in
    if not bare_password(config):
        assert_clean(error)


@GARBAGE_SETTINGS
@given(binds=_binds)
def test_garbage_binds(tmp_path: Path, binds: object) -> None:
    """Garbage in SESSIONEXT_BINDS raises a clear error, or works."""
    check_garbage(tmp_path, "SESSIONEXT_BINDS", SESSIONEXT_BINDS=binds)


@GARBAGE_SETTINGS
@given(options=_options(ENGINE_NAMES), url=st.sampled_from(["sqlite://", PG]))
def test_garbage_engine_options(tmp_path: Path, options: object, url: str) -> None:
    """Garbage in SESSIONEXT_ENGINE_OPTIONS raises a clear error, or works."""
    check_garbage(
        tmp_path,
        "SESSIONEXT_ENGINE_OPTIONS",
        SESSIONEXT_ENGINE_OPTIONS=options,
        SESSIONEXT_BINDS={"pg": url},
    )


@GARBAGE_SETTINGS
@given(options=_options(SESSION_NAMES))
def test_garbage_session_options(tmp_path: Path, options: object) -> None:
    """Garbage in SESSIONEXT_SESSION_OPTIONS raises a clear error, or works."""
    check_garbage(
        tmp_path, "SESSIONEXT_SESSION_OPTIONS", SESSIONEXT_SESSION_OPTIONS=options
    )
