"""``flask sessionext ...``: commands about the app's database side."""

from __future__ import annotations

import asyncio
import os
import re
import typing as t
from time import perf_counter
from urllib.parse import quote

import click
import sqlalchemy as sa
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy.engine import URL

if t.TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

from ._config.passwords import mask_url
from ._features.outbox import OUTBOX, TICKS, count, outbox_metadata, prune
from ._receivers.calls import receiver_name
from ._receivers.checks import report_collected
from .signals import CATALOG, namespace

#: What ``check`` runs: SQLAlchemy renders it for every dialect.
_TRIVIAL = sa.select(sa.literal(1))
#: ``password=...`` in a driver's connection string.
_PASSWORD_RE = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)

cli = AppGroup("sessionext", help="Flask-SessionExt: signals and databases.")


@cli.command("signals")
@click.option(
    "--connected",
    is_flag=True,
    help="List only the signals that have receivers for this app.",
)
def signals_command(connected: bool) -> None:
    """List every signal, the SQLAlchemy event it bridges and the receivers
    connected to it for this app.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    # Before the list, not after it: the receivers it misses are named first.
    report_collected(app)
    rows = [("signal", "SQLAlchemy event", "receivers")]
    for name, signal in namespace.items():
        entry = CATALOG.get(name)
        event = entry.qualname if entry else "(this extension)"
        names = sorted(receiver_name(r) for r in signal.receivers_for(app))
        if names or not connected:
            rows.append((name, event, ", ".join(names) or "-"))
    if len(rows) == 1:
        click.echo("No signal has a receiver for this app.")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, event, receivers in rows:
        click.echo(f"{name.ljust(widths[0])}  {event.ljust(widths[1])}  {receivers}")


@cli.command("check")
@click.option(
    "--async",
    "check_async",
    is_flag=True,
    help="Check the async engine of every bind too.",
)
def check_command(check_async: bool) -> None:
    """Connect to every bind of this app and run a trivial statement; print
    each bind's URL, dialect, server version and round trip. Exits with
    status 1 when a bind fails. With --async, the async engines too.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    runtime = app.extensions["sessionext"]
    engines: list[tuple[str | None, str, sa.Engine | AsyncEngine]] = [
        (key, "", engine) for key, engine in runtime.engines.items()
    ]
    rows: list[tuple[str, ...]] = []
    errors: list[str] = []
    if check_async:
        state = runtime.async_state
        engines += [(key, " (async)", engine) for key, engine in state.engines.items()]
        errors += list(state.missing.values())
    for key, suffix, engine in engines:
        label = ("(default)" if key is None else key) + suffix
        try:
            if not isinstance(engine, sa.Engine):
                elapsed, info = asyncio.run(_round_trip_async(engine))
            else:
                elapsed, info = _round_trip(engine)
        except Exception as e:
            name = "the default bind" if key is None else f"bind {key!r}"
            name += " (async engine)" if suffix else ""
            errors.append(
                f"Cannot connect to {name} ({mask_url(engine.url)}):"
                f" {_describe(e, engine.url)}"
            )
            continue
        version = ".".join(str(part) for part in info) if info else "unknown"
        rows.append(
            (
                label,
                mask_url(engine.url),
                f"{engine.dialect.name} {version}",
                f"{elapsed * 1000:.2f} ms",
            )
        )
    if rows:
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths)]
            click.echo("  ".join([*cells, row[3]]))
    for error in errors:
        click.echo(f"Error: {error}", err=True)
    if errors:
        raise click.exceptions.Exit(1)


def _round_trip(engine: sa.Engine) -> tuple[float, t.Any]:
    """Seconds of a trivial statement on ``engine``, and the server's version."""
    with engine.connect() as conn:
        conn.execute(_TRIVIAL).scalar()  # connects, and compiles
        start = perf_counter()
        conn.execute(_TRIVIAL).scalar()
        return perf_counter() - start, conn.dialect.server_version_info


async def _round_trip_async(engine: AsyncEngine) -> tuple[float, t.Any]:
    """:func:`_round_trip` on an async engine, which it disposes after."""
    try:
        async with engine.connect() as conn:
            await conn.execute(_TRIVIAL)
            start = perf_counter()
            await conn.execute(_TRIVIAL)
            return perf_counter() - start, conn.dialect.server_version_info
    finally:
        await engine.dispose()  # its connections belong to this loop


