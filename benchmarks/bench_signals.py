"""The per-query cost of the signal bridge (issue: signals).

Side by side, in one process, on in-memory SQLite, each case running the
same ``session.execute(select ...)`` in an app context:

- ``raw``: plain SQLAlchemy ``scoped_session`` keyed by the app context;
- ``raw_again``: the same, a second time: the run's noise;
- ``sessionext``: this extension, no receivers;
- ``raw_listener``: ``raw`` plus one plain ``before_cursor_execute`` listener;
- ``sessionext_receiver``: this extension plus one ``before_cursor_execute``
  receiver doing the same work.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Flask
from sqlalchemy import orm
from sqlalchemy.pool import StaticPool

from flask_sessionext import SessionExt, signals

from ._harness import current_app_context, measure, report

STATEMENT = sa.select(sa.literal(1))


def _raw_case(listener: bool) -> t.Callable[[int], None]:
    app = Flask("raw")
    engine = sa.create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    counter = [0]
    if listener:

        @sa.event.listens_for(engine, "before_cursor_execute")
        def count(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
            counter[0] += 1

    session = orm.scoped_session(
        orm.sessionmaker(bind=engine), scopefunc=current_app_context
    )
    app.teardown_appcontext(lambda exc: session.remove())

    def run(n: int) -> None:
        with app.app_context():
            for _ in range(n):
                session.execute(STATEMENT)

    return run


def _ext_case(receiver: bool) -> t.Callable[[int], None]:
    app = Flask("ext")
    app.config["SESSIONEXT_DATABASE_URI"] = "sqlite://"
    db = SessionExt(app)
    counter = [0]

    def count(sender: Flask, **kwargs: t.Any) -> None:
        counter[0] += 1

    if receiver:
        signals.before_cursor_execute.connect(count, sender=app, weak=False)

    def run(n: int) -> None:
        with app.app_context():
            for _ in range(n):
                db.session.execute(STATEMENT)

    return run


def main(n: int = 2000, rounds: int = 15) -> None:
    """Run the cases and print the table and the issue's two targets."""
    results = measure(
        {
            "raw": _raw_case(False),
            "raw_again": _raw_case(False),
            "sessionext": _ext_case(False),
            "raw_listener": _raw_case(True),
            "sessionext_receiver": _ext_case(True),
        },
        n=n,
        rounds=rounds,
    )
    print(
        report(
            "Per query, in-memory SQLite, SELECT 1 through the session", results, "raw"
        )
    )
    noise = results["raw_again"] / results["raw"]
    no_receiver = results["sessionext"] / results["raw"]
    listener_cost = results["raw_listener"] - results["raw"]
    receiver_cost = results["sessionext_receiver"] - results["sessionext"]
    print(f"noise (raw_again / raw):                 {noise:.3f}")
    print(f"no receivers (sessionext / raw):         {no_receiver:.3f}  target <= 1.03")
    print(
        "one receiver's added cost / plain listener's added cost:"
        f" {receiver_cost / listener_cost:.2f}  target <= 1.5"
    )
