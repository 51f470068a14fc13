"""What every page shares: a link to the documentation section it
demonstrates, plural forms, and error pages in the app's layout.
"""

from __future__ import annotations

import functools
import importlib.metadata

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException

#: The error statuses a user of the app can meet, shown in its layout; 500
#: too, for an unhandled exception (outside debug and testing, where Flask
#: shows or raises it).
ERROR_STATUSES = (400, 404, 405, 500)


def docs_url(page: str, section: str = "") -> str:
    """The address of ``page`` (``sessions``), at ``section`` (an anchor) if
    given, in the latest documentation.
    """
    anchor = f"#{section}" if section else ""
    return f"{_documentation()}en/latest/{page}.html{anchor}"


@functools.cache
def _documentation() -> str:
    # The package metadata's address (project_urls in setup.cfg), so that the
    # app follows the docs when they move; the pages are those of Sphinx's
    # html builder, as the docs command of README.rst builds them.
    urls = importlib.metadata.metadata("Flask-SessionExt").get_all("Project-URL")
    base: str = dict(url.split(", ", 1) for url in urls or ())["Documentation"]
    return base.rstrip("/") + "/"


def plural(count: int, singular: str, plural: str | None = None) -> str:
    """``1 task``, ``2 tasks``; ``plural`` for words that add more than s."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def error_page(error: HTTPException) -> tuple[str, int]:
    """The error's status and description in the app's layout."""
    return render_template("error.html", error=error), error.code or 500


def init_app(app: Flask) -> None:
    """Give templates ``docs_url()`` and ``plural()``, and style the errors."""
    app.add_template_global(docs_url)
    app.add_template_global(plural)
    for status in ERROR_STATUSES:
        app.register_error_handler(status, error_page)
