"""Start a throwaway PostgreSQL server for the test suite.

The server lives in its own directory created with :func:`tempfile.mkdtemp`
directly under ``/tmp`` (pytest's tmp dirs are mode 0700 and owned by root,
which the ``postgres`` OS user cannot traverse).  It listens only on
127.0.0.1, keeps its unix socket inside that directory and is tuned for speed,
not durability, unless it is created with ``durable=True`` (``fsync``,
``synchronous_commit`` and ``full_page_writes`` left on, as in production).

Nothing is registered globally: whoever creates a :class:`PostgresServer`
owns it and must call :meth:`PostgresServer.close` (or use it as a context
manager).

The postmaster is started as a direct child of this process (not through
``pg_ctl start``, which daemonizes it).  That way it is reaped when it exits
instead of lingering as a zombie: in some containers PID 1 never reaps
orphans, and a zombie still answers ``os.kill(pid, 0)``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql

__all__ = [
    "APP_DATABASE",
    "APP_PASSWORD",
    "APP_ROLE",
    "REQUIRE_ENV",
    "PostgresServer",
    "find_pg_bin",
    "start_for_session",
]

#: Login role used by the tests; owns :data:`APP_DATABASE`.
APP_ROLE = "sessionext"
#: Deliberately a literal: tests check it never leaks into messages.
APP_PASSWORD = "s3cret-pw"
APP_DATABASE = "sessionext"
SUPERUSER = "postgres"
#: When set (non-empty), missing server binaries are an error, not a skip.
REQUIRE_ENV = "SESSIONEXT_REQUIRE_POSTGRES"

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_FALLBACK_OS_USER = "sessionext-pg"
_LOG_TAIL_LINES = 40
_PORT_ATTEMPTS = 5
#: Settings that trade durability for speed, unless the server is durable.
_NOT_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def find_pg_bin() -> Path | None:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``pg_ctl`` on PATH wins (symlinks resolved, so /usr/local/bin/pg_ctl ->
    /usr/lib/postgresql/15/bin/pg_ctl gives the latter's directory); otherwise
    the highest /usr/lib/postgresql/<version>/bin.  None when none is found.
    """
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    candidates.extend(
        sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: _version_key(p.parent.name),
            reverse=True,
        )
    )
    for candidate in candidates:
        if all(os.access(candidate / name, os.X_OK) for name in _SERVER_BINARIES):
            return candidate
    return None


