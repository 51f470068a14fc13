"""The cost of model change tracking (issue: change signals).

One commit of 1,000 inserted rows, in an app context, on in-memory SQLite,
with a ``models_committed`` receiver connected, side by side in one process:

- ``raw``: plain SQLAlchemy, no tracking: the floor;
- ``sessionext``: this extension, ``models_committed`` receiver;
- ``fsa``: Flask-SQLAlchemy 3.1 with ``SQLALCHEMY_TRACK_MODIFICATIONS`` and a
  ``models_committed`` receiver.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Flask
from sqlalchemy import orm
from sqlalchemy.pool import StaticPool

from flask_sessionext import SessionExt, signals

from ._harness import current_app_context, measure, report
from .bench_apps import Base
from .bench_apps import User as Row

ROWS = 1000


Run = t.Callable[[int], None]


def _commits(app: Flask, session: t.Any, model: type[t.Any]) -> Run:
    def run(n: int) -> None:
        with app.app_context():
            for _ in range(n):
                session.add_all([model(name=f"row {i}") for i in range(ROWS)])
                session.commit()
                session.execute(sa.delete(model.__table__))
                session.commit()

    return run


def _raw() -> Run:
    app = Flask("raw")
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    session = orm.scoped_session(
        orm.sessionmaker(bind=engine), scopefunc=current_app_context
    )
    app.teardown_appcontext(lambda exc: session.remove())
    return _commits(app, session, Row)


def _sessionext(counter: list[int]) -> Run:
    app = Flask("sessionext")
    app.config["SESSIONEXT_DATABASE_URI"] = "sqlite://"
    db = SessionExt(app)
    with app.app_context():
        Base.metadata.create_all(db.engine)
        scoped = db.session

    def receive(sender: Flask, changes: list[tuple[object, str]]) -> None:
        counter[0] += len(changes)

    signals.models_committed.connect(receive, sender=app, weak=False)
    return _commits(app, scoped, Row)


def _fsa(counter: list[int]) -> Run:
    from flask_sqlalchemy import SQLAlchemy
    from flask_sqlalchemy.track_modifications import models_committed

    app = Flask("fsa")
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://", SQLALCHEMY_TRACK_MODIFICATIONS=True
    )
    fsa = SQLAlchemy(app)

    class FsaRow(fsa.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "rows"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(30))

    with app.app_context():
        fsa.create_all()

    def receive(sender: Flask, changes: list[tuple[object, str]]) -> None:
        counter[0] += len(changes)

    models_committed.connect(receive, sender=app, weak=False)
    return _commits(app, fsa.session, FsaRow)


def main(n: int = 3, rounds: int = 9) -> None:
    """Run the cases and print the table and the issue's target."""
    ours, theirs = [0], [0]
    results = measure(
        {"raw": _raw(), "sessionext": _sessionext(ours), "fsa": _fsa(theirs)},
        n=n,
        rounds=rounds,
    )
    assert ours[0] == theirs[0] > 0, "both must report every inserted row"
    print(
        report(f"One commit of {ROWS} inserted rows, models_committed", results, "raw")
    )
    ratio = results["sessionext"] / results["fsa"]
    print(f"sessionext / fsa: {ratio:.3f}  target <= 1.0")
