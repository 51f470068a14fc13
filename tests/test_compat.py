"""The private names of SQLAlchemy that ``flask_sessionext._compat`` relies
on still mean what it takes them to mean; a failure here names the change.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask.ctx import AppContext
from sqlalchemy import orm

from flask_sessionext import SessionExt
from flask_sessionext._compat import outside_transaction_block


def test_transaction_block_attribute(app_ctx: AppContext, db: SessionExt) -> None:
    """``with session.begin():`` sets ``Session._trans_context_manager`` and
    refuses use after its commit until the block exits, which
    ``outside_transaction_block`` lifts.
    """
    assert "_trans_context_manager" in vars(orm.Session), (
        "SQLAlchemy no longer has Session._trans_context_manager:"
        " update flask_sessionext._compat.outside_transaction_block"
    )
    session = db.session()
    with session.begin() as transaction:
        assert session._trans_context_manager is transaction
        transaction.commit()
        with pytest.raises(
            sa.exc.InvalidRequestError,
            match="closed transaction inside context manager",
        ):
            session.scalar(sa.select(1))
        with outside_transaction_block(session):
            assert session.scalar(sa.select(1)) == 1
        assert session._trans_context_manager is transaction
    assert session._trans_context_manager is None
