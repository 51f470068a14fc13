"""The per-query cost of query recording (issue: query recording).

Side by side, in one process, on in-memory SQLite, each case running the
same ``session.execute(select ...)`` in an app context:

- ``sessionext_off`` / ``sessionext_on``: this extension with
  ``SESSIONEXT_RECORD_QUERIES`` off and on (parameters kept, as
  Flask-SQLAlchemy keeps them);
- ``fsa_off`` / ``fsa_on``: Flask-SQLAlchemy 3.1 with
  ``SQLALCHEMY_RECORD_QUERIES`` off and on.

The cost of recording is ``on - off`` of each; both locate the query in the
benchmark's own function (Flask-SQLAlchemy looks for the app's package,
``benchmarks``).
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Flask

from flask_sessionext import SessionExt

from ._harness import measure, report

STATEMENT = sa.select(sa.literal(1))

Run = t.Callable[[int], None]


def _ext_case(record: bool) -> Run:
    app = Flask(__name__)
    app.config.update(
        SESSIONEXT_DATABASE_URI="sqlite://",
        SESSIONEXT_RECORD_QUERIES=record,
        SESSIONEXT_RECORD_PARAMETERS=True,
    )
    db = SessionExt(app)

    def run(n: int) -> None:
        with app.app_context():
            for _ in range(n):
                db.session.execute(STATEMENT)
            assert len(db.get_recorded_queries()) == (min(n, 1000) if record else 0)

    return run


def _fsa_case(record: bool) -> Run:
    from flask_sqlalchemy import SQLAlchemy
    from flask_sqlalchemy.record_queries import get_recorded_queries

    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://", SQLALCHEMY_RECORD_QUERIES=record
    )
    db = SQLAlchemy(app)

    def run(n: int) -> None:
        with app.app_context():
            for _ in range(n):
                db.session.execute(STATEMENT)
            assert len(get_recorded_queries()) == (n if record else 0)

    return run


def main(n: int = 2000, rounds: int = 15) -> None:
    """Run the cases and print the table and the issue's target."""
    results = measure(
        {
            "sessionext_off": _ext_case(False),
            "sessionext_on": _ext_case(True),
            "fsa_off": _fsa_case(False),
            "fsa_on": _fsa_case(True),
        },
        n=n,
        rounds=rounds,
    )
    print(
        report(
            "Per query, in-memory SQLite, SELECT 1 through the session",
            results,
            "sessionext_off",
        )
    )
    ours = results["sessionext_on"] - results["sessionext_off"]
    theirs = results["fsa_on"] - results["fsa_off"]
    print(f"recording cost, this extension:    {ours * 1e6:6.2f} us/query")
    print(f"recording cost, Flask-SQLAlchemy:  {theirs * 1e6:6.2f} us/query")
    print(f"ratio (this / Flask-SQLAlchemy):   {ours / theirs:6.3f}  target < 1")
