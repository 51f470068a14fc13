"""The cost of model change tracking (issue: change signals).

One commit of 1,000 inserted rows, in an app context, on in-memory SQLite,
with a ``models_committed`` receiver connected, side by side in one process:

- ``raw``: plain SQLAlchemy, no tracking: the floor;
- ``sessionext_untracked`` / ``sessionext``: this extension without and with
  a ``models_committed`` receiver;
- ``fsa_untracked`` / ``fsa``: Flask-SQLAlchemy 3.1 without and with
  ``SQLALCHEMY_TRACK_MODIFICATIONS`` and a ``models_committed`` receiver.

The tracking part of each is ``tracked - untracked``: the insert itself, and
whatever else each library does per commit, is left out. The figures are the
fastest round of each case: the tracking part is a few percent of a commit,
less than what other processes on a shared machine add to a median.

Then, since that difference is near the noise, the time spent inside each
library's tracking listeners, each wrapped in a ``perf_counter`` pair, per
run of the insert commit and the delete commit. It includes, on both sides,
freeing the 1,000 objects when the tracking lets go of them at the commit
(SQLAlchemy's identity map holds them weakly), which an untracked commit
pays elsewhere.
"""

from __future__ import annotations

import contextlib
import time
import typing as t
from collections.abc import Iterator

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


def _sessionext(counter: list[int] | None) -> Run:
    app = Flask("sessionext")
    app.config["SESSIONEXT_DATABASE_URI"] = "sqlite://"
    db = SessionExt(app)
    with app.app_context():
        Base.metadata.create_all(db.engine)
        scoped = db.session

    def receive(sender: Flask, changes: list[tuple[object, str]]) -> None:
        assert counter is not None
        counter[0] += len(changes)

    if counter is not None:
        signals.models_committed.connect(receive, sender=app, weak=False)
    return _commits(app, scoped, Row)


def _fsa(counter: list[int] | None) -> Run:
    from flask_sqlalchemy import SQLAlchemy
    from flask_sqlalchemy.track_modifications import models_committed

    app = Flask("fsa")
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://",
        SQLALCHEMY_TRACK_MODIFICATIONS=counter is not None,
    )
    fsa = SQLAlchemy(app)

    class FsaRow(fsa.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "rows"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(30))

    with app.app_context():
        fsa.create_all()

    def receive(sender: Flask, changes: list[tuple[object, str]]) -> None:
        assert counter is not None
        counter[0] += len(changes)

    if counter is not None:
        models_committed.connect(receive, sender=app, weak=False)
    return _commits(app, fsa.session, FsaRow)


@contextlib.contextmanager
def _timed(owner: t.Any, names: t.Sequence[str], total: list[float]) -> Iterator[None]:
    """Add the time spent in ``owner``'s functions ``names`` to ``total[0]``."""
    originals = {name: getattr(owner, name) for name in names}

    def wrap(function: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
        def timed(*args: t.Any, **kwargs: t.Any) -> t.Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                total[0] += time.perf_counter() - start

        return timed

    for name, function in originals.items():
        setattr(owner, name, wrap(function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(owner, name, function)


def listener_times(rounds: int) -> tuple[float, float]:
    """The least time, in seconds, spent inside this extension's and
    Flask-SQLAlchemy's tracking listeners per run of :func:`_commits`.
    """
    from flask_sqlalchemy import track_modifications

    from flask_sessionext._features.changes import ModelChanges

    ours_total, theirs_total = [0.0], [0.0]
    ours_events = [
        "_after_begin",
        "_after_flush",
        "_before_commit",
        "_after_commit",
        "_after_transaction_end",
    ]
    theirs_events = [
        "_record_ops",
        "_before_commit",
        "_after_commit",
        "_after_rollback",
    ]
    with (
        _timed(ModelChanges, ours_events, ours_total),
        _timed(track_modifications, theirs_events, theirs_total),
    ):
        # Built inside the block, so that the listeners are the timed ones.
        ours, theirs = _sessionext([0]), _fsa([0])
        ours(1)
        theirs(1)
        best = [float("inf"), float("inf")]
        for _ in range(rounds):
            for index, (run, total) in enumerate(
                ((ours, ours_total), (theirs, theirs_total))
            ):
                total[0] = 0.0
                run(1)
                best[index] = min(best[index], total[0])
    return best[0], best[1]


def main(n: int = 3, rounds: int = 9) -> list[str]:
    """Run the cases, print the table and return the issue's targets."""
    ours, theirs = [0], [0]
    results = measure(
        {
            "raw": _raw(),
            "sessionext_untracked": _sessionext(None),
            "sessionext": _sessionext(ours),
            "fsa_untracked": _fsa(None),
            "fsa": _fsa(theirs),
        },
        n=n,
        rounds=rounds,
        statistic=min,
    )
    assert ours[0] == theirs[0] > 0, "both must report every inserted row"
    print(
        report(f"One commit of {ROWS} inserted rows, models_committed", results, "raw")
    )
    ours_us = (results["sessionext"] - results["sessionext_untracked"]) * 1e6
    theirs_us = (results["fsa"] - results["fsa_untracked"]) * 1e6
    verdict = "met" if ours_us <= theirs_us / 2 else "MISSED"
    target = (
        f"bulk tracking ({ROWS} rows, one commit): sessionext adds {ours_us:.0f} µs,"
        f" fsa {theirs_us:.0f} µs, target <= half: {verdict}"
    )
    print(target)
    ours_in, theirs_in = listener_times(rounds)
    inside = (
        f"time inside the tracking listeners per run: sessionext"
        f" {ours_in * 1e6:.0f} µs, fsa {theirs_in * 1e6:.0f} µs, ratio"
        f" {ours_in / theirs_in:.2f}, target <= 0.5:"
        f" {'met' if ours_in <= theirs_in / 2 else 'MISSED'}"
    )
    print(inside)
    return [target, inside]
