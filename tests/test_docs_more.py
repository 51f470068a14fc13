"""The Read the Docs configuration, the CLI's help texts and the wording of
the documentation pages.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from flask_sessionext import SessionExt

ROOT = Path(__file__).parents[1]


def test_read_the_docs_builds_as_ci_does() -> None:
    """.readthedocs.yaml runs .ci/run's documentation command verbatim, then
    only publishes its output.
    """
    config = (ROOT / ".readthedocs.yaml").read_text()
    commands = re.findall(r"^    - (.+)$", config, re.MULTILINE)
    [ci_command] = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if "sphinx-build" in line
    ]
    assert commands[0] == ci_command
    assert commands[1:] == [
        'mkdir -p "$READTHEDOCS_OUTPUT" && cp -r docs/_build/html'
        ' "$READTHEDOCS_OUTPUT/html"'
    ]
    assert re.search(r"^version: 2$", config, re.MULTILINE)


@pytest.mark.parametrize(
    "args",
    [
        ["sessionext", "--help"],
        *(
            ["sessionext", name, "--help"]
            for name in (
                "signals",
                "check",
                "create-all",
                "drop-all",
                "create-outbox",
                "prune-outbox",
            )
        ),
    ],
)
def test_help_has_no_rst_markup(tmp_path: Path, args: list[str]) -> None:
    """The CLI's help shows no reStructuredText double backticks."""
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config["SESSIONEXT_DATABASE_URI"] = "sqlite://"
    SessionExt(app)
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "``" not in result.output


def test_docs_name_no_issue_numbers() -> None:
    """The documentation speaks to users, without the project's issue
    numbers.
    """
    texts = [
        *(ROOT / "docs").glob("*.rst"),
        ROOT / "README.rst",
        ROOT / "benchmarks" / "results" / "results.md",
    ]
    found = [
        (path.name, match)
        for path in texts
        for match in re.findall(r"[Ii]ssue \d+", path.read_text())
    ]
    assert found == []


def readme_file(name: str) -> str:
    """The code of README.rst's block marked ``.. file: name``."""
    readme = (ROOT / "README.rst").read_text()
    block = readme.split(f".. file: {name}\n.. code-block:: python\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


def test_readme_migration_finds_a_table(tmp_path: Path) -> None:
    """The README's Migrations example has a model, so that its ``flask db
    migrate`` writes a migration that creates the table.
    """
    (tmp_path / "migrating_app.py").write_text(readme_file("migrating_app.py"))
    flask = str(Path(sys.executable).parent / "flask")
    for command in (["db", "init"], ["db", "migrate", "-m", "users"]):
        result = subprocess.run(
            [flask, "--app", "migrating_app", *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    assert "Detected added table 'users'" in result.stderr
    [script] = (tmp_path / "migrations" / "versions").glob("*.py")
    assert "op.create_table('users'" in script.read_text()


def test_readme_postgresql_steps() -> None:
    """The README's PostgreSQL steps install into the virtualenv and create
    the role and the database that the URL names.
    """
    readme = (ROOT / "README.rst").read_text()
    assert "\n    .venv/bin/pip install -q '.[postgresql]'\n" in readme
    assert "createuser --pwprompt tasks" in readme
    assert "createdb --owner tasks tasks" in readme
    assert "postgresql+psycopg://tasks:password@127.0.0.1/tasks" in readme
    assert "--port 5000 &\n    .venv/bin/flask --app example_app run" in readme
