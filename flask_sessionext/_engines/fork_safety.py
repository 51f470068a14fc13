"""Fork safety: a child process never uses a pooled connection of its parent.

A pre-fork server (gunicorn ``--preload``, Celery prefork, ``multiprocessing``
with ``fork``) copies the parent's pools, with their open sockets, into each
child. Two processes talking on one socket corrupt each other's protocol
state. SQLAlchemy's documented recipe is ``engine.dispose(close=False)`` in
the child: the child drops what it inherited, without closing the parent's
connections, and opens its own. Its other recipe, a pid check in a
``checkout`` listener, is not enough while ``pool_pre_ping`` is on: the ping
runs on the shared socket before checkout listeners.

Fork listeners are process-wide and cannot be removed, so there is one, for the
engines of every app, held weakly: a dropped app's engines are not kept.
"""

from __future__ import annotations

import os
import threading
import weakref

import sqlalchemy as sa

_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
_lock = threading.Lock()
_registered = False


def dispose_in_child(engines: list[sa.Engine]) -> None:
    """Dispose ``engines``' pools, without closing them, in every child this
    process forks from now on.
    """
    global _registered
    with _lock:
        _engines.update(engines)
        if not _registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _registered = True


def _after_fork_in_child() -> None:
    for engine in list(_engines):
        engine.dispose(close=False)
