"""16 clients against the app under a multi-threaded WSGI server on
PostgreSQL: nothing lost, nothing shared, nothing leaked.
"""

from __future__ import annotations

import random

from flask_sessionext import signals

from ._webapp import (
    CONFLICT,
    RAISE,
    READ,
    WRITE,
    MakeApp,
    Observer,
    Result,
    check_writes,
    fixed_plan,
    load,
    serve,
)
from helpers import checked_out, open_sessions

REQUESTS = 5_000
#: Reads and writes, and a fifth of requests that fail: half in the view after
#: a flush, half at the commit.
MIX = [READ] * 4 + [WRITE] * 4 + [RAISE, CONFLICT]


def overlapping_pairs(results: list[Result]) -> list[tuple[Result, Result]]:
    """Pairs of requests whose views ran at the same time (server clock)."""
    spans = sorted(results, key=lambda r: r.body["started"])
    pairs = []
    for i, first in enumerate(spans):
        for second in spans[i + 1 :]:
            if second.body["started"] > first.body["ended"]:
                break
            pairs.append((first, second))
    return pairs


def test_concurrent_requests_keep_to_their_own_session(
    make_app: MakeApp, postgres_url: str
) -> None:
    """5,000 reads, writes and failing requests from 16 clients through 8
    server threads: every committed write is stored once, no failed one is,
    each request had a session and app context no concurrent request had,
    models_committed matched each commit, and no connection or session is left.
    """
    app, db = make_app(postgres_url)
    observer = Observer()
    kinds = [MIX[i % len(MIX)] for i in range(REQUESTS)]
    random.Random(5000).shuffle(kinds)

    with (
        signals.models_committed.connected_to(observer.models_committed, sender=app),
        serve(app, threads=8) as port,
    ):
        results = load(port, fixed_plan(kinds), clients=16)

    assert len(results) == REQUESTS
    assert [r for r in results if r.error] == []
    expected = {READ: 200, WRITE: 200, RAISE: 500, CONFLICT: 500}
    assert [r for r in results if r.status != expected[r.kind]] == []
    assert app.failures == {
        "Boom": kinds.count(RAISE),
        "IntegrityError": kinds.count(CONFLICT),
    }

    served = [r for r in results if r.status == 200]
    assert all(r.body["own"] and r.body["rid"] == r.rid for r in served)
    assert len({r.body["thread"] for r in served}) > 1
    pairs = overlapping_pairs(served)
    assert len(pairs) > REQUESTS // 10, "the requests did not run concurrently"
    shared = [
        (a.rid, b.rid)
        for a, b in pairs
        if a.body["session"] == b.body["session"]
        or a.body["context"] == b.body["context"]
    ]
    assert shared == []

    with app.app_context():
        engine = db.engine
        check_writes(results, engine, observer)
    assert checked_out(engine) == 0
    assert open_sessions(app, db) == 0
