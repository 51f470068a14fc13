"""Ordinary views on the request-scoped ``db.session``: list, detail,
create, edit, delete, and a bulk action with an ORM-enabled UPDATE.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from .audit import notify
from .models import Task, User
from .pages import plural

bp = Blueprint("tasks", __name__)


@bp.before_app_request
def load_acting_user() -> None:
    """Who is acting: chosen in the header, remembered in the cookie."""
    g.user_name = session.get("user_name", "anonymous")


#: The longest title, as the column and the form's ``maxlength`` have it.
TITLE_MAX = 200
#: The longest notes: a task's notes are a few lines, not a document.
NOTES_MAX = 5000


def _form_title() -> str:
    title = request.form.get("title", "").strip()
    if not title:
        abort(400, description="A task needs a title.")
    if len(title) > TITLE_MAX:
        abort(
            400,
            description=f"A title has at most {TITLE_MAX} characters;"
            f" this one has {len(title)}.",
        )
    return title


def _form_notes() -> str:
    notes = request.form.get("notes", "")
    if len(notes) > NOTES_MAX:
        abort(
            400,
            description=f"Notes have at most {NOTES_MAX} characters;"
            f" these have {len(notes)}.",
        )
    return notes


def _task(ident: int) -> Task:
    from . import db

    return db.get_or_404(Task, ident, description=f"There is no task #{ident}.")


def _owner() -> User | None:
    """The user picked as owner; ``None`` for nobody.

    :raise BadRequest: the form names no user of the list.
    """
    from . import db

    raw = request.form.get("owner_id", "").strip()
    if not raw:
        return None
    ident = int(raw) if raw.isdecimal() and len(raw) < 10 else 0
    owner = db.session.get(User, ident) if ident > 0 else None
    if owner is None:
        abort(
            400,
            description=f"The owner {raw[:40]!r} is not one of the users;"
            " pick one from the list, or nobody.",
        )
    return owner


@bp.get("/")
def index() -> Response:
    """The board is the home page."""
    return redirect(url_for("tasks.board"))


@bp.get("/tasks")
def board() -> str:
    """Open and done tasks, and the form for a new one."""
    from . import db

    tasks = db.session.scalars(
        sa.select(Task).where(~Task.archived).order_by(Task.done, Task.id)
    ).all()
    users = db.session.scalars(sa.select(User).order_by(User.name)).all()
    return render_template("board.html", tasks=tasks, users=users)


@bp.post("/tasks")
def create() -> Response:
    """Create a task; the outbox hears of it once the commit went through."""
    from . import db

    task = Task(title=_form_title(), notes=_form_notes())
    task.owner = _owner()
    db.session.add(task)
    db.on_commit(notify, f"Task created: {task.title}")
    db.session.commit()
    flash(f"Created “{task.title}”.")
    return redirect(url_for("tasks.detail", ident=task.id))


@bp.get("/tasks/<int:ident>")
def detail(ident: int) -> str:
    """One task."""

    return render_template("task.html", task=_task(ident))


@bp.route("/tasks/<int:ident>/edit", methods=["GET", "POST"])
def edit(ident: int) -> str | Response:
    """Edit a task's title, notes, owner and state."""
    from . import db

    task = _task(ident)
    if request.method == "GET":
        users = db.session.scalars(sa.select(User).order_by(User.name)).all()
        return render_template("edit.html", task=task, users=users)
    with db.transaction():
        task.title = _form_title()
        task.notes = _form_notes()
        task.done = "done" in request.form
        task.owner = _owner()
    flash(f"Saved “{task.title}”.")
    return redirect(url_for("tasks.detail", ident=task.id))


@bp.post("/tasks/<int:ident>/toggle")
def toggle(ident: int) -> Response:
    """Mark a task done, or open again."""
    from . import db

    with db.transaction():
        task = _task(ident)
        task.done = not task.done
    return redirect(request.referrer or url_for("tasks.board"))


@bp.post("/tasks/<int:ident>/delete")
def delete(ident: int) -> Response:
    """Delete a task."""
    from . import db

    task = _task(ident)
    title = task.title
    db.session.delete(task)
    db.on_commit(notify, f"Task deleted: {title}")
    db.session.commit()
    flash(f"Deleted “{title}”.")
    return redirect(url_for("tasks.board"))


@bp.post("/tasks/archive-done")
def archive_done() -> Response:
    """Archive every done task with one ORM-enabled UPDATE.

    The tasks loaded before it reflect the change without a reload, by the
    app's ``SESSIONEXT_SYNCHRONIZE_SESSION`` setting. It writes no audit
    entry: a bulk UPDATE bypasses the unit of work, so ``models_committed``
    does not report it.
    """
    from . import db

    loaded = db.session.scalars(sa.select(Task).where(Task.done, ~Task.archived)).all()
    result = t.cast(
        "sa.CursorResult[t.Any]",
        db.session.execute(
            sa.update(Task).where(Task.done, ~Task.archived).values(archived=True)
        ),
    )
    synchronized = sum(1 for task in loaded if task.archived)
    db.session.commit()
    setting = current_app.config.get("SESSIONEXT_SYNCHRONIZE_SESSION", "auto")
    flash(
        f"Archived {plural(result.rowcount, 'done task')} with one UPDATE."
        f" {synchronized} of the {plural(len(loaded), 'task')} loaded before it"
        f" showed archived=True without a reload (SESSIONEXT_SYNCHRONIZE_SESSION"
        f" = {setting!r}). The audit log has no rows for it: a bulk UPDATE"
        " bypasses the session's change tracking, so models_committed does not"
        " see it."
    )
    return redirect(url_for("tasks.archive"))


@bp.get("/archive")
def archive() -> str:
    """Archived tasks."""
    from . import db

    tasks = db.session.scalars(
        sa.select(Task).where(Task.archived).order_by(Task.id)
    ).all()
    return render_template("archive.html", tasks=tasks)


@bp.route("/users", methods=["GET", "POST"])
def users() -> str | Response:
    """The people tasks go to."""
    from . import db

    if request.method == "POST":
        name = request.form.get("name", "").strip()[:80]
        if not name:
            abort(400, description="A user needs a name.")
        if db.session.scalar(sa.select(User).where(User.name == name)) is None:
            db.session.add(User(name=name))
            db.session.commit()
        return redirect(url_for("tasks.users"))
    people = db.session.scalars(sa.select(User).order_by(User.name)).all()
    return render_template("users.html", users=people)


@bp.post("/act-as")
def act_as() -> Response:
    """Choose who the audit log names for the next changes."""
    session["user_name"] = request.form.get("name", "anonymous")[:80] or "anonymous"
    return redirect(request.referrer or url_for("tasks.board"))
