"""The example app: pagination of the audit log, ``flask shell``, and the
answers to bad input.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask
from test_example_app import example  # noqa: F401 (the fixture)

from example_app import db
from example_app.models import AuditEntry, Task


@pytest.mark.parametrize("ident", [2**31, 2**63])
def test_task_id_out_of_range(example: Flask, ident: int) -> None:  # noqa: F811
    """A task id that the column cannot hold is a 404 page, not a 500."""
    response = example.test_client().get(f"/tasks/{ident}")
    assert response.status_code == 404


def test_audit_log_pages(example: Flask) -> None:  # noqa: F811
    """The audit log shows 25 entries a page, newest first, with links to
    the other pages, and a page past the last is a 404.
    """
    with example.app_context():
        db.session.add_all(
            AuditEntry(
                who="t", model="Task", key=str(n), operation="update", summary=""
            )
            for n in range(60)
        )
        db.session.commit()
        total = db.session.scalars(sa.select(sa.func.count(AuditEntry.id))).one()
    client = example.test_client()
    first = client.get("/audit").text
    assert f"Entries 1 to 25 of {total}:" in first
    assert 'href="/audit?page=2" rel="next"' in first
    last_page = -(-total // 25)
    last = client.get(f"/audit?page={last_page}").text
    assert 'rel="prev"' in last
    assert 'rel="next"' not in last
    assert client.get(f"/audit?page={last_page + 1}").status_code == 404
    assert client.get("/audit?page=x").status_code == 404


def test_shell_has_db_and_models(example: Flask) -> None:  # noqa: F811
    """flask shell offers db and the app's models."""
    namespace = example.make_shell_context()
    assert namespace["db"] is db
    assert namespace["Task"] is Task
    assert namespace["AuditEntry"] is AuditEntry
