"""The broadcast app of :mod:`._broadcast_apps`, loaded after gevent's
``monkey.patch_all()``, as an app that patches first does: under gunicorn
``--preload`` the master then runs patched, and its listener is a greenlet,
which survives the fork into each worker.
"""

from gevent import monkey  # type: ignore[import-untyped]

monkey.patch_all()

from ._broadcast_apps import create_app  # noqa: E402

__all__ = ["create_app"]
