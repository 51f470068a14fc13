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
