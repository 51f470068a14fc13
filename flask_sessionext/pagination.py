"""Pages of a ``select()``: :meth:`.SessionExt.paginate` and the
:class:`Pagination` it returns, with the interface of Flask-SQLAlchemy 3.1's.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator
from math import ceil

import sqlalchemy as sa
import sqlalchemy.orm as orm
from flask import abort, request

#: What ``per_page`` is when neither the call nor the query string gives it.
DEFAULT_PER_PAGE = 20
#: The largest ``OFFSET`` and ``LIMIT`` that every database takes (a signed
#: 64-bit integer); a page beyond it has no items, and is not queried.
_MAX_OFFSET = 2**63 - 1


class Pagination:
    """One page of the results of a ``select()``, and the numbers of the
    others. :meth:`.SessionExt.paginate` makes it; iterating over it iterates
    over :attr:`items`::

        page = db.paginate(sa.select(Task).order_by(Task.id))
        for task in page:
            ...
        for number in page.iter_pages():
            ...  # None where pages are skipped

    Its attributes, properties and methods are those of Flask-SQLAlchemy
    3.1's ``Pagination``, with the same values for the same data.
    """

    def __init__(
        self,
        select: sa.Select[t.Any],
        session: orm.Session,
        *,
        page: int,
        per_page: int,
        max_per_page: int | None,
        error_out: bool,
        count: bool,
    ) -> None:
        self._select = select
        self._session = session
        #: The number of the current page, from 1.
        self.page: int = page
        #: The largest number of items on a page.
        self.per_page: int = per_page
        #: The largest ``per_page`` accepted; ``None`` for no limit.
        self.max_per_page: int | None = max_per_page
        #: The items of the current page.
        self.items: list[t.Any] = self._query_items()
        if not self.items and page != 1 and error_out:
            abort(404)
        #: The number of items of every page; ``None`` with ``count=False``.
        self.total: int | None = self._query_count() if count else None

    def _query_items(self) -> list[t.Any]:
        offset = (self.page - 1) * self.per_page
        if offset > _MAX_OFFSET:
            return []
        limit = min(self.per_page, _MAX_OFFSET)
        statement = self._select.limit(limit).offset(offset)
        return list(self._session.execute(statement).unique().scalars())

    def _query_count(self) -> int:
        # ORDER BY and eager loads only slow the count down.
        sub = self._select.options(orm.lazyload("*")).order_by(None).subquery()
        count = sa.select(sa.func.count()).select_from(sub)
        return int(self._session.execute(count).scalar_one())

    @property
    def first(self) -> int:
        """The number of the first item of the page, from 1; 0 when the page
        has no items.
        """
        if not self.items:
            return 0
        return (self.page - 1) * self.per_page + 1

    @property
    def last(self) -> int:
        """The number of the last item of the page, from 1; 0 when the page
        has no items.
        """
        first = self.first
        return max(first, first + len(self.items) - 1)

    @property
    def pages(self) -> int:
        """The number of pages; 0 without items or without :attr:`total`."""
        if not self.total:
            return 0
        return ceil(self.total / self.per_page)

    @property
    def has_prev(self) -> bool:
        """Whether this is not the first page."""
        return self.page > 1

    @property
    def prev_num(self) -> int | None:
        """The number of the previous page; ``None`` on the first page."""
        return self.page - 1 if self.has_prev else None

    @property
    def has_next(self) -> bool:
        """Whether this is not the last page."""
        return self.page < self.pages

    @property
    def next_num(self) -> int | None:
        """The number of the next page; ``None`` on the last page."""
        return self.page + 1 if self.has_next else None

    def prev(self, *, error_out: bool = False) -> Pagination:
        """The previous page, queried now, with this page's :attr:`total`.

        :param error_out: abort with 404 when that page has no items and is
            not the first.
        """
        return self._other(self.page - 1, error_out)

    def next(self, *, error_out: bool = False) -> Pagination:
        """The next page, queried now, with this page's :attr:`total`.

        :param error_out: abort with 404 when that page has no items and is
            not the first.
        """
        return self._other(self.page + 1, error_out)

    def _other(self, page: int, error_out: bool) -> Pagination:
        if page < 1:
            if error_out:
                abort(404)
            page = 1
        other = type(self)(
            self._select,
            self._session,
            page=page,
            per_page=self.per_page,
            max_per_page=self.max_per_page,
            error_out=error_out,
            count=False,
        )
        other.total = self.total
        return other

    def iter_pages(
        self,
        *,
        left_edge: int = 2,
        left_current: int = 2,
        right_current: int = 4,
        right_edge: int = 2,
    ) -> Iterator[int | None]:
        """The page numbers of a pagination widget, ``None`` where pages are
        skipped. With 20 pages, on page 7::

            1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 19, 20

        :param left_edge: pages shown from the first.
        :param left_current: pages shown before the current one.
        :param right_current: pages shown after the current one.
        :param right_edge: pages shown up to the last.
        """
        end = self.pages + 1
        if end == 1:
            return
        left_end = min(1 + left_edge, end)
        yield from range(1, left_end)
        if left_end == end:
            return
        mid_start = max(left_end, self.page - left_current)
        mid_end = min(self.page + right_current + 1, end)
        if mid_start > left_end:
            yield None
        yield from range(mid_start, mid_end)
        if mid_end == end:
            return
        right_start = max(mid_end, end - right_edge)
        if right_start > mid_end:
            yield None
        yield from range(right_start, end)

    def __iter__(self) -> Iterator[t.Any]:
        return iter(self.items)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} page {self.page} of {self.pages},"
            f" {len(self.items)} item(s)>"
        )


def paginate(
    select: sa.Select[t.Any],
    session: orm.Session,
    *,
    page: int | None,
    per_page: int | None,
    max_per_page: int | None,
    error_out: bool,
    count: bool,
) -> Pagination:
    """The page of ``select`` that the arguments, else the request's
    ``page`` and ``per_page`` query arguments, ask for.

    :raise werkzeug.exceptions.NotFound: with ``error_out``, ``page`` or
        ``per_page`` is not an int of at least 1, or the page is past the
        last.
    """
    if request:
        if page is None:
            page = _query_arg("page", 1, error_out)
        if per_page is None:
            per_page = _query_arg("per_page", DEFAULT_PER_PAGE, error_out)
    else:
        page = 1 if page is None else page
        per_page = DEFAULT_PER_PAGE if per_page is None else per_page
    if max_per_page is not None:
        per_page = min(per_page, max_per_page)
    if page < 1:
        if error_out:
            abort(404)
        page = 1
    if per_page < 1:
        if error_out:
            abort(404)
        per_page = DEFAULT_PER_PAGE
    return Pagination(
        select,
        session,
        page=page,
        per_page=per_page,
        max_per_page=max_per_page,
        error_out=error_out,
        count=count,
    )


def _query_arg(name: str, default: int, error_out: bool) -> int:
    """The int query argument ``name`` of the request; ``default`` when it is
    missing, or not an int and not ``error_out``.

    :raise werkzeug.exceptions.NotFound: it is not an int and ``error_out``.
    """
    try:
        return int(request.args.get(name, default))
    except (TypeError, ValueError):
        if error_out:
            abort(404)
        return default
