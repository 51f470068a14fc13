"""Small helpers that several test modules use."""

from __future__ import annotations

import subprocess
import sys
import typing as t

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


def run_python(code: str) -> str:
    """Run ``code`` in a new interpreter of this environment; its standard
    output. Fails the test with the standard error when it exits non-zero.
    """
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
