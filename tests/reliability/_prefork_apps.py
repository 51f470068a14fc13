"""The apps that the pre-fork servers run: a Flask app factory for gunicorn,
and a Celery app whose tasks use the Flask app's session.

Both connect to the database in the parent, at load time, before the server
forks its workers: the factory creates the tables and keeps a few pooled
connections open, and records their server processes (``pg_backend_pid()``)
in the ``prefork_parent`` table, so that the tests can tell whether a worker
ever used one of them. The database URL comes from :data:`DATABASE_ENV`.
"""

from __future__ import annotations

import os
import typing as t
from contextlib import ExitStack

import sqlalchemy as sa
from celery import Celery, Task  # type: ignore[import-untyped]
from flask import Flask
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from flask_sessionext import SessionExt

#: The environment variable holding the database URL.
DATABASE_ENV = "SESSIONEXT_PREFORK_DATABASE_URL"
#: The environment variable holding the Celery broker and results directory.
CELERY_DIR_ENV = "SESSIONEXT_PREFORK_CELERY_DIR"
#: The number of connections that the parent opens and leaves in its pool.
PARENT_CONNECTIONS = 3
#: The name under which the worker registers the task.
TASK_NAME = "prefork.work"

BACKEND_PID = sa.text("SELECT pg_backend_pid()")


class Base(DeclarativeBase):
    """The models of the pre-fork apps."""


class ParentBackend(Base):
    """A server process of a connection that the parent left in its pool."""

    __tablename__ = "prefork_parent"
    backend: Mapped[int] = mapped_column(primary_key=True)


class Work(Base):
    """The row that one request or task wrote: ``rid`` names it; ``pid`` and
    ``backend`` are the worker process and the server process that wrote it.
    """

    __tablename__ = "prefork_work"
    id: Mapped[int] = mapped_column(primary_key=True)
    rid: Mapped[int] = mapped_column(index=True)
    pid: Mapped[int]
    backend: Mapped[int]


db = SessionExt()


def create_app() -> Flask:
    """The app, on fresh tables, with :data:`PARENT_CONNECTIONS` connections
    open in its pool.
    """
    app = Flask(__name__)
    app.config["SESSIONEXT_DATABASE_URI"] = os.environ[DATABASE_ENV]
    db.init_app(app)
    with app.app_context():
        Base.metadata.drop_all(db.engine)
        Base.metadata.create_all(db.engine)
        # Several connections at once, so that the pool keeps them all.
        with ExitStack() as stack:
            conns = [
                stack.enter_context(db.engine.connect())
                for _ in range(PARENT_CONNECTIONS)
            ]
            backends = [conn.scalar(BACKEND_PID) for conn in conns]
        with db.transaction() as session:
            session.add_all(ParentBackend(backend=b) for b in backends)

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.post("/work/<int:rid>")
    def work(rid: int) -> dict[str, int]:
        return do_work(rid)

    return app


def do_work(rid: int) -> dict[str, int]:
    """Read, then write and commit the row of ``rid``, in the current app
    context's session; says which worker and server process did it.
    """
    backend = db.session.scalar(BACKEND_PID)
    assert backend is not None
    db.session.scalar(sa.select(sa.func.count(Work.id)))
    db.session.add(Work(rid=rid, pid=os.getpid(), backend=backend))
    db.session.commit()
    return {"rid": rid, "pid": os.getpid(), "backend": backend}


def celery_config(folder: str) -> dict[str, t.Any]:
    """The Celery configuration of both the worker and the test: a broker and
    a result store in ``folder``, no server needed.
    """
    queue, control, results = (
        os.path.join(folder, name) for name in ("queue", "control", "results")
    )
    for path in (queue, control, results):
        os.makedirs(path, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": queue,
            "data_folder_out": queue,
            "control_folder": control,
            "polling_interval": 0.02,
        },
        "broker_connection_retry_on_startup": True,
        "result_backend": f"file://{results}",
        "worker_enable_remote_control": False,
        "worker_prefetch_multiplier": 1,
    }


def create_celery(folder: str, flask_app: Flask | None = None) -> Celery:
    """A Celery app with its broker and results in ``folder``; with
    ``flask_app``, its tasks run in an app context of that app, and the
    task :data:`TASK_NAME` is registered.
    """
    config = celery_config(folder)
    if flask_app is None:
        celery = Celery("prefork")
        celery.conf.update(config)
        return celery

    app = flask_app

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(flask_app.name, task_cls=FlaskTask)
    celery.conf.update(config)

    @celery.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
    def work(rid: int) -> dict[str, int]:
        return do_work(rid)

    return celery
