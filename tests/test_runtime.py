"""The runtime: one object per app that holds its state and brings its
features' listeners in line with the receivers.
"""

from __future__ import annotations

import gc
import weakref

from flask import Flask

from flask_sessionext import SessionExt, signals
from flask_sessionext._features.changes import ModelChanges
from flask_sessionext._runtime import Runtime


def _changes(sender: Flask, changes: object) -> None:
    """A receiver of the change signals that does nothing."""


def test_the_runtime_holds_the_apps_state(app: Flask, db: SessionExt) -> None:
    """``app.extensions["sessionext"]`` is the app's runtime, serving ``db``,
    with the app's engines in a read-only mapping.
    """
    runtime = app.extensions["sessionext"]
    assert isinstance(runtime, Runtime)
    assert runtime.extension is db
    assert runtime.app() is app
    assert set(runtime.engines) == {None, "other"}
    assert runtime.session_class is runtime.sessionmaker.class_


def test_change_listeners_follow_the_features_table(app: Flask, db: SessionExt) -> None:
    """A ``models_committed`` receiver makes the runtime install exactly the
    listeners of the "model changes" feature on the app's Session class, and
    its disconnection removes them.
    """
    runtime = app.extensions["sessionext"]
    session_class = runtime.session_class
    listens = ModelChanges.listens
    with app.app_context():
        dispatch = db.session().dispatch
    assert runtime.listeners.count(session_class) == 0
    with signals.models_committed.connected_to(_changes, sender=app):
        assert runtime.listeners.count(session_class) == len(listens)
        for name in listens:
            assert len(getattr(dispatch, name)) == 1
    assert runtime.listeners.count(session_class) == 0
    for name in listens:
        assert len(getattr(dispatch, name)) == 0


def test_dropped_app_takes_its_subscription(tmp_path: object) -> None:
    """The runtime subscribes weakly to receiver changes: a dropped app's
    runtime is collected, and Blinker forgets its subscription.
    """
    # Twice: an earlier test's app whose finalizer removes its listeners in
    # the first pass leaves its runtime to the second.
    gc.collect()
    gc.collect()
    subscriptions = len(signals.models_committed.receiver_connected.receivers)
    app = Flask(__name__)
    app.config["SESSIONEXT_DATABASE_URI"] = "sqlite://"
    SessionExt(app)
    runtime = weakref.ref(app.extensions["sessionext"])
    connected = len(signals.models_committed.receiver_connected.receivers)
    assert connected == subscriptions + 1
    del app
    gc.collect()
    assert runtime() is None
    assert len(signals.models_committed.receiver_connected.receivers) == subscriptions


def _apps(count: int) -> list[Flask]:
    """``count`` apps on in-memory SQLite, each with its own extension."""
    apps = []
    for _ in range(count):
        app = Flask(__name__)
        app.config["SESSIONEXT_DATABASE_URI"] = "sqlite://"
        SessionExt(app)
        apps.append(app)
    return apps


def test_a_receiver_refreshes_only_its_app() -> None:
    """Connecting and disconnecting a receiver for one app of five refreshes
    that app's runtime only, once each way.
    """
    apps = _apps(5)
    before = [app.extensions["sessionext"].refreshes for app in apps]
    with signals.models_committed.connected_to(_changes, sender=apps[2]):
        during = [app.extensions["sessionext"].refreshes for app in apps]
    after = [app.extensions["sessionext"].refreshes for app in apps]
    assert [d - b for d, b in zip(during, before)] == [0, 0, 1, 0, 0]
    assert [a - b for a, b in zip(after, before)] == [0, 0, 2, 0, 0]


def test_a_receiver_of_every_sender_refreshes_every_app() -> None:
    """A receiver connected for every sender concerns every app: each
    runtime refreshes once when it connects.
    """
    apps = _apps(3)
    before = [app.extensions["sessionext"].refreshes for app in apps]
    signals.models_committed.connect(_changes)
    try:
        during = [app.extensions["sessionext"].refreshes for app in apps]
    finally:
        signals.models_committed.disconnect(_changes)
    assert [d - b for d, b in zip(during, before)] == [1, 1, 1]


def test_register_refreshes_its_app_once_per_method() -> None:
    """``db.register()`` of an object with three signal methods for one app
    of five refreshes that app three times, and no other.
    """

    class Listener:
        def before_flush(self, sender: Flask, **kwargs: object) -> None:
            pass

        def after_commit(self, sender: Flask, **kwargs: object) -> None:
            pass

        def models_committed(self, sender: Flask, **kwargs: object) -> None:
            pass

    apps = _apps(5)
    before = [app.extensions["sessionext"].refreshes for app in apps]
    db: SessionExt = apps[0].extensions["sessionext"].extension
    handle = db.register(Listener(), app=apps[0])
    during = [app.extensions["sessionext"].refreshes for app in apps]
    handle.disconnect()
    assert [d - b for d, b in zip(during, before)] == [3, 0, 0, 0, 0]
