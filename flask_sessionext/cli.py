"""``flask sessionext ...``: commands about the app's database side."""

from __future__ import annotations

import typing as t

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .signals import CATALOG, namespace

cli = AppGroup("sessionext", help="Flask-SessionExt: signals and databases.")


def _qualname(receiver: t.Callable[..., t.Any]) -> str:
    qualname = getattr(receiver, "__qualname__", repr(receiver))
    module = getattr(receiver, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


def catalog_rst() -> str:
    """The signal catalog as the reStructuredText table of README.rst."""
    rows = [("signal", "SQLAlchemy event", "keyword arguments", "propagates")]
    for entry in CATALOG.values():
        kwargs = ", ".join(entry.kwargs)
        propagates = "yes" if entry.propagates else "no"
        rows.append((f"``{entry.name}``", f"``{entry.qualname}``", kwargs, propagates))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = " ".join("=" * width for width in widths)
    lines = [
        " ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in rows
    ]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])


@cli.command("signals")
def signals_command() -> None:
    """List every signal, the SQLAlchemy event it bridges and the receivers
    connected to it for this app.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    rows = [("signal", "SQLAlchemy event", "receivers")]
    for name, signal in namespace.items():
        entry = CATALOG.get(name)
        event = entry.qualname if entry else "(this extension)"
        receivers = ", ".join(sorted(_qualname(r) for r in signal.receivers_for(app)))
        rows.append((name, event, receivers or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, event, receivers in rows:
        click.echo(f"{name.ljust(widths[0])}  {event.ljust(widths[1])}  {receivers}")
