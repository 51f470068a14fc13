"""``get_or_404``, ``first_or_404`` and ``one_or_404`` answer 404 for an id
that the column cannot hold, and leave the session usable.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.exceptions import NotFound

from flask_sessionext import SessionExt

from helpers import count_rows
from models import User

#: Beyond PostgreSQL's ``integer``, beyond SQLite's (and every database's)
#: 64-bit integers, and below them.
OUT_OF_RANGE = [2**31, 2**63, -(2**63) - 1]


@pytest.mark.parametrize("ident", OUT_OF_RANGE)
def test_get_or_404_out_of_range(app: Flask, db: SessionExt, ident: int) -> None:
    """A URL's id that no row can have is a 404, not a 500."""

    @app.get("/users/<int(signed=True):ident>")
    def show(ident: int) -> str:
        return db.get_or_404(User, ident).name

    response = app.test_client().get(f"/users/{ident}")
    assert response.status_code == 404


@pytest.mark.parametrize("ident", OUT_OF_RANGE)
def test_session_usable_after_out_of_range(
    app: Flask, db: SessionExt, ident: int
) -> None:
    """After each helper's 404 for such an id, the same transaction goes on
    and commits, also on PostgreSQL, where a refused value aborts it.
    """
    with app.app_context():
        db.session.add(User(name="kept"))
        db.session.flush()
        with pytest.raises(NotFound, match="404 Not Found"):
            db.get_or_404(User, ident)
        with pytest.raises(NotFound, match="404 Not Found"):
            db.get_or_404(User, {"id": ident})
        with pytest.raises(NotFound, match="404 Not Found"):
            db.first_or_404(sa.select(User).where(User.id == ident))
        with pytest.raises(NotFound, match="404 Not Found"):
            db.one_or_404(sa.select(User).where(User.id.in_([-1, ident])))
        db.session.add(User(name="also kept"))
        db.session.commit()
        engine = db.engine
    assert count_rows(engine, "users") == 2


def test_in_range_ids_still_found(app: Flask, db: SessionExt) -> None:
    """Ids that the column holds are looked up as before."""
    with app.app_context():
        user = User(name="ada")
        db.session.add(user)
        db.session.commit()
        assert db.get_or_404(User, user.id) is user
        assert db.first_or_404(sa.select(User).where(User.id == user.id)) is user
        assert db.one_or_404(sa.select(User).where(User.id.in_([user.id]))) is user
        with pytest.raises(NotFound, match="404 Not Found"):
            db.get_or_404(User, 2**31 - 1)
