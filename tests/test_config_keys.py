"""Unknown ``SESSIONEXT_*`` keys and Flask-SQLAlchemy's keys left behind are
refused by ``init_app``, rather than ignored while the app uses a default.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask

import flask_sessionext
from flask_sessionext import SessionExt
from flask_sessionext._config.keys import KEYS, RENAMED

DOCS = Path(__file__).parents[1] / "docs"
PACKAGE = Path(flask_sessionext.__file__).parent
#: A key name, as it appears anywhere in the package's source.
KEY_RE = re.compile(r"\bSESSIONEXT_[A-Z_]*[A-Z]\b")


def make_app(tmp_path: Path, **config: object) -> Flask:
    """A Flask app with an instance folder under ``tmp_path``."""
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(config)
    return app


@pytest.mark.parametrize(
    ("key", "known"),
    [
        ("SESSIONEXT_DATABASE_URL", "SESSIONEXT_DATABASE_URI"),
        ("SESSIONEXT_BIND", "SESSIONEXT_BINDS"),
        ("SESSIONEXT_PING_AFTER_IDEL", "SESSIONEXT_PING_AFTER_IDLE"),
        ("SESSIONEXT_BROADCASTS", "SESSIONEXT_BROADCAST"),
        ("SESSIONEXT_RECORD_QUERY", "SESSIONEXT_RECORD_QUERIES"),
    ],
)
def test_misspelt_key_names_the_known_one(tmp_path: Path, key: str, known: str) -> None:
    """A misspelt key fails init_app with the known key it resembles, and
    leaves the app unregistered.
    """
    app = make_app(tmp_path, **{key: "sqlite://"})
    with pytest.raises(ValueError, match=rf"'{key}' .* Did you mean '{known}'\?"):
        SessionExt(app)
    assert "sessionext" not in app.extensions
    assert not (tmp_path / "instance").exists()


def test_unknown_key_lists_the_keys(tmp_path: Path) -> None:
    """A key like no known one fails with the list of the keys."""
    app = make_app(tmp_path, SESSIONEXT_COLOUR="blue")
    match = r"'SESSIONEXT_COLOUR' .* The keys are 'SESSIONEXT_DATABASE_URI'"
    with pytest.raises(ValueError, match=match):
        SessionExt(app)


@pytest.mark.parametrize(("old", "new"), RENAMED.items())
def test_flask_sqlalchemy_key_alone_names_the_rename(
    tmp_path: Path, old: str, new: str
) -> None:
    """A Flask-SQLAlchemy key without its counterpart fails with the rename,
    instead of falling back to the embedded SQLite database.
    """
    app = make_app(tmp_path, **{old: {}})
    with pytest.raises(ValueError, match=rf"Rename '{old}' to '{new}'\."):
        SessionExt(app)
    assert not (tmp_path / "instance").exists()


def test_flask_sqlalchemy_key_beside_its_counterpart(tmp_path: Path) -> None:
    """An app that also runs Flask-SQLAlchemy may keep its keys, once the
    SESSIONEXT_* counterpart is set.
    """
    app = make_app(
        tmp_path,
        SQLALCHEMY_DATABASE_URI="sqlite:///other.sqlite3",
        SESSIONEXT_DATABASE_URI="sqlite://",
    )
    db = SessionExt(app)
    with app.app_context():
        assert db.engine.url.database is None


def test_keys_are_the_names_in_the_source() -> None:
    """The known keys are exactly the SESSIONEXT_* names of the package's
    source, so a key that a reader adds cannot be missing from the check.
    """
    names = {
        name
        for path in PACKAGE.rglob("*.py")
        for name in KEY_RE.findall(path.read_text())
    }
    assert names == set(KEYS)


def test_keys_are_the_documented_keys() -> None:
    """The configuration page documents exactly the known keys, in order."""
    page = (DOCS / "config.rst").read_text()
    assert re.findall(r"^\.\. data:: (\S+)$", page, re.MULTILINE) == list(KEYS)
