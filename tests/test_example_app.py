"""The example app: every page, every form, the audit trail, the bulk
action, the CLI job, and a real WSGI server.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import typing as t
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
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
    # What an owner who drops an app does: Blinker keeps the app's receivers.
    app.extensions["example_flush_log"].disconnect()
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
    users = client.get("/users").text
    assert "<bdi>Kim</bdi> (0 tasks)" in users
    assert "<bdi>Grace</bdi> (1 task)" in users
    assert "<bdi>Ada</bdi> (2 tasks)" in users
    before = audit_rows(example)
    response = client.post("/tasks/archive-done", follow_redirects=True)
    assert (
        "Archived 1 done task with one UPDATE. 1 of the 1 task loaded" in response.text
    )
    assert "bypasses the session&#39;s change tracking" in response.text
    assert audit_rows(example) == before
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
    assert result.output == ("Deleted 1 archived task created more than 30 days ago.\n")
    with example.app_context():
        assert db.session.scalar(sa.select(Task).where(Task.title == "ancient")) is None


def test_purge_old_help_says_what_it_deletes(example: Flask) -> None:
    """``purge-old --help`` describes ``--days`` by the creation date, which is
    what the command compares.
    """
    result = example.test_cli_runner().invoke(args=["example", "purge-old", "--help"])
    assert result.exit_code == 0
    assert "created more than this many days ago" in " ".join(result.output.split())


#: Each page, and the documentation section it says it demonstrates.
PAGE_DOCS = {
    "/tasks": "sessions.html#the-scope-of-db-session",
    "/tasks/1": "sessions.html#getting-a-row-or-a-404",
    "/tasks/1/edit": "sessions.html#transaction",
    "/archive": "sessions.html#session-scope",
    "/users": "recording.html#recorded-queries",
    "/audit": "model-changes.html#what-a-commit-changed",
    "/pool": "signals.html#the-catalog",
    "/live": "broadcast.html#turning-it-on",
}


def test_every_page_says_what_it_shows(example: Flask) -> None:
    """Every page opens with one "What this shows" line that links to the
    section of the documentation it demonstrates, at the package's
    documentation address.
    """
    client = example.test_client()
    docs = "https://flask-sessionext.readthedocs.io/en/latest/"
    for path, section in PAGE_DOCS.items():
        html = client.get(path).text
        lines = re.findall(r'<p class="shows">What this shows: (.*?)</p>', html, re.S)
        assert len(lines) == 1, path
        assert f'href="{docs}{section}"' in lines[0], path


def test_docs_sections_exist() -> None:
    """Each section the pages link to is a section of the documentation."""
    for section in set(PAGE_DOCS.values()):
        page, anchor = section.split(".html#")
        text = (ROOT / "docs" / f"{page}.rst").read_text()
        titles = re.findall(r"^(.+)\n[-=~^]{3,}$", text, re.M)
        anchors = {
            re.sub(r"[^a-z0-9]+", "-", title.replace("``", "").lower()).strip("-")
            for title in titles
        }
        anchors |= set(re.findall(r"^\.\. _([\w-]+):$", text, re.M))
        assert anchor in anchors, section


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/tasks/999", 404, "There is no task #999."),
        ("POST", "/tasks", 400, "A task needs a title."),
        ("GET", "/tasks/1/toggle", 405, "Method Not Allowed"),
    ],
)
def test_error_pages_use_the_layout(
    example: Flask, method: str, path: str, status: int, message: str
) -> None:
    """400, 404 and 405 answer with a page in the app's layout: its
    navigation, the error's description and the query footer.
    """
    response = example.test_client().open(path, method=method, data={"title": " "})
    assert response.status_code == status
    assert f"<title>{status} " in response.text
    assert message in response.text
    assert 'href="/tasks">Board</a>' in response.text
    assert footer_count(response.text) == timing_count(response)


def test_pool_page_shows_numbers(example: Flask) -> None:
    """The pool page shows the QueuePool's numbers in words, not SQLAlchemy's
    raw status string with its negative overflow.
    """
    html = example.test_client().get("/pool").text
    assert "Current Overflow" not in html
    numbers = dict(re.findall(r"<tr><th>([^<]+)</th><td>(-?\d+)</td></tr>", html))
    assert int(numbers["Pool size (connections kept open)"]) == 5
    # The view runs no query before it reads the pool: the connection that
    # seeding opened is back in it.
    assert int(numbers["In use by requests"]) == 0
    assert int(numbers["Idle in the pool"]) == int(numbers["Open connections"]) >= 1
    assert int(numbers["Opened beyond the pool size (overflow)"]) == 0


def test_forms_have_labels(example: Flask) -> None:
    """Every text field and select of the new-task and edit forms has a
    label, and the title field spans the form.
    """
    client = example.test_client()
    for path in ("/tasks", "/tasks/1/edit"):
        html = client.get(path).text
        for field in ("title", "notes", "owner_id"):
            assert f'<label class="field" for="{field}">' in html, (path, field)
            assert re.search(rf'<(input|textarea|select) id="{field}"', html), field
        assert re.search(r'<input id="title" class="wide"', html), path


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
    server = _start_instance(port, env, log)
    try:
        status, headers, _ = _request(port, "GET", "/tasks")
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


def _start_instance(
    port: int, env: dict[str, str], log: t.IO[bytes]
) -> subprocess.Popen[bytes]:
    """The example app under waitress on ``port``, answering once started."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waitress",
            "--host=127.0.0.1",
            f"--port={port}",
            "--threads=8",
            "--call",
            "example_app:create_app",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            _request(port, "GET", "/tasks")  # creates the tables, and listens
            return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.terminate()  # it never answered: stopped all the same
                server.wait(timeout=10)
                raise
            time.sleep(0.1)


