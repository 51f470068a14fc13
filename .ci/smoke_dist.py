"""The smoke test of an installed distribution (a wheel or an sdist), which
``.ci/run`` runs from outside the source tree: the package comes from
site-packages with its ``py.typed``, its pytest plugin and its project URLs,
and a small app creates its tables, passes ``flask sessionext check``,
serves a request that commits and sends ``models_committed``.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from flask import Flask
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import flask_sessionext
from flask_sessionext import SessionExt, signals
from flask_sessionext.testing import capture_signal


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


def main() -> None:
    """Fail with AssertionError on the first thing that is not as shipped."""
    package = Path(flask_sessionext.__file__).parent
    assert "site-packages" in package.parts, f"imported from {package}"
    assert (package / "py.typed").is_file(), "no py.typed"
    plugins = importlib.metadata.entry_points(group="pytest11")
    assert [p.value for p in plugins if p.name == "sessionext"] == [
        "flask_sessionext.testing"
    ], "no pytest plugin"
    metadata = importlib.metadata.metadata("Flask-SessionExt")
    assert metadata.get_all("Project-URL"), "no project URLs"

    db = SessionExt(metadata=Base.metadata)
    app = Flask(__name__)
    app.config["SESSIONEXT_DATABASE_URI"] = "sqlite://"
    db.init_app(app)

    @app.post("/users/<name>")
    def add_user(name: str) -> str:
        with db.transaction():
            db.session.add(User(name=name))
        return "created"

    runner = app.test_cli_runner()
    for command in ("create-all", "check"):
        result = runner.invoke(args=["sessionext", command])
        assert result.exit_code == 0, result.output
    with capture_signal(signals.models_committed, app) as sent:
        assert app.test_client().post("/users/ada").text == "created"
    assert len(sent) == 1, sent
    print(f"Smoke test passed: Flask-SessionExt {metadata['Version']} in {package}")


if __name__ == "__main__":
    main()
