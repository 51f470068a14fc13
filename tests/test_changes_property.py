"""models_committed against an oracle that reads the database, for random
sequences of session work.
"""

from __future__ import annotations

import itertools

import sqlalchemy as sa
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import orm

from flask_sessionext import SessionExt, signals

from models import User

STEPS = (
    "add",
    "modify",
    "delete",
    "flush",
    "begin_nested",
    "rollback_savepoint",
    "release_savepoint",
    "commit",
    "rollback",
)

#: Steps drawn with weights that favour work, flushes and savepoints over
#: the commit that ends an example's transaction.
WEIGHTED = st.sampled_from(
    ["add"] * 3
    + ["modify"] * 2
    + ["delete"] * 2
    + ["flush"] * 3
    + ["begin_nested", "rollback_savepoint", "release_savepoint"] * 2
    + ["commit", "rollback"]
)

_names = itertools.count()


def snapshot(engine: sa.Engine) -> dict[int, str]:
    """Every user row, read on a connection of its own."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(User.id, User.name)).all()
        return {ident: name for ident, name in rows}


def oracle(before: dict[int, str], after: dict[int, str]) -> set[tuple[int, str]]:
    """The net changes between two snapshots."""
    changes = {(i, "insert") for i in after.keys() - before.keys()}
    changes |= {(i, "delete") for i in before.keys() - after.keys()}
    changes |= {
        (i, "update") for i in before.keys() & after.keys() if before[i] != after[i]
    }
    return changes


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_models_committed_matches_the_database(
    app: Flask, db: SessionExt, data: st.DataObject
) -> None:
    """After each commit models_committed reports exactly the rows that the
    commit changed, whatever sequence of work and savepoints led to it.
    """
    sent: list[set[tuple[int, str]]] = []

    def receive(sender: Flask, changes: list[tuple[User, str]]) -> None:
        # An instance without identity (undone by a rollback) matches no row.
        idents = [(sa.inspect(obj).identity or (-1,))[0] for obj, _ in changes]
        sent.append({(ident, op) for ident, (_, op) in zip(idents, changes)})
        assert len(sent[-1]) == len(changes)  # one entry per instance

    with app.app_context(), signals.models_committed.connected_to(receive, sender=app):
        session = db.session()
        session.execute(sa.text("DELETE FROM users"))
        session.commit()
        before = snapshot(db.engine)
        sent.clear()
        objects: list[User] = []
        savepoints: list[orm.SessionTransaction] = []
        for step in data.draw(
            st.lists(WEIGHTED, min_size=10, max_size=40), label="steps"
        ):
            live = [o for o in objects if sa.inspect(o).session is session]
            persistent = [o for o in live if sa.inspect(o).persistent]
            if step == "add":
                user = User(name=f"n{next(_names)}")
                session.add(user)
                objects.append(user)
            elif step == "modify" and live:
                data.draw(
                    st.sampled_from(live), label="modified"
                ).name = f"n{next(_names)}"
            elif step == "delete" and persistent:
                session.delete(data.draw(st.sampled_from(persistent), label="deleted"))
            elif step == "flush":
                session.flush()
            elif step == "begin_nested":
                savepoints.append(session.begin_nested())
            elif step == "rollback_savepoint" and savepoints:
                savepoints.pop().rollback()
            elif step == "release_savepoint" and savepoints:
                savepoints.pop().commit()
            elif step in ("commit", "rollback"):
                count = len(sent)
                getattr(session, step)()
                savepoints.clear()
                after = snapshot(db.engine)
                expected = oracle(before, after)
                if step == "rollback" or not expected:
                    assert len(sent) == count
                else:
                    assert sent[count:] == [expected]
                before = after
        session.rollback()
