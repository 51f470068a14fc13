"""The example app starts, seeds its data and serves its pages."""

from __future__ import annotations

import sys
from pathlib import Path

# The example lives beside the package, not in it; appended, so the installed
# flask_sessionext still wins over the source tree.
sys.path.append(str(Path(__file__).parents[1]))

from example_app import create_app


def test_example_app_pages(tmp_path: Path) -> None:
    """The board lists the seeded notes, adds one and toggles it."""
    app = create_app(
        {"TESTING": True, "SESSIONEXT_DATABASE_URI": f"sqlite:///{tmp_path / 'x.db'}"}
    )
    client = app.test_client()
    assert "Try Flask-SessionExt" in client.get("/").text
    assert client.post("/notes", data={"text": "new note"}).status_code == 302
    assert "new note" in client.get("/").text
    assert client.post("/notes/3/toggle").status_code == 302
    assert "<s>new note</s>" in client.get("/").text
    assert client.post("/notes/99/toggle").status_code == 404
    with app.app_context():
        app.extensions["sessionext"].engines[None].dispose()
