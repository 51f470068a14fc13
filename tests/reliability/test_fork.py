"""A forked child never uses a pooled connection of its parent."""

from __future__ import annotations

import os
import warnings

import sqlalchemy as sa

from ._webapp import MakeApp

QUERIES = 50
BACKEND_PID = sa.text("SELECT pg_backend_pid()")


def test_forked_child_opens_its_own_connections(
    make_app: MakeApp, postgres_url: str
) -> None:
    """After ``os.fork()`` the child queries on connections of its own while
    the parent goes on with its pooled one, in parallel, without errors.
    """
    app, db = make_app(postgres_url)
    with app.app_context():
        parent_backend = db.session.scalar(BACKEND_PID)
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads (pytest-
        # xdist's); the child runs only the code below, then exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            backends = set()
            with app.app_context():
                for _ in range(QUERIES):
                    backends.add(db.session.scalar(BACKEND_PID))
                    db.session.commit()
            os.write(write_end, ",".join(map(str, backends)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with app.app_context():
        for _ in range(QUERIES):
            assert db.session.scalar(BACKEND_PID) == parent_backend
            db.session.commit()
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        child_backends = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_backends
    assert str(parent_backend) not in child_backends.split(",")
    with app.app_context():
        assert db.session.scalar(BACKEND_PID) == parent_backend