def test_two_instances_update_each_other_live(tmp_path: Path) -> None:
    """Two instances on two ports on one SQLite database: a task created
    through one reaches the other's browsers as a Server-Sent Event, and its
    Live page lists it as coming from another instance.
    """
    env = dict(
        os.environ, FLASK_SESSIONEXT_DATABASE_URI=f"sqlite:///{tmp_path / 'two.db'}"
    )
    ports = [_free_port(), _free_port()]
    servers: list[subprocess.Popen[bytes]] = []
    with ExitStack() as stack:
        try:
            for port in ports:
                log = stack.enter_context((tmp_path / f"{port}.log").open("wb"))
                servers.append(_start_instance(port, env, log))
            stream = http.client.HTTPConnection("127.0.0.1", ports[1], timeout=10)
            stack.callback(stream.close)
            stream.request("GET", "/live/events?seconds=8")
            response = stream.getresponse()
            assert response.getheader("Content-Type", "").startswith(
                "text/event-stream"
            )
            assert response.readline() == b": listening\n"
            status, _, _ = _request(ports[0], "POST", "/tasks", {"title": "live"})
            assert status == 302
            line = b""
            while not line.startswith(b"data: "):
                line = response.readline()
                assert line, "the stream ended without the change"
            event = json.loads(line[len(b"data: ") :])
            assert event["local"] is False
            assert any(c.startswith("insert tasks #") for c in event["changes"])
            html = _request(ports[1], "GET", "/live")[2]
            assert "another instance" in html
        finally:
            for server in servers:
                server.terminate()
                server.wait(timeout=10)


def test_live_page_shows_publications_lost(example: Flask) -> None:
    """A ``publications_lost`` of the listener reaches the Live page and the
    event streams, so the browsers reload everything.
    """
    from flask_sessionext.signals import publications_lost

    example.test_client().get("/")  # the first request: the app listens
    publications_lost.send(example, reason="pruned")
    page = example.test_client().get("/live").get_data(as_text=True)
    assert "publications lost (pruned): reload everything" in page
