"""``flask example ...``: background jobs, with ``db.session_scope()``."""

from __future__ import annotations

import datetime as dt

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from .models import Task, now

cli = AppGroup("example", help="Jobs of the example app.")


@cli.command("purge-old")
@click.option("--days", default=30, show_default=True, help="Archived for longer.")
def purge_old(days: int) -> None:
    """Delete archived tasks created more than DAYS ago."""
    from . import db, prepare_database

    prepare_database()
    cutoff = now() - dt.timedelta(days=days)
    with db.session_scope() as session:
        old = session.scalars(
            sa.select(Task).where(Task.archived, Task.created < cutoff)
        ).all()
        for task in old:
            session.delete(task)
    click.echo(f"Deleted {len(old)} archived task(s) older than {days} days.")
