"""Tests of the throwaway PostgreSQL server helper in tests/_postgres.py."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import _postgres
from _postgres import APP_PASSWORD, REQUIRE_ENV, PostgresServer, find_pg_bin


def _new_server() -> PostgresServer:
    """Start a server, or skip the test when PostgreSQL is not installed."""
    server = _postgres.start_for_session()
    if server is None:
        pytest.skip(f"PostgreSQL binaries not found and {REQUIRE_ENV} is unset")
    return server


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """One server shared by the read-only tests of this module."""
    srv = _new_server()
    yield srv
    srv.close()


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server for a single test that stops or closes it."""
    srv = _new_server()
    yield srv
    srv.close()


def _scalar(url: str, query: str) -> object:
    """Run query on a fresh engine for url and return its single value."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query)).scalar_one()
    finally:
        engine.dispose()


def test_find_pg_bin_has_server_binaries() -> None:
    """find_pg_bin() returns a directory with initdb, pg_ctl and postgres."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found")
    assert not bin_dir.is_symlink()
    for name in ("initdb", "pg_ctl", "postgres"):
        assert (bin_dir / name).is_file()


def test_start_for_session_without_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing binaries give None, or a RuntimeError when they are required."""
    monkeypatch.setattr(_postgres, "find_pg_bin", lambda: None)
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    assert _postgres.start_for_session() is None
    monkeypatch.setenv(REQUIRE_ENV, "")
    assert _postgres.start_for_session() is None
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(RuntimeError, match="install the 'postgresql' package"):
        _postgres.start_for_session()


def test_select_one_as_app_role(server: PostgresServer) -> None:
    """The sessionext role can log in to its database and run a query."""
    assert _scalar(server.url(), "select 1") == 1
    assert _scalar(server.url(), "select current_user") == "sessionext"
    assert _scalar(server.url(), "select current_database()") == "sessionext"


def test_listens_only_on_loopback(server: PostgresServer) -> None:
    """The server listens on 127.0.0.1 and keeps its socket in base_dir."""
    url = server.url()
    assert _scalar(url, "select host(inet_server_addr())") == "127.0.0.1"
    assert _scalar(url, "select current_setting('listen_addresses')") == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
    assert (server.socket_dir / f".s.PGSQL.{server.port}").exists()
    assert server.base_dir.parent == Path("/tmp")


def test_settings_for_tests(server: PostgresServer) -> None:
    """Durability is off and two-phase commit is enabled."""
    url = server.url()
    assert _scalar(url, "show fsync") == "off"
    assert _scalar(url, "show max_prepared_transactions") == "10"
    assert _scalar(url, "show max_connections") == "100"


def test_durable_settings() -> None:
    """A server started with durable=True flushes commits: fsync on."""
    srv = _postgres.start_for_session(durable=True)
    if srv is None:
        pytest.skip(f"PostgreSQL binaries not found and {REQUIRE_ENV} is unset")
    with srv:
        url = srv.url()
        assert _scalar(url, "show fsync") == "on"
        assert _scalar(url, "show synchronous_commit") == "on"
        assert _scalar(url, "show full_page_writes") == "on"
        assert _scalar(url, "show max_connections") == "100"


def test_password_not_in_repr(server: PostgresServer) -> None:
    """repr() of a server does not reveal the password."""
    assert APP_PASSWORD not in repr(server)
    assert APP_PASSWORD in server.url()


def test_create_database(server: PostgresServer) -> None:
    """create_database() makes a database owned by sessionext, idempotently."""
    url = server.create_database("x")
    assert url == server.url("x")
    assert server.create_database("x") == url
    assert _scalar(url, "select current_database()") == "x"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("create table t (id int)"))
    finally:
        engine.dispose()


def test_stop_start_keeps_data_and_port(
    own_server: PostgresServer, server: PostgresServer
) -> None:
    """Data survives stop() and start(), which reuse the same port."""
    assert (own_server.port, own_server.base_dir) != (server.port, server.base_dir)
    port, pid = own_server.port, own_server.pid
    engine = sa.create_engine(own_server.url())
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("create table kept (value text)"))
            conn.execute(sa.text("insert into kept values ('still here')"))
        engine.dispose()
        own_server.stop()
        assert own_server.pid is None
        with pytest.raises(sa.exc.OperationalError):
            _scalar(own_server.url(), "select 1")
        own_server.start()
        assert own_server.port == port
        assert own_server.pid not in (None, pid)
        with engine.connect() as conn:
            value = conn.execute(sa.text("select value from kept")).scalar_one()
        assert value == "still here"
    finally:
        engine.dispose()


def test_close_kills_postmaster_and_removes_dir(own_server: PostgresServer) -> None:
    """close() leaves no postmaster process and removes the directory."""
    pid = own_server.pid
    assert pid is not None
    base_dir = own_server.base_dir
    assert base_dir.is_dir()
    own_server.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not base_dir.exists()
    own_server.close()
