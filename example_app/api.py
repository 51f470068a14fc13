"""An ``async def`` endpoint on ``db.async_session``: the board as JSON,
read without blocking the view's event loop (see the docs' "Async sessions").
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import Blueprint

from .models import Task

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/tasks")
async def tasks() -> dict[str, list[dict[str, t.Any]]]:
    """The open tasks, newest first, from the async session."""
    from . import db

    result = await db.async_session.scalars(
        sa.select(Task).where(Task.archived.is_(False)).order_by(Task.id.desc())
    )
    return {
        "tasks": [
            {"id": task.id, "title": task.title, "done": task.done} for task in result
        ]
    }


@bp.get("/tasks/<int:ident>")
async def task(ident: int) -> dict[str, t.Any]:
    """One task, or 404."""
    from . import db

    task = await db.async_get_or_404(
        Task, ident, description=f"There is no task #{ident}."
    )
    return {"id": task.id, "title": task.title, "done": task.done}