def start_for_session(*, durable: bool = False) -> PostgresServer | None:
    """Start a server for one test session (or one xdist worker); with
    ``durable``, one that flushes each commit to disk (see
    :class:`PostgresServer`).

    Returns None when the binaries are missing and :data:`REQUIRE_ENV` is
    unset or empty; raises RuntimeError when they are missing but it is set.
    The caller must ``close()`` the returned server.
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        if os.environ.get(REQUIRE_ENV):
            raise RuntimeError(
                "PostgreSQL server binaries not found; install the 'postgresql' package"
            )
        return None
    server = PostgresServer(bin_dir, durable=durable)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


class PostgresServer:
    """A throwaway PostgreSQL cluster listening on 127.0.0.1.

    ``start()`` initialises the cluster on first use (initdb, role and
    database :data:`APP_ROLE` / :data:`APP_DATABASE`).  ``stop()`` and
    ``start()`` can be repeated; the data directory and the port stay the
    same.  ``close()`` stops the server (killing it if need be) and removes
    the directory if this object created it.
    """

    def __init__(
        self,
        bin_dir: Path,
        base_dir: Path | None = None,
        *,
        timeout: float = 60.0,
        durable: bool = False,
    ) -> None:
        """Prepare (but do not start) a server using the binaries in bin_dir.

        Without base_dir a fresh directory is created under /tmp and removed
        by ``close()``; a given base_dir (new or empty: the superuser password
        is per object) is used as is and left in place. ``durable`` keeps
        ``fsync``, ``synchronous_commit`` and ``full_page_writes`` on (the
        server's defaults), for benchmarks whose commits must reach the disk;
        it applies when the cluster is initialised.
        """
        self.bin_dir = Path(bin_dir)
        self.timeout = timeout
        self.durable = durable
        self._uid: int | None = None
        self._gid: int | None = None
        self._extra_groups: list[int] | None = None
        if os.geteuid() == 0:
            account = _server_os_user()
            self._uid, self._gid = account.pw_uid, account.pw_gid
            self._extra_groups = []
        self._owns_base_dir = base_dir is None
        if base_dir is None:
            tmp_root = "/tmp" if os.path.isdir("/tmp") else None
            base_dir = Path(tempfile.mkdtemp(prefix="sessionext-pg-", dir=tmp_root))
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_file = self.base_dir / "postgres.log"
        self._superuser_password = secrets.token_urlsafe(24)
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._bootstrapped = False
        self._closed = False
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.base_dir)
        self._chown(self.socket_dir)

    def __repr__(self) -> str:
        """Describe the server without any password."""
        return f"<PostgresServer port={self._port} base_dir={str(self.base_dir)!r}>"

    def __enter__(self) -> PostgresServer:
        """Start the server (closing it again if that fails)."""
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the server."""
        self.close()

    # -- public API ----------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1 (fixed at the first start)."""
        if self._port is None:
            raise RuntimeError("the server has not been started yet")
        return self._port

    @property
    def pid(self) -> int | None:
        """Postmaster PID from postmaster.pid, or None if there is none."""
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n")[0]
            return int(first_line)
        except (OSError, ValueError):
            return None

    @property
    def running(self) -> bool:
        """Whether the postmaster started by this object is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def url(
        self, database: str = APP_DATABASE, *, driver: str = "postgresql+psycopg"
    ) -> str:
        """SQLAlchemy URL connecting as :data:`APP_ROLE` to database."""
        return self._url(APP_ROLE, APP_PASSWORD, database, driver)

    def superuser_url(
        self, database: str = "postgres", *, driver: str = "postgresql+psycopg"
    ) -> str:
        """SQLAlchemy URL connecting as the superuser (random password)."""
        return self._url(SUPERUSER, self._superuser_password, database, driver)

    def create_database(self, name: str) -> str:
        """Create database name owned by :data:`APP_ROLE` unless it exists.

        Returns ``url(name)``.
        """
        with self.superuser_connection() as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(APP_ROLE)
                    )
                )
        return self.url(name)

    def start(self) -> None:
        """Start the server (initialising the cluster first if needed)."""
        if self._closed:
            raise RuntimeError("the server has been closed")
        if self.running:
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self._port is not None:
            self._launch(self._port)
        else:
            # The port is only known to be free when probed; another process
            # (e.g. another xdist worker) may take it first, so retry.
            for attempt in range(_PORT_ATTEMPTS):
                port = _free_port()
                try:
                    self._launch(port)
                except _BindError:
                    if attempt == _PORT_ATTEMPTS - 1:
                        raise
                    continue
                self._port = port
                break
        if not self._bootstrapped:
            self._bootstrap()
            self._bootstrapped = True

    def stop(self) -> None:
        """Stop the server with ``pg_ctl stop -m fast -w``; keeps the data."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            result = self._run(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(self.timeout)),
                ]
            )
            if result.returncode != 0:
                raise self._error("pg_ctl stop failed", result.stdout)
            try:
                # pg_ctl returns once postmaster.pid is gone; reap the process.
                proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise self._error("postmaster did not exit after pg_ctl stop") from None
        self._proc = None

    def close(self) -> None:
        """Stop the server (killing it if stopping fails) and remove its files.

        Safe to call more than once.
        """
        if self._closed:
            return
        try:
            try:
                self.stop()
            except (RuntimeError, OSError, subprocess.SubprocessError):
                self._kill()
        finally:
            self._closed = True
            if self._owns_base_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- internals -----------------------------------------------------------

    def _url(self, user: str, password: str, database: str, driver: str) -> str:
        return (
            f"{driver}://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@127.0.0.1:{self.port}/{quote(database, safe='')}"
        )

    def superuser_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection to the ``postgres`` database as the
        superuser, e.g. to terminate backends.
        """
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=self._superuser_password,
            dbname="postgres",
            autocommit=True,
            connect_timeout=int(self.timeout),
        )

    def _initdb(self) -> None:
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self._superuser_password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            result = self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise RuntimeError("initdb failed:\n" + self._redact(_tail(result.stdout)))
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": _conf_string(str(self.socket_dir)),
            **({} if self.durable else _NOT_DURABLE),
            "max_connections": "100",
            "max_prepared_transactions": "10",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Added by tests/_postgres.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _launch(self, port: int) -> None:
        """Start the postmaster on port and wait until it accepts connections."""
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=_child_env(),
                start_new_session=True,
                user=self._uid,
                group=self._gid,
                extra_groups=self._extra_groups,
            )
        self._proc = proc
        deadline = time.monotonic() + self.timeout
        while True:
            returncode = proc.poll()
            if returncode is not None:
                self._proc = None
                message = f"postgres exited with status {returncode} (port {port})"
                log_text = _read_text(self.log_file)[log_offset:]
                if (
                    "could not bind" in log_text
                    or "could not create any TCP" in log_text
                ):
                    raise self._error(message, error_type=_BindError)
                raise self._error(message)
            if self._ready(proc.pid):
                return
            if time.monotonic() > deadline:
                self._kill()
                raise self._error(
                    f"postgres did not become ready within {self.timeout:g}s"
                )
            time.sleep(0.05)

    def _ready(self, pid: int) -> bool:
        """Whether postmaster.pid says postmaster pid accepts connections."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().split("\n")
        except OSError:
            return False
        # Line 1 is the PID, line 8 the status ("ready" once accepting).
        return len(lines) >= 8 and lines[0] == str(pid) and lines[7].strip() == "ready"

    def _bootstrap(self) -> None:
        with self.superuser_connection() as conn:
            # Send a SCRAM verifier, never the clear text, so the password
            # cannot show up in the server log.
            verifier = conn.pgconn.encrypt_password(
                APP_PASSWORD.encode(), APP_ROLE.encode(), b"scram-sha-256"
            )
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(verifier.decode())
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(APP_DATABASE), sql.Identifier(APP_ROLE)
                )
            )

    def _kill(self) -> None:
        """Last resort: SIGQUIT (immediate shutdown), then SIGKILL the group.

        Only the postmaster this object started is signalled; its PID is the
        one in postmaster.pid.  A stale postmaster.pid is never trusted.
        """
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        _signal(proc.pid, signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # start_new_session made the postmaster a process-group leader;
            # its backends share that group.
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.base_dir,
            env=_child_env(),
            timeout=self.timeout + 30,
            check=False,
            user=self._uid,
            group=self._gid,
            extra_groups=self._extra_groups,
        )

    def _chown(self, path: Path) -> None:
        if self._uid is not None and self._gid is not None:
            os.chown(path, self._uid, self._gid)

    def _error(
        self,
        message: str,
        output: str = "",
        *,
        error_type: type[RuntimeError] = RuntimeError,
    ) -> RuntimeError:
        parts = [message]
        if output.strip():
            parts.append(_tail(output))
        parts.append(f"--- tail of {self.log_file} ---")
        parts.append(_tail(_read_text(self.log_file)))
        return error_type(self._redact("\n".join(parts)))

    def _redact(self, text: str) -> str:
        for secret in (APP_PASSWORD, self._superuser_password):
            text = text.replace(secret, "***")
        return text


class _BindError(RuntimeError):
    """The postmaster could not listen on the chosen port."""


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def _server_os_user() -> pwd.struct_passwd:
    """OS account to run the server as when we are root."""
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pass
    try:
        return pwd.getpwnam(_FALLBACK_OS_USER)
    except KeyError:
        pass
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            _FALLBACK_OS_USER,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # Another xdist worker may have created it concurrently.
        return pwd.getpwnam(_FALLBACK_OS_USER)
    except KeyError:
        raise RuntimeError(
            f"could not create OS user {_FALLBACK_OS_USER!r}: {result.stderr.strip()}"
        ) from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_env() -> dict[str, str]:
    """Our environment without PG* variables, with the C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _conf_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
