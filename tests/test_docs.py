"""The documentation covers what it promises: every configuration key, every
public name, and Flask-SQLAlchemy 3.1's keys and signals.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from docutils import nodes
from docutils.core import publish_doctree

import flask_sessionext
from flask_sessionext import SessionExt, testing

from helpers import run_python

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
PACKAGE = Path(flask_sessionext.__file__).parent

#: Every configuration key and signal of Flask-SQLAlchemy 3.1, and the keys
#: that 3.0 removed, which apps being migrated may still set.
FSA_KEYS = (
    "SQLALCHEMY_DATABASE_URI",
    "SQLALCHEMY_ENGINE_OPTIONS",
    "SQLALCHEMY_BINDS",
    "SQLALCHEMY_ECHO",
    "SQLALCHEMY_RECORD_QUERIES",
    "SQLALCHEMY_TRACK_MODIFICATIONS",
    "SQLALCHEMY_COMMIT_ON_TEARDOWN",
    "SQLALCHEMY_POOL_SIZE",
    "SQLALCHEMY_POOL_TIMEOUT",
    "SQLALCHEMY_POOL_RECYCLE",
    "SQLALCHEMY_MAX_OVERFLOW",
    "SQLALCHEMY_NATIVE_UNICODE",
)
FSA_SIGNALS = ("models_committed", "before_models_committed")


def test_every_config_key_is_documented() -> None:
    """Each ``SESSIONEXT_*`` key the package reads has a ``.. data::`` entry
    with a default and an example.
    """
    source = "".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    keys = set(re.findall(r"SESSIONEXT_[A-Z_]*[A-Z]", source))
    config = (DOCS / "config.rst").read_text()
    entry = r"^\.\. data:: (\S+)\n(.*?)(?=^\.\. data::|^\S)"
    entries = dict(re.findall(entry, config, re.MULTILINE | re.DOTALL))
    assert keys == set(entries)
    for key, body in entries.items():
        assert "Default:" in body, key
        assert f'app.config["{key}"] = ' in body, key


def test_flask_sqlalchemy_table_covers_its_keys_and_signals() -> None:
    """The migration page maps every key and signal of Flask-SQLAlchemy 3.1."""
    page = (DOCS / "flask-sqlalchemy.rst").read_text()
    missing = [name for name in (*FSA_KEYS, *FSA_SIGNALS) if f"``{name}``" not in page]
    assert missing == []


def test_public_names_are_documented() -> None:
    """Every public name has a docstring and a place in the API reference."""
    api = (DOCS / "api.rst").read_text()
    for name in flask_sessionext.__all__:
        assert f".. autoclass:: {name}" in api
        assert inspect.getdoc(getattr(flask_sessionext, name))
    for name in testing.__all__:
        assert f".. autofunction:: {name}" in api
        assert inspect.getdoc(getattr(testing, name))
    for name, member in vars(SessionExt).items():
        if not name.startswith("_"):
            assert inspect.getdoc(member), name
    assert ".. sessionext-signals::" in api


def test_ci_builds_the_docs_as_the_readme_says() -> None:
    """``.ci/run`` builds the documentation with README.rst's command,
    verbatim, in a virtualenv of its own with only the docs extra.
    """
    readme = (ROOT / "README.rst").read_text()
    [command] = [
        line.strip()
        for line in readme.splitlines()
        if "sphinx-build" in line and line.startswith("    ")
    ]
    assert "pip install -q '.[docs]'" in command
    assert command.startswith("python3 -m venv ")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci


def test_api_reference_imports_without_pytest() -> None:
    """Every name that ``docs/api.rst`` documents imports where pytest is not
    installed, as in a virtualenv with only the docs extra.
    """
    api = (DOCS / "api.rst").read_text()
    names: list[str] = []
    module = ""
    for kind, name in re.findall(r"^\.\. (auto\w+|module):: (\S+)", api, re.MULTILINE):
        if kind in ("module", "automodule"):
            module = name
            names.append(name)
        else:
            names.append(f"{module}.{name}")
    code = (
        "import importlib, sys\n"
        "sys.modules['pytest'] = None\n"
        f"for name in {names!r}:\n"
        "    module, _, attribute = name.rpartition('.')\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        getattr(importlib.import_module(module), attribute)\n"
    )
    run_python(code)


def test_table_code_wraps_only_between_words() -> None:
    """The docs extension lets code in table cells wrap after a dot or an
    underscore, never inside a word, and signal names in the catalog not at all.
    """
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        sessionext_docs = importlib.import_module("sessionext_docs")
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    source = (
        ".. table::\n   :class: catalog\n\n"
        "   ======================= ============================\n"
        "   ``after_soft_rollback`` ``SessionEvents.after_soft_rollback``\n"
        "   ======================= ============================\n\n"
        "================================ =\n"
        "``SESSIONEXT_RECORD_QUERIES``    ``create_engine()``\n"
        "================================ =\n"
    )
    doctree = publish_doctree(source, settings_overrides={"report_level": 4})
    app = SimpleNamespace(builder=SimpleNamespace(format="html"))
    sessionext_docs.break_points(app, doctree, "index")
    cells = [
        "".join(
            "|" if isinstance(child, nodes.raw) else child.astext()
            for child in literal.children
        )
        for literal in doctree.findall(nodes.literal)
    ]
    assert cells == [
        "after_soft_rollback",
        "SessionEvents.|after_soft_rollback",
        "SESSIONEXT_|RECORD_|QUERIES",
        "create_|engine()",
    ]


def test_intersphinx_inventories_are_local() -> None:
    """Every intersphinx inventory is a file of the repository, since the
    builds run without network, and is a Sphinx inventory.
    """
    conf: dict[str, object] = {"__file__": str(DOCS / "conf.py")}
    exec((DOCS / "conf.py").read_text(), conf)
    mapping = conf["intersphinx_mapping"]
    assert isinstance(mapping, dict)
    assert set(mapping) == {"flask", "sqlalchemy", "blinker"}
    for name, (url, inventory) in mapping.items():
        assert url.startswith("https://"), name
        path = DOCS / inventory
        assert path.read_bytes().startswith(b"# Sphinx inventory version 2\n"), name
