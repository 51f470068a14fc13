"""The Read the Docs configuration, the CLI's help texts and the wording of
the documentation pages.
"""

from __future__ import annotations

import re
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
