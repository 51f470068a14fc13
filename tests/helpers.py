"""Small helpers that several test modules use."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import typing as t
import warnings

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import ScopedRegistry

from flask_sessionext import SessionExt


def count_rows(engine: sa.Engine, table: str) -> int:
    """The rows of ``table``, counted on a connection of its own."""
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT count(*) FROM {table}"))
        return t.cast(int, result.scalar())


def open_sessions(app: Flask, db: SessionExt) -> int:
    """How many sessions the scoped registry holds, checked outside any
    application context.
    """
    with app.app_context():
        scoped = db.session
    registry = t.cast("ScopedRegistry[object]", scoped.registry)
    return len(registry.registry)


def checked_out(engine: sa.Engine) -> int:
    """How many connections of ``engine``'s pool are checked out."""
    return t.cast(QueuePool, engine.pool).checkedout()


def run_python(code: str, timeout: float = 60.0) -> str:
    """Run ``code`` in a new interpreter of this environment; its standard
    output. Fails the test with the standard error when it exits non-zero,
    and when it runs longer than ``timeout`` seconds.
    """
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class Forked:
    """A child process started by :func:`fork`."""

    def __init__(self, pid: int, read_end: int) -> None:
        self.pid = pid
        self._read_end = read_end

    def result(self, timeout: float = 60.0) -> str:
        """Wait for the child to exit, and return the text its function
        returned; the child must have exited successfully within ``timeout``
        seconds, or it is killed and the test fails instead of hanging.
        """
        # Read while waiting: a child blocks on a full pipe until it is read.
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        status: int | None = None
        os.set_blocking(self._read_end, False)
        try:
            while True:
                ready, _, _ = select.select([self._read_end], [], [], 0.01)
                chunk = os.read(self._read_end, 65536) if ready else b""
                if chunk:
                    chunks.append(chunk)
                    continue
                if status is not None and not ready:
                    break  # exited, and its output read
                if status is None:
                    pid, code = os.waitpid(self.pid, os.WNOHANG)
                    if pid:
                        status = code
                        continue
                if ready and status is not None:
                    break  # end of file after the exit
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    raise AssertionError(
                        f"the forked process {self.pid} did not exit within"
                        f" {timeout} s: it hangs"
                    )
        finally:
            os.close(self._read_end)
        assert status is not None
        assert os.waitstatus_to_exitcode(status) == 0
        return b"".join(chunks).decode()


def fork(child: t.Callable[[], str]) -> Forked:
    """Run ``child`` in a process forked from this one, which exits right
    after it (with status 1 if it raised); the parent goes on at once and
    gets the child's returned text from :meth:`Forked.result`.
    """
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads (pytest-
        # xdist's); the child runs only ``child``, then exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.write(write_end, child().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    return Forked(pid, read_end)
