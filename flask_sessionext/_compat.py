"""The private names of SQLAlchemy that this package relies on, in one place.

Each has no public alternative; ``tests/test_compat.py`` fails loudly when
SQLAlchemy changes one of them.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import orm


@contextmanager
def outside_transaction_block(session: orm.Session) -> Iterator[None]:
    """Let ``session`` be used while the ``with session.begin():`` block whose
    transaction just committed is still exiting.

    SQLAlchemy refuses any use of a session between the commit of a
    ``with session.begin():`` block and the end of its ``__exit__``
    ("Can't operate on closed transaction inside context manager"), and it
    offers no event after that ``__exit__``. ``on_commit`` callbacks run once
    the commit is complete, at the end of the committed transaction, and must
    be able to use the session: for their duration the session is taken out
    of the block (``Session._trans_context_manager``), then put back, so the
    block's own ``__exit__`` finishes as usual.
    """
    block: t.Any = session._trans_context_manager
    if block is None:
        yield
        return
    session._trans_context_manager = None
    try:
        yield
    finally:
        session._trans_context_manager = block
