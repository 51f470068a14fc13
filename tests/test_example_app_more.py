"""The example app: pagination of the audit log, ``flask shell``, and the
answers to bad input.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from flask import Flask
from test_example_app import example  # noqa: F401 (the fixture)

from example_app import db
from example_app.models import AuditEntry, Task, User


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


@pytest.mark.parametrize("path", ["/tasks", "/tasks/1/edit"])
@pytest.mark.parametrize(
    "owner_id", ["abc", "999", "-1", "1e3", "99999999999999999999"]
)
def test_bad_owner_is_400(example: Flask, path: str, owner_id: str) -> None:  # noqa: F811
    """An owner that is no user of the list is a 400 page naming it, and
    nothing is saved.
    """
    client = example.test_client()
    with example.app_context():
        before = db.session.scalars(sa.select(Task.title)).all()
    response = client.post(path, data={"title": "Owned", "owner_id": owner_id})
    assert response.status_code == 400
    assert f"The owner &#39;{owner_id}&#39; is not one of the users" in response.text
    with example.app_context():
        assert db.session.scalars(sa.select(Task.title)).all() == before


def test_long_title_is_400(example: Flask) -> None:  # noqa: F811
    """A title over 200 characters is a 400 page, not cut short silently."""
    client = example.test_client()
    response = client.post("/tasks", data={"title": "x" * 201})
    assert response.status_code == 400
    assert "A title has at most 200 characters; this one has 201." in response.text
    assert client.post("/tasks", data={"title": "x" * 200}).status_code == 302
    audit = client.get("/audit").text
    assert f"<bdi>{'x' * 192}… (open)</bdi>" in audit


def test_long_notes_are_400(example: Flask) -> None:  # noqa: F811
    """Notes over 5000 characters are a 400 page, on create and on edit."""
    client = example.test_client()
    for path in ("/tasks", "/tasks/1/edit"):
        response = client.post(path, data={"title": "T", "notes": "n" * 5001})
        assert response.status_code == 400
        assert "Notes have at most 5000 characters; these have 5001." in response.text


def test_long_titles_wrap(example: Flask) -> None:  # noqa: F811
    """The layout lets a long unbroken title wrap instead of widening the
    page.
    """
    html = example.test_client().get("/tasks").text
    assert "main { overflow-wrap: anywhere; }" in html


def test_notes_keep_line_breaks(example: Flask) -> None:  # noqa: F811
    """A task's notes are shown with their line breaks."""
    client = example.test_client()
    response = client.post("/tasks", data={"title": "Lines", "notes": "one\ntwo"})
    html = client.get(response.headers["Location"]).text
    assert '<p class="notes"><bdi>one\ntwo</bdi></p>' in html
    assert ".notes { white-space: pre-line; }" in html


def test_user_text_is_isolated(example: Flask) -> None:  # noqa: F811
    """Titles and names are in <bdi>, so right-to-left text does not reorder
    the text around it.
    """
    client = example.test_client()
    client.post("/users", data={"name": "عمر"})
    with example.app_context():
        owner = db.session.scalars(sa.select(User).filter_by(name="عمر")).one()
    response = client.post("/tasks", data={"title": "שלום", "owner_id": owner.id})
    task_page = client.get(response.headers["Location"]).text
    board = client.get("/tasks").text
    for html in (task_page, board):
        assert "<bdi>שלום</bdi>" in html
        assert "<bdi>عمر</bdi>" in html
    assert "<li><bdi>عمر</bdi> (1 task)</li>" in client.get("/users").text


def test_500_page_uses_the_layout(example: Flask) -> None:  # noqa: F811
    """An unhandled exception answers a 500 page in the app's layout."""

    @example.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    example.config["PROPAGATE_EXCEPTIONS"] = False
    response = example.test_client().get("/boom")
    assert response.status_code == 500
    assert "<title>500 Internal Server Error" in response.text
    assert 'href="/tasks">Board</a>' in response.text
    assert "boom" not in response.text


def test_purge_old_refuses_huge_days(example: Flask) -> None:  # noqa: F811
    """purge-old with a number of days beyond a century is a usage error,
    not a traceback.
    """
    result = example.test_cli_runner().invoke(
        args=["example", "purge-old", "--days", "99999999999"]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--days'" in result.output
    assert "0<=x<=36500" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_layout_has_an_icon(example: Flask) -> None:  # noqa: F811
    """Every page names its icon inline, so browsers ask for no
    /favicon.ico.
    """
    html = example.test_client().get("/tasks").text
    assert '<link rel="icon" href="data:image/svg+xml,' in html


def test_async_endpoint(example: Flask) -> None:  # noqa: F811
    """The async endpoint reads the board through db.async_session, and
    answers 404 for a missing task.
    """
    client = example.test_client()
    try:
        tasks = client.get("/api/tasks").json["tasks"]  # type: ignore[index]
        assert tasks
        first = tasks[0]
        assert client.get(f"/api/tasks/{first['id']}").json == first
        assert client.get("/api/tasks/99999").status_code == 404
    finally:
        engines = list(example.extensions["sessionext"].async_state.engines.values())

        async def dispose() -> None:
            for engine in engines:
                await engine.dispose()

        asyncio.run(dispose())
