"""A flush logger in the style of SQLAlchemy's old ``SessionExtension``:
one class with a method named after the event, registered with
``db.register()``.
"""

from __future__ import annotations

import typing as t

from flask import Flask
from sqlalchemy import orm


class FlushLogger:
    """Logs what each flush is about to write."""

    def before_flush(
        self,
        sender: Flask,
        session: orm.Session,
        flush_context: t.Any,
        instances: t.Any,
    ) -> None:
        """Log new, changed and deleted instances on the app's logger."""
        for label, objects in (
            ("new", session.new),
            ("dirty", session.dirty),
            ("deleted", session.deleted),
        ):
            for obj in objects:
                sender.logger.info("flush: %s %s", label, describe(obj))


def describe(obj: object) -> str:
    """``Task #3`` or ``Task (new)``."""
    ident = getattr(obj, "id", None)
    return f"{type(obj).__name__} #{ident}" if ident else f"{type(obj).__name__} (new)"
