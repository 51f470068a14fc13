"""The example app: every page, every form, the audit trail, the bulk
action, the CLI job, and a real WSGI server.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
import typing as t
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from _postgres import PostgresServer

ROOT = Path(__file__).parents[1]
# The example lives beside the package, not in it; appended, so the installed
# flask_sessionext still wins over the source tree.
sys.path.append(str(ROOT))

from example_app import create_app, db, prepare_database  # noqa: E402
from example_app.models import AuditEntry, Base, Task, now  # noqa: E402


@pytest.fixture
def example(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Flask]:
    """The example app on the parametrized database, tables dropped after."""
    if database == "sqlite":
        uri = f"sqlite:///{tmp_path / 'example.sqlite3'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        uri = server.create_database("example_app")
    app = create_app({"TESTING": True, "SESSIONEXT_DATABASE_URI": uri})
    with app.app_context():
        prepare_database()  # what the first request does
    yield app
    with app.app_context():
        engine = db.engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def footer_count(html: str) -> int:
    """The number of queries the page's footer reports."""
    match = re.search(r"This page: (\d+) quer", html)
    assert match is not None, "no footer"
    return int(match.group(1))


def timing_count(response: t.Any) -> int:
    """The number of queries the Server-Timing header reports."""
    match = re.search(r'desc="(\d+) quer', response.headers["Server-Timing"])
    assert match is not None
    return int(match.group(1))


def audit_rows(app: Flask) -> list[tuple[str, str, str, str]]:
    """(who, model, operation, summary) of every audit entry, oldest first."""
    with app.app_context():
        rows = db.session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id))
        return [(e.who, e.model, e.operation, e.summary) for e in rows]


def test_every_page_renders(example: Flask) -> None:
    """Every page answers 200, with a footer whose count matches the
    Server-Timing header, both taken from the recorded queries.
    """
    client = example.test_client()
    for path in (
        "/tasks",
        "/tasks/1",
        "/tasks/1/edit",
        "/archive",
        "/users",
        "/audit",
        "/pool",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert footer_count(response.text) == timing_count(response), path
    assert client.get("/").status_code == 302
    assert client.get("/tasks/999").status_code == 404


def test_forms_and_audit_trail(example: Flask) -> None:
    """Create, edit, toggle and delete work, and the audit log holds exactly
    the committed changes, by the acting user.
    """
    client: FlaskClient = example.test_client()
    seeded = len(audit_rows(example))
    client.post("/act-as", data={"name": "Lin"})
    created = client.post("/tasks", data={"title": "Write docs", "owner_id": "1"})
    assert created.status_code == 302
    ident = int(created.location.rsplit("/", 1)[1])
    assert "Write docs" in client.get(f"/tasks/{ident}").text
    edited = client.post(
        f"/tasks/{ident}/edit",
        data={"title": "Write more docs", "notes": "n", "done": "on"},
    )
    assert edited.status_code == 302
    assert client.post(f"/tasks/{ident}/toggle").status_code == 302
    assert client.post(f"/tasks/{ident}/delete").status_code == 302
    assert client.get(f"/tasks/{ident}").status_code == 404
    assert client.post("/tasks", data={"title": " "}).status_code == 400
    assert audit_rows(example)[seeded:] == [
        ("Lin", "Task", "insert", "Write docs (open)"),
        ("Lin", "Task", "update", "Write more docs (done)"),
        ("Lin", "Task", "update", "Write more docs (open)"),
        ("Lin", "Task", "delete", "Write more docs (open)"),
    ]
    outbox = client.get("/audit").text
    assert "Task created: Write docs" in outbox
    assert "Task deleted: Write more docs" in outbox


def test_rolled_back_request_leaves_no_audit_entry(example: Flask) -> None:
    """A request that flushed a change and then failed writes no audit entry."""
    example.config["PROPAGATE_EXCEPTIONS"] = False

    @example.post("/fail")
    def fail() -> str:
        task = db.get_or_404(Task, 1)
        task.title = "never committed"
        db.session.flush()
        raise RuntimeError("after the flush")

    before = audit_rows(example)
    assert example.test_client().post("/fail").status_code == 500
    assert audit_rows(example) == before
    with example.app_context():
        assert db.session.get(Task, 1).title != "never committed"  # type: ignore[union-attr]


def test_users_and_bulk_archive(example: Flask) -> None:
    """Users can be added, and the bulk archive's UPDATE is visible on the
    tasks already loaded in the request.
    """
    client = example.test_client()
    client.post("/users", data={"name": "Kim"})
    assert "Kim (0 tasks)" in client.get("/users").text
    response = client.post("/tasks/archive-done", follow_redirects=True)
    assert "Archived 1 done task(s) with one UPDATE. 1 of the 1 loaded" in response.text
    assert "Read the README" in response.text  # now on the archive page


def test_purge_old_cli(example: Flask) -> None:
    """``flask example purge-old`` deletes old archived tasks in a
    session_scope().
    """
    with example.app_context():
        db.session.add(
            Task(title="ancient", archived=True, created=now().replace(year=2000))
        )
        db.session.commit()
    result = example.test_cli_runner().invoke(
        args=["example", "purge-old", "--days", "30"]
    )
    assert result.exit_code == 0
    assert "Deleted 1 archived task(s)" in result.output
    with example.app_context():
        assert db.session.scalar(sa.select(Task).where(Task.title == "ancient")) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(
    port: int, method: str, path: str, form: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = urllib.parse.urlencode(form) if form is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def test_under_a_real_wsgi_server(tmp_path: Path) -> None:
    """Under waitress on 127.0.0.1, a create-edit-delete flow works over HTTP
    and every response carries Server-Timing; the server is stopped by PID.
    """
    port = _free_port()
    env = dict(
        os.environ, FLASK_SESSIONEXT_DATABASE_URI=f"sqlite:///{tmp_path / 'e2e.db'}"
    )
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waitress",
            "--host=127.0.0.1",
            f"--port={port}",
            "--call",
            "example_app:create_app",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, headers, _ = _request(port, "GET", "/tasks")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        assert status == 200
        assert re.fullmatch(
            r'db;dur=\d+\.\d;desc="\d+ quer(y|ies)"', headers["Server-Timing"]
        )
        status, headers, _ = _request(port, "POST", "/tasks", {"title": "over http"})
        assert status == 302
        path = urllib.parse.urlsplit(headers["Location"]).path
        assert "over http" in _request(port, "GET", path)[2]
        status, _, _ = _request(
            port, "POST", f"{path}/edit", {"title": "edited over http"}
        )
        assert status == 302
        assert "edited over http" in _request(port, "GET", path)[2]
        assert _request(port, "POST", f"{path}/delete", {})[0] == 302
        status, headers, _ = _request(port, "GET", path)
        assert status == 404
        assert "Server-Timing" in headers
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
    assert server.returncode is not None


def test_check_reports_an_unreachable_database() -> None:
    """``flask sessionext check`` runs on the example app whose database is
    down, and says so in one line without the password.
    """
    port = _free_port()
    url = f"postgresql+psycopg://app:s3cret@127.0.0.1:{port}/tasks"
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "example_app", "sessionext", "check"],
        cwd=ROOT,
        env=dict(os.environ, FLASK_SESSIONEXT_DATABASE_URI=url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(
        "Error: Cannot connect to the default bind"
        f" (postgresql+psycopg://app:***@127.0.0.1:{port}/tasks): "
    )
    assert "s3cret" not in result.stderr
