"""The two kinds of app the extension serves: Flask's, and Quart's (the
Pallets' ASGI twin of Flask, with the same app-context model).

Quart is not a dependency: a Quart app can only exist once ``quart`` is
imported, so the checks look it up in ``sys.modules`` and cost a Flask app
nothing.
"""

from __future__ import annotations

import asyncio
import sys
import typing as t

from flask import Flask

if t.TYPE_CHECKING:
    from flask.ctx import AppContext


def is_quart(app: object) -> bool:
    """Whether ``app`` is a ``quart.Quart`` app."""
    quart = sys.modules.get("quart")
    return quart is not None and isinstance(app, quart.Quart)


def check_app(app: object) -> None:
    """Refuse an app that is neither Flask's nor Quart's.

    :raise TypeError: ``app`` is neither a ``flask.Flask`` nor a
        ``quart.Quart`` app.
    """
    if isinstance(app, Flask) or is_quart(app):
        return
    raise TypeError(
        f"SessionExt serves a flask.Flask or quart.Quart app, not"
        f" {type(app).__module__}.{type(app).__qualname__} {app!r}. Pass the"
        " application object itself to init_app()."
    )


def quart_app_context() -> AppContext | None:
    """The app context that Quart has pushed, if any; ``None`` otherwise
    (also when Quart is not imported).

    Quart's context is typed as Flask's: the extension uses only what both
    have (``app``, ``g``, identity).
    """
    globals_ = sys.modules.get("quart.globals")
    if globals_ is None:
        return None
    try:
        ctx: AppContext = globals_.app_ctx._get_current_object()
    except RuntimeError:
        return None
    return ctx


def call_in_app_context(app: Flask, func: t.Callable[[], None]) -> None:
    """Call ``func`` inside a new app context of ``app``, from a thread that
    runs no event loop (a broadcast listener's).

    Quart pushes and pops its contexts with ``await`` (its teardown is
    async): ``func`` then runs in a worker thread of a new loop, in a copy
    of the context that holds the app context, where async receivers can
    start loops of their own.
    """
    if not is_quart(app):
        with app.app_context():
            func()
        return

    async def main() -> None:
        async with app.app_context():  # type: ignore[attr-defined]
            await asyncio.to_thread(func)

    asyncio.run(main())
