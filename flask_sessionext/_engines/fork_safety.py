"""Fork safety: a child process never uses a pooled connection of its parent.

A pre-fork server (gunicorn ``--preload``, Celery prefork, ``multiprocessing``
with ``fork``) copies the parent's pools, with their open sockets, into each
child. Two processes talking on one socket corrupt each other's protocol
state. SQLAlchemy's documented recipe is ``engine.dispose(close=False)`` in
the child: the child drops what it inherited, without closing the parent's
connections, and opens its own. Its other recipe, a pid check in a
``checkout`` listener, is not enough while ``pool_pre_ping`` is on: the ping
runs on the shared socket before checkout listeners.

Fork hooks are process-wide and cannot be removed, so there is one,
registered when this module is imported, for the engines of every app; the
set of those engines, held weakly (a dropped app's engines are not kept), is
kept for the whole process because the process is its scope: the hook has no
other way to find them. It takes no lock, and touches none: the set changes
by single ``add`` calls, atomic under the GIL (and under gevent, which
switches greenlets only at blocking calls), and the hook runs in the child,
where the forking thread is the only one.

The locks of an app's runtime and listeners are per process
(:func:`process_lock`): no fork hook touches them, and a child never waits
for a lock that a thread of its parent held at the fork.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable

import sqlalchemy as sa

_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def dispose_in_child(engines: Iterable[sa.Engine]) -> None:
    """Dispose ``engines``' pools, without closing them, in every child this
    process forks from now on.
    """
    for engine in engines:
        _engines.add(engine)


def _after_fork_in_child() -> None:
    for engine in list(_engines):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def process_lock(locks: dict[int, threading.RLock]) -> threading.RLock:
    """The re-entrant lock of this process in ``locks``, an object's locks
    by process id.

    Each process makes its own at its first use: a forked child never waits
    for one that a thread of its parent held at the fork, and under gevent
    it is made once the process is patched. A process claims it with one
    ``setdefault``, atomic without a lock, and drops its parent's.
    """
    pid = os.getpid()
    lock = locks.get(pid)
    if lock is None:
        lock = locks.setdefault(pid, threading.RLock())
        for other in list(locks):
            if other != pid:  # the parent's
                locks.pop(other, None)
    return lock
