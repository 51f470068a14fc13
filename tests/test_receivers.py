"""Checks made when a receiver connects: its signature, and a warning for a
nested function connected weakly that dies while connected.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import logging
import typing as t
import weakref
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from blinker import NamedSignal
from flask import Flask

from flask_sessionext import SessionExt, signals
from flask_sessionext._features.bridge import SignalBridge
from flask_sessionext._receivers.calls import receiver_name
from flask_sessionext.signals import CATALOG, EXTENSION_KWARGS
from flask_sessionext.testing import capture_signal

from models import Base, User

Receiver = t.Callable[..., t.Any]


@pytest.fixture
def sqlite_app() -> Iterator[Flask]:
    """An app on an in-memory SQLite database with the extension, and its
    engines disposed after the test.
    """
    app = Flask(__name__)
    app.config.update(SESSIONEXT_DATABASE_URI="sqlite://")
    SessionExt(app)
    yield app
    for engine in app.extensions["sessionext"].engines.values():
        engine.dispose()


def _with_signature(names: t.Iterable[str]) -> Receiver:
    """A receiver taking the app, then exactly ``names`` as keywords."""

    def receiver(*args: t.Any, **kwargs: t.Any) -> None:
        pass

    params = [inspect.Parameter("app", inspect.Parameter.POSITIONAL_ONLY)]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in names
    ]
    receiver.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return receiver


def _receiver_names(signal: NamedSignal) -> list[str]:
    """The qualified names of the live receivers of ``signal``."""
    names = []
    for held in signal.receivers.values():
        receiver = held() if isinstance(held, weakref.ref) else held
        if receiver is not None:
            names.append(receiver_name(receiver))
    return names


def test_catalog_kwargs_accepted() -> None:
    """A receiver taking exactly what a signal sends connects, for every
    signal of the package.
    """
    for signal in signals.namespace.values():
        kwargs = CATALOG[signal.name].kwargs if signal.name in CATALOG else None
        names = kwargs if kwargs is not None else EXTENSION_KWARGS[signal.name]
        receiver = _with_signature(names)
        with signal.connected_to(receiver):
            assert id(receiver) in signal.receivers


def test_var_kwargs_accepted() -> None:
    """A receiver taking the app and ``**kwargs`` connects to every signal."""

    def receiver(app: Flask, **kwargs: t.Any) -> None:
        pass

    for signal in signals.namespace.values():
        with signal.connected_to(receiver):
            assert id(receiver) in signal.receivers


def test_wrong_name_refused(sqlite_app: Flask) -> None:
    """A misspelt argument is a TypeError naming the receiver, the signal, both
    names and the accepted ones, and nothing stays connected or installed.
    """

    def log_flush(
        app: Flask, session: t.Any, flush_ctx: t.Any, instances: t.Any
    ) -> None:
        pass

    with pytest.raises(
        TypeError,
        match=r"'test_receivers\.test_wrong_name_refused\.<locals>\.log_flush'"
        r" cannot receive signal 'before_flush': it has no parameter for"
        r" 'flush_context'; it requires 'flush_ctx', which the signal does not"
        r" send\. The signal calls receiver\(app, session=\.\.\., flush_context="
        r"\.\.\., instances=\.\.\.\)",
    ):
        signals.before_flush.connect(log_flush, sender=sqlite_app, weak=False)
    assert id(log_flush) not in signals.before_flush.receivers
    assert (
        "before_flush"
        not in sqlite_app.extensions["sessionext"].feature(SignalBridge).installed
    )


def test_missing_kwarg_refused() -> None:
    """A receiver without a parameter for one of the keyword arguments is
    refused, for an extension signal too.
    """

    def on_removed(app: Flask, session: t.Any) -> None:
        pass

    with (
        pytest.raises(TypeError, match=r"no parameter for 'exception'\."),
        signals.session_removed.connected_to(on_removed),
    ):
        pass
    assert id(on_removed) not in signals.session_removed.receivers


def test_optional_extra_parameter_accepted() -> None:
    """A parameter the signal does not send is fine when it has a default."""

    def on_created(app: Flask, session: t.Any, note: str = "") -> None:
        pass

    with signals.session_created.connected_to(on_created):
        assert id(on_created) in signals.session_created.receivers


def test_no_positional_sender_refused() -> None:
    """A receiver that takes the app by no positional parameter is refused."""

    def on_created(*, session: t.Any) -> None:
        pass

    with pytest.raises(TypeError, match=r"no positional parameter for the app\."):
        signals.session_created.connect(on_created, weak=False)
    assert id(on_created) not in signals.session_created.receivers


def test_sender_named_like_kwarg_refused() -> None:
    """A first parameter named like a keyword argument is refused: it would
    get the app and the keyword argument both.
    """

    def on_created(session: t.Any, **kwargs: t.Any) -> None:
        pass

    with pytest.raises(
        TypeError, match=r"first parameter 'session' gets the app, and the signal"
    ):
        signals.session_created.connect(on_created, weak=False)
    assert id(on_created) not in signals.session_created.receivers


def test_async_receiver_checked(sqlite_app: Flask) -> None:
    """An async receiver is checked like a function, and one that fits runs."""
    seen: list[object] = []

    async def misnamed(app: Flask, sess: t.Any) -> None:
        pass

    async def on_created(app: Flask, session: t.Any) -> None:
        await asyncio.sleep(0)
        seen.append(session)

    with pytest.raises(TypeError, match=r"'.*misnamed' cannot receive signal"):
        signals.session_created.connect(misnamed, weak=False)
    assert id(misnamed) not in signals.session_created.receivers
    db = sqlite_app.extensions["sessionext"].extension
    with (
        signals.session_created.connected_to(on_created, sqlite_app),
        sqlite_app.app_context(),
    ):
        session = db.session()
    assert seen == [session]


def test_decorated_receiver_own_signature() -> None:
    """A decorator that changes what its function takes is judged by its own
    signature, though it uses ``functools.wraps``.
    """

    def with_user(func: Receiver) -> Receiver:
        @functools.wraps(func)
        def receiver(app: Flask, **kwargs: t.Any) -> t.Any:
            return func(app, user=None, **kwargs)

        return receiver

    @with_user
    def on_created(app: Flask, session: t.Any, user: t.Any) -> None:
        pass

    with signals.session_created.connected_to(on_created):
        assert id(on_created) in signals.session_created.receivers


def test_register_checks_methods(sqlite_app: Flask) -> None:
    """``db.register()`` refuses a method with a wrong argument, naming the
    method, and leaves none of the object's methods connected.
    """

    class Listener:
        def after_commit(self, app: Flask, session: t.Any) -> None:
            pass

        def before_flush(self, app: Flask, session: t.Any, flush_ctx: t.Any) -> None:
            pass

        async def session_created(self, app: Flask, session: t.Any) -> None:
            pass

    db = sqlite_app.extensions["sessionext"].extension
    with pytest.raises(
        TypeError, match=r"'.*Listener\.before_flush' cannot receive signal"
    ):
        db.register(Listener())
    for signal in (
        signals.after_commit,
        signals.before_flush,
        signals.session_created,
    ):
        assert "Listener" not in " ".join(_receiver_names(signal))


def test_register_methods_that_fit(sqlite_app: Flask) -> None:
    """``db.register()`` connects fitting methods, async ones too, through
    wrappers that show the methods' signatures.
    """
    seen: list[str] = []

    class Listener:
        def session_removed(
            self, app: Flask, session: t.Any, exception: BaseException | None
        ) -> None:
            seen.append("removed")

        async def session_created(self, app: Flask, session: t.Any) -> None:
            seen.append("created")

    db = sqlite_app.extensions["sessionext"].extension
    handle = db.register(Listener(), app=sqlite_app)
    try:
        with sqlite_app.app_context():
            db.session()
    finally:
        handle.disconnect()
    assert seen == ["created", "removed"]


def test_extension_kwargs_as_sent() -> None:
    """The extension's signals send exactly the keyword arguments that
    :data:`EXTENSION_KWARGS` gives.
    """
    app = Flask(__name__)
    app.config.update(
        SESSIONEXT_DATABASE_URI="sqlite://", SESSIONEXT_SLOW_QUERY_THRESHOLD=0
    )
    db = SessionExt(app, metadata=Base.metadata)
    with ExitStack() as stack:
        sent = {
            name: stack.enter_context(capture_signal(signals.namespace[name], app))
            for name in EXTENSION_KWARGS
            # Sent by a listener thread, with SESSIONEXT_BROADCAST on: see
            # test_broadcast.py::test_sent_kwargs and the receivers of
            # test_broadcast_faults.py.
            if name not in ("models_committed_anywhere", "publications_lost")
        }
        with app.app_context():
            db.create_all()
            db.session.add(User(name="ada"))
            db.session.commit()
    for name, captured in sent.items():
        assert captured, name
        assert set(captured[0][1]) == set(EXTENSION_KWARGS[name]), name
    app.extensions["sessionext"].engines[None].dispose()


def _connect_in_factory(signal: NamedSignal, sender: t.Any) -> None:
    """Connect a nested function weakly, as a factory does by mistake."""

    def on_created(app: Flask, session: t.Any) -> None:
        pass

    signal.connect(on_created, sender=sender)


def _teardown_log(app: Flask, caplog: pytest.LogCaptureFixture) -> str:
    """What one app-context teardown of ``app`` logs at WARNING."""
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger=app.logger.name),
        app.app_context(),
    ):
        pass
    return caplog.text


def test_collected_nested_receiver_logged(
    sqlite_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """A nested function connected weakly and collected while connected is
    named in one warning on ``app.logger`` at the next teardown.
    """
    _connect_in_factory(signals.session_created, sqlite_app)
    gc.collect()
    assert "_connect_in_factory" not in " ".join(
        _receiver_names(signals.session_created)
    )
    text = _teardown_log(sqlite_app, caplog)
    assert (
        "Receiver 'test_receivers._connect_in_factory.<locals>.on_created' of"
        " signal 'session_created' was garbage-collected while connected"
    ) in text
    assert "Connect it with 'weak=False'" in text
    assert "_connect_in_factory" not in _teardown_log(sqlite_app, caplog)


def test_collected_receiver_of_other_app_waits(
    sqlite_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver connected for one app is reported at that app's teardown,
    not at another app's.
    """
    other = Flask("other")
    other.config.update(SESSIONEXT_DATABASE_URI="sqlite://")
    SessionExt(other)
    _connect_in_factory(signals.session_created, other)
    gc.collect()
    assert "_connect_in_factory" not in _teardown_log(sqlite_app, caplog)
    assert "_connect_in_factory" in _teardown_log(other, caplog)
    other.extensions["sessionext"].engines[None].dispose()


def test_disconnected_receiver_not_logged(
    sqlite_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """A nested function disconnected before it dies is not reported, nor is
    one that is kept alive.
    """

    def gone(app: Flask, session: t.Any) -> None:
        pass

    def kept(app: Flask, session: t.Any) -> None:
        pass

    signals.session_created.connect(gone)
    signals.session_created.disconnect(gone)
    signals.session_created.connect(kept, sqlite_app)
    del gone
    gc.collect()
    text = _teardown_log(sqlite_app, caplog)
    signals.session_created.disconnect(kept)
    assert "garbage-collected" not in text
