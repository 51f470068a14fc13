"""``flask example ...``: background jobs, with ``db.session_scope()``."""

from __future__ import annotations

import datetime as dt

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from .models import Task, now
from .pages import plural

cli = AppGroup("example", help="Jobs of the example app.")

#: A century: older tasks cannot exist, and a cut-off further back than
#: ``datetime.min`` could not be computed.
MAX_DAYS = 36500


@cli.command("purge-old")
@click.option(
    "--days",
    default=30,
    show_default=True,
    type=click.IntRange(min=0, max=MAX_DAYS),
    help="Delete the archived tasks created more than this many days ago.",
)
def purge_old(days: int) -> None:
    """Delete the archived tasks created more than --days days ago."""
    from . import db, prepare_database

    prepare_database()
    cutoff = now() - dt.timedelta(days=days)
    with db.session_scope() as session:
        old = session.scalars(
            sa.select(Task).where(Task.archived, Task.created < cutoff)
        ).all()
        for task in old:
            session.delete(task)
    click.echo(
        f"Deleted {plural(len(old), 'archived task')} created more than"
        f" {plural(days, 'day')} ago."
    )
