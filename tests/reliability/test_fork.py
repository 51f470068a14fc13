"""A forked child never uses a pooled connection of its parent."""

from __future__ import annotations

import sqlalchemy as sa

from ._webapp import MakeApp
from helpers import fork

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

    def child() -> str:
        backends = set()
        with app.app_context():
            for _ in range(QUERIES):
                backends.add(db.session.scalar(BACKEND_PID))
                db.session.commit()
        return ",".join(map(str, backends))

    forked = fork(child)
    with app.app_context():
        for _ in range(QUERIES):
            assert db.session.scalar(BACKEND_PID) == parent_backend
            db.session.commit()
    child_backends = forked.result()
    assert child_backends
    assert str(parent_backend) not in child_backends.split(",")
    with app.app_context():
        assert db.session.scalar(BACKEND_PID) == parent_backend