def _schema(app: Flask) -> dict[str | None, list[sa.MetaData]]:
    """The extension's tables by bind, or a one-line usage error."""
    try:
        schema: dict[str | None, list[sa.MetaData]] = app.extensions[
            "sessionext"
        ].extension._schema()
    except (RuntimeError, KeyError, ValueError) as e:
        message = e.args[0] if e.args else str(e)
        raise click.ClickException(str(message)) from e
    return schema


def _existing(engine: sa.Engine, metadatas: list[sa.MetaData]) -> int:
    """How many tables of ``metadatas`` the database of ``engine`` has."""
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        return sum(
            inspector.has_table(table.name, schema=table.schema)
            for metadata in metadatas
            for table in metadata.tables.values()
        )


@cli.command("create-all")
def create_all_command() -> None:
    """Create the missing tables of every bind from the extension's metadata
    (and the outbox tables of SESSIONEXT_BROADCAST), and tell how many were
    created and how many already existed.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions["sessionext"]
    for key, metadatas in _schema(app).items():
        engine = state.extension.get_engine(key)
        existed = _existing(engine, metadatas)
        for metadata in metadatas:
            metadata.create_all(engine)
        label = "the default bind" if key is None else f"bind {key!r}"
        created = sum(len(metadata.tables) for metadata in metadatas) - existed
        click.echo(
            f"Created {created} table(s) in {label} ({existed} already existed)."
        )


@cli.command("drop-all")
@click.confirmation_option(
    "--yes", prompt="Drop every table of every bind? Their data is lost."
)
def drop_all_command() -> None:
    """Drop the tables of the extension's metadata (and the outbox tables of
    SESSIONEXT_BROADCAST) from every bind, and tell how many were dropped and
    how many did not exist.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    state = app.extensions["sessionext"]
    for key, metadatas in _schema(app).items():
        engine = state.extension.get_engine(key)
        existed = _existing(engine, metadatas)
        for metadata in reversed(metadatas):
            metadata.drop_all(engine)
        label = "the default bind" if key is None else f"bind {key!r}"
        missing = sum(len(metadata.tables) for metadata in metadatas) - existed
        click.echo(
            f"Dropped {existed} table(s) from {label} ({missing} did not exist)."
        )


def _describe(error: Exception, url: URL) -> str:
    """The driver's message for ``error`` on one line, without the password
    of ``url``, and a hint for a missing SQLite directory.
    """
    orig = getattr(error, "orig", None)
    lines = [line.strip() for line in str(orig or error).splitlines()]
    text = " ".join(
        line if line.endswith((".", ":", ";", "?", "!")) else f"{line}."
        for line in lines
        if line
    )
    text = _PASSWORD_RE.sub(r"\1***", text)
    if url.password:
        password = str(url.password)
        for secret in {password, quote(password, safe="")}:
            text = text.replace(secret, "***")
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        directory = os.path.dirname(database)
        if (
            directory
            and not database.startswith("file:")
            and not os.path.isdir(directory)
        ):
            text += f" The directory {directory!r} does not exist."
    return text or type(error).__name__


def _outbox_engine(app: Flask) -> tuple[sa.Engine, str, float]:
    """The engine of the outbox bind, the channel and the ``keep`` setting,
    or a one-line usage error when ``SESSIONEXT_BROADCAST`` is off.
    """
    runtime = app.extensions["sessionext"]
    settings = runtime.settings.broadcast
    if settings is None:
        raise click.ClickException(
            "'SESSIONEXT_BROADCAST' is off for this app; set it to True (or a"
            " dict of settings) to use the outbox."
        )
    return runtime.engines[settings.bind], settings.channel, settings.keep


@cli.command("create-outbox")
def create_outbox_command() -> None:
    """Create the outbox tables of SESSIONEXT_BROADCAST in its bind, if
    they are missing.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    engine, _, _ = _outbox_engine(app)
    outbox_metadata.create_all(engine)
    click.echo(
        f"The outbox tables {OUTBOX!r} and {TICKS!r} are ready in"
        f" {mask_url(engine.url)}."
    )


@cli.command("prune-outbox")
def prune_outbox_command() -> None:
    """Delete the outbox rows of the app's channel older than the 'keep'
    setting of SESSIONEXT_BROADCAST.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    engine, channel, keep = _outbox_engine(app)
    with engine.begin() as conn:
        before = count(conn, channel)
        prune(conn, channel, keep)
        deleted = before - count(conn, channel)
    click.echo(
        f"Deleted {deleted} outbox row(s) of channel {channel!r} older than {keep:g} s."
    )
