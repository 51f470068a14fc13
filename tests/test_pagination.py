"""``db.paginate()`` against Flask-SQLAlchemy 3.1's on the same data, its
count query, and ``flask shell``'s namespace.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from werkzeug.exceptions import NotFound

from flask_sessionext import SessionExt
from flask_sessionext.pagination import Pagination

from models import Base, Item, User

#: Users in the table: 6 pages of 7, the last with 3.
ROWS = 38
SELECT = sa.select(User).order_by(User.id)


@pytest.fixture
def both(app: Flask, db: SessionExt) -> Iterator[SQLAlchemy]:
    """Flask-SQLAlchemy on the same app and database as ``db``, with the
    users inserted.
    """
    with app.app_context():
        db.session.add_all(User(name=f"user {n}") for n in range(ROWS))
        db.session.commit()
        app.config["SQLALCHEMY_DATABASE_URI"] = db.engine.url
    fsa = SQLAlchemy()
    fsa.init_app(app)
    yield fsa
    with app.app_context():
        fsa.engine.dispose()


def summary(page: t.Any) -> tuple[object, ...]:
    """Everything a template reads of a pagination object."""
    return (
        [user.name for user in page],
        page.page,
        page.per_page,
        page.total,
        page.pages,
        page.has_prev,
        page.has_next,
        page.prev_num,
        page.next_num,
        page.first,
        page.last,
        list(page.iter_pages()),
        list(page.iter_pages(left_edge=1, left_current=1, right_current=1)),
    )


def outcome(make: t.Callable[[], t.Any]) -> object:
    """The summary of the page that ``make`` returns, or ``404``."""
    try:
        page = make()
    except NotFound:
        return 404
    return summary(page)


@pytest.mark.parametrize(
    ("query", "kwargs"),
    [
        ("", {}),
        ("page=2", {}),
        ("page=3&per_page=7", {}),
        ("page=6&per_page=7", {}),
        ("page=7&per_page=7", {}),
        ("page=7&per_page=7", {"error_out": False}),
        ("page=0", {}),
        ("page=-1", {"error_out": False}),
        ("per_page=0", {}),
        ("per_page=0", {"error_out": False}),
        ("page=abc", {}),
        ("page=abc&per_page=x", {"error_out": False}),
        ("page=2&per_page=1000", {"max_per_page": 10}),
        ("", {"page": 4, "per_page": 5}),
        ("page=9", {"page": 2, "per_page": 3, "count": False}),
    ],
)
def test_same_pages_as_flask_sqlalchemy(
    app: Flask, db: SessionExt, both: SQLAlchemy, query: str, kwargs: dict[str, t.Any]
) -> None:
    """For the same data and arguments, db.paginate() gives what
    Flask-SQLAlchemy 3.1's gives, 404s included.
    """
    kwargs = {"max_per_page": None, **kwargs}
    with app.test_request_context(f"/?{query}"):
        ours = outcome(lambda: db.paginate(SELECT, **kwargs))
        theirs = outcome(lambda: both.paginate(SELECT, **kwargs))
    assert ours == theirs


def test_prev_and_next_as_flask_sqlalchemy(
    app: Flask, db: SessionExt, both: SQLAlchemy
) -> None:
    """prev() and next() query the neighbouring pages and keep the total."""
    with app.test_request_context("/?page=3&per_page=7"):
        ours, theirs = db.paginate(SELECT), both.paginate(SELECT)
        for step in ("prev", "next"):
            assert summary(getattr(ours, step)()) == summary(getattr(theirs, step)())
        assert ours.next().total == ROWS


def test_outside_a_request(app: Flask, db: SessionExt) -> None:
    """Outside a request, the first page of 20 items."""
    with app.app_context():
        db.session.add_all(User(name=f"user {n}") for n in range(25))
        page = db.paginate(SELECT)
        assert (page.page, page.per_page, len(page.items), page.pages) == (1, 20, 20, 2)
        assert isinstance(page, Pagination)


def test_max_per_page_defaults_to_100(app: Flask, db: SessionExt) -> None:
    """A per_page query argument above 100 is lowered to 100."""
    with app.test_request_context("/?per_page=5000"):
        assert db.paginate(SELECT).per_page == 100


def test_count_query_drops_order_by(app: Flask, db: SessionExt) -> None:
    """The total is one SELECT count(*) of the statement, without its
    ORDER BY, as a subquery.
    """
    with app.test_request_context("/?page=1"):
        db.paginate(SELECT.where(User.active))
        statements = [record.statement for record in db.get_recorded_queries()]
    count = statements[-1]
    assert count.startswith("SELECT count(*) AS count_1")
    assert "FROM (SELECT users.id" in count
    assert "ORDER BY" not in count


def test_huge_page_is_404(app: Flask, db: SessionExt) -> None:
    """A page number whose offset no database takes is a 404, not a 500."""
    with (
        app.test_request_context(f"/?page={10**22}"),
        pytest.raises(NotFound, match="404 Not Found"),
    ):
        db.paginate(SELECT)


def test_huge_per_page_without_limit(app: Flask, db: SessionExt) -> None:
    """A per_page larger than any LIMIT, with no max_per_page, gives every
    item on one page.
    """
    with app.test_request_context(f"/?per_page={10**22}"):
        db.session.add(User(name="only"))
        page = db.paginate(SELECT, max_per_page=None)
        assert [user.name for user in page] == ["only"]
        assert page.pages == 1


def test_shell_has_db_and_models(app: Flask) -> None:
    """flask shell's namespace has db and the mapped classes of the
    extension's metadata, and no others.
    """
    db = SessionExt(app, metadata=Base.metadata)
    namespace = app.make_shell_context()
    assert namespace["db"] is db
    assert namespace["User"] is User
    assert "Item" not in namespace  # mapped, but of another metadata
    assert Item.metadata is not Base.metadata
