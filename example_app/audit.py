"""An audit trail written from ``models_committed``, and an outbox fed by
``db.on_commit``.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Blueprint, Flask, g, render_template

from flask_sessionext import signals

from .models import AuditEntry, OutboxMessage, Task, User

bp = Blueprint("audit", __name__)


def init_app(app: Flask) -> None:
    """Write every committed change of the app to the audit log."""
    signals.models_committed.connect(record_changes, sender=app, weak=False)
    app.register_blueprint(bp)


def record_changes(app: Flask, changes: list[tuple[object, str]]) -> None:
    """Receiver of ``models_committed``: one audit row per changed task or
    user. It runs once the commit succeeded, where the committed session can
    run no SQL, so it writes with a session of its own.
    """
    from . import db

    entries = [
        AuditEntry(
            who=g.get("user_name", "cli"),
            model=type(obj).__name__,
            key=str(_key(obj)),
            operation=operation,
            summary=_summary(obj),
        )
        for obj, operation in changes
        if isinstance(obj, (Task, User))
    ]
    if entries:
        with db.session_scope() as session:
            session.add_all(entries)


def _key(obj: object) -> object:
    identity = sa.inspect(obj, raiseerr=True).identity
    return identity[0] if identity else "?"


#: The length of the audit summary and outbox subject columns.
_TEXT_MAX = 200


def shorten(text: str, limit: int = _TEXT_MAX) -> str:
    """``text``, cut to ``limit`` characters with an ellipsis if longer: a
    200-character title with its state would not fit its column.
    """
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _summary(obj: object) -> str:
    if isinstance(obj, Task):
        state = "done" if obj.done else "open"
        return f"{shorten(obj.title, _TEXT_MAX - len(state) - 3)} ({state})"
    return shorten(t.cast(User, obj).name)


def notify(subject: str) -> None:
    """An ``on_commit`` callback: queue a message in the outbox, where a mail
    or webhook worker would pick it up.
    """
    from . import db

    db.session.add(OutboxMessage(subject=shorten(subject)))
    db.session.commit()


@bp.get("/audit")
def audit_log() -> str:
    """The audit entries, newest first, a page at a time (``?page=``), and
    the newest outbox messages.
    """
    from . import db

    entries = db.paginate(
        sa.select(AuditEntry).order_by(AuditEntry.id.desc()), per_page=25
    )
    outbox = db.session.scalars(
        sa.select(OutboxMessage).order_by(OutboxMessage.id.desc()).limit(20)
    ).all()
    return render_template("audit.html", entries=entries, outbox=outbox)
