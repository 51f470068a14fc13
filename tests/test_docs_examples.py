"""Every Python example of README.rst and docs/ runs.

Each ``.. code-block:: python`` is one test, named ``path:LINE``. The blocks
of one document run in order in one namespace, a module of its own, with a
fresh temporary directory of the document as the working directory and the
first entry of ``sys.path``. A test that runs on a process where the blocks
before it did not run (``-n``, ``-k``) runs them first.

A block that names a file, with a ``:caption:`` such as ``myapp.py`` (in
docs/) or a comment ``.. file: myapp.py`` right above it (README.rst, which
PyPI renders with plain docutils), is written to that file of the directory
instead, once its syntax is checked, for later blocks to import; a test
module (``test_*.py``) is then run by pytest, in a subprocess, and must pass.

An example fails when it raises, and when a receiver's error is logged while
it runs (the app logs and swallows those of reporting signals), unless an
rst comment ``.. example: logs receiver errors`` stands right above it.
Blocks in other languages do not run, so Python is always spelled
``python``, and a literal block must say its language. A document's
``.. include::`` of a part of another document (``:start-after:``,
``:end-before:``) brings that part's blocks into the document, where they
run in its order, named ``path (included:LINE)``.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import traceback
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

ROOT = Path(__file__).parents[1]
DOCUMENTS = sorted(
    [ROOT / "README.rst", *(ROOT / "docs").glob("**/*.rst")],
    key=lambda path: path.relative_to(ROOT).as_posix(),
)
DOCUMENTS = [path for path in DOCUMENTS if "_build" not in path.parts]

#: Languages of blocks that do not run; Python is spelled ``python``.
OTHER_LANGUAGES = {"console", "text", "ini", "toml", "sql", "html+jinja", "none"}

_DIRECTIVE = re.compile(
    r"^(?P<indent> *)\.\. (?:code-block|code|sourcecode)::(?: +(?P<language>\S+))? *$"
)
_OPTION = re.compile(r"^ *:(?P<name>[\w-]+):(?: +(?P<value>.*?))? *$")
_FILE_COMMENT = re.compile(r"^ *\.\. file: (?P<name>\S+) *$")
_LOGS_ERRORS = ".. example: logs receiver errors"
_FILE_NAME = re.compile(r"^[\w./-]+\.py$")
_INCLUDE = re.compile(r"^\.\. include:: +(?P<path>\S+) *$")


@dataclass(frozen=True)
class Block:
    """One code block of a document."""

    document: Path
    #: The line of its first line of code, 1-based.
    line: int
    language: str
    code: str
    #: The file the block is written to, or ``None`` when it runs.
    file: str | None = None
    logs_errors: bool = False
    #: The document that holds the code, when ``document`` includes it.
    source: Path | None = None

    @property
    def location(self) -> str:
        """``path:LINE``, relative to the repository."""
        document = self.document.relative_to(ROOT).as_posix()
        if self.source is None:
            return f"{document}:{self.line}"
        return f"{document} ({self.source.relative_to(ROOT).as_posix()}:{self.line})"


def _lines(document: Path) -> list[tuple[str, Path, int]]:
    """Each line of ``document`` with the file and 1-based line it comes
    from, with the parts that it includes from other documents in place.
    """
    lines = document.read_text(encoding="utf-8").splitlines()
    result: list[tuple[str, Path, int]] = []
    index = 0
    while index < len(lines):
        match = _INCLUDE.match(lines[index])
        if match is None:
            result.append((lines[index], document, index + 1))
            index += 1
            continue
        options: dict[str, str] = {}
        index += 1
        while index < len(lines) and (option := _OPTION.match(lines[index])):
            options[option["name"]] = option["value"] or ""
            index += 1
        included = (document.parent / match["path"]).resolve()
        text = included.read_text(encoding="utf-8")
        begin = 0
        if "start-after" in options:
            begin = text.index(options["start-after"]) + len(options["start-after"])
        end = (
            text.index(options["end-before"], begin)
            if "end-before" in options
            else None
        )
        first = text.count("\n", 0, begin)
        part = text[begin:end].split("\n")
        result.extend(
            (line, included, first + number + 1) for number, line in enumerate(part)
        )
    return result


def parse(document: Path) -> tuple[list[Block], list[int]]:
    """The code blocks of ``document``, and the lines of literal blocks
    (``::``) that do not say their language.
    """
    numbered = _lines(document)
    lines = [line for line, _, _ in numbered]
    blocks: list[Block] = []
    untyped: list[int] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        match = _DIRECTIVE.match(line)
        if match is None:
            stripped = line.strip()
            if stripped.endswith("::") and not stripped.startswith(".."):
                untyped.append(numbered[index][2])
            index += 1
            continue
        indent = len(match["indent"])
        above = lines[index - 1] if index else ""
        file_comment = _FILE_COMMENT.match(above)
        logs_errors = above.strip() == _LOGS_ERRORS
        options: dict[str, str] = {}
        index += 1
        while index < len(lines) and (option := _OPTION.match(lines[index])):
            options[option["name"]] = option["value"] or ""
            index += 1
        start = index
        while index < len(lines) and (
            not lines[index].strip()
            or len(lines[index]) - len(lines[index].lstrip(" ")) > indent
        ):
            index += 1
        body = lines[start:index]
        while body and not body[0].strip():
            body.pop(0)
            start += 1
        while body and not body[-1].strip():
            body.pop()
        caption = options.get("caption", "")
        file = (
            file_comment["name"]
            if file_comment
            else caption
            if _FILE_NAME.match(caption)
            else None
        )
        _, source, number = numbered[start] if start < len(numbered) else numbered[-1]
        blocks.append(
            Block(
                document,
                number,
                match["language"] or "",
                textwrap.dedent("\n".join(body)) + "\n",
                file,
                logs_errors,
                None if source == document else source,
            )
        )
    return blocks, untyped


PARSED = {document: parse(document) for document in DOCUMENTS}
EXAMPLES = [
    (block, index)
    for blocks, _ in PARSED.values()
    for index, block in enumerate(b for b in blocks if b.language == "python")
]


class _ReceiverErrors(logging.Handler):
    """Remembers the receiver errors that apps log."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Receiver "):
            self.records.append(record)


@dataclass
class _Run:
    """The state of one document's examples in this process."""

    document: Path
    directory: Path
    module: types.ModuleType
    #: How many of its Python blocks ran.
    done: int = 0
    #: Its modules, out of ``sys.modules`` while another document runs.
    modules: dict[str, types.ModuleType] = field(default_factory=dict)

    @classmethod
    def start(cls, document: Path) -> _Run:
        directory = Path(tempfile.mkdtemp(prefix="docs-example-"))
        slug = re.sub(r"\W", "_", document.relative_to(ROOT).as_posix())
        module = types.ModuleType(f"docs_example_{slug}")
        module.__file__ = str(directory / f"{module.__name__}.py")
        return cls(document, directory, module, modules={module.__name__: module})

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Make the run's directory the working directory and the first
        entry of ``sys.path``, with the run's modules imported.
        """
        cwd = os.getcwd()
        os.chdir(self.directory)
        sys.path.insert(0, str(self.directory))
        sys.modules.update(self.modules)
        importlib.invalidate_caches()
        try:
            yield
        finally:
            os.chdir(cwd)
            sys.path.remove(str(self.directory))
            inside = str(self.directory) + os.sep
            self.modules = {
                name: module
                for name, module in list(sys.modules.items())
                if module is self.module
                or (getattr(module, "__file__", None) or "").startswith(inside)
            }
            for name in self.modules:
                del sys.modules[name]

    def close(self) -> None:
        """Dispose of the engines the run created, and remove its directory."""
        for module in self.modules.values():
            for value in list(vars(module).values()):
                if isinstance(value, Flask) and "sessionext" in value.extensions:
                    for engine in value.extensions["sessionext"].engines.values():
                        engine.dispose()
                elif isinstance(value, sa.Engine):
                    value.dispose()
        self.modules.clear()
        self.module.__dict__.clear()
        gc.collect()
        shutil.rmtree(self.directory, ignore_errors=True)


_runs: dict[Path, _Run] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_runs() -> Iterator[None]:
    """Close the runs that a selection of tests left unfinished."""
    yield
    while _runs:
        _runs.popitem()[1].close()


def _python_blocks(document: Path) -> list[Block]:
    return [block for block in PARSED[document][0] if block.language == "python"]


def _execute(block: Block, run: _Run) -> None:
    """Run ``block`` in ``run``, or write the file it names."""
    padded = "\n" * (block.line - 1) + block.code
    filename = str(block.source or block.document)
    code = compile(padded, filename, "exec", dont_inherit=True)
    if block.file is None:
        error = None
        try:
            exec(code, run.module.__dict__)
        except Exception as e:
            # The traceback from the example on, without this function's frame.
            tb = e.__traceback__.tb_next if e.__traceback__ else None
            error = "".join(traceback.format_exception(type(e), e, tb))
        if error is not None:
            pytest.fail(error, pytrace=False)
        return
    path = run.directory / block.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.code, encoding="utf-8")
    if not path.name.startswith("test_"):
        return
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W"]
    result = subprocess.run(
        [*command, "error", "--rootdir", str(run.directory), block.file],
        cwd=run.directory,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"pytest {block.file} failed (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )


@pytest.mark.parametrize(
    ("block", "index"), EXAMPLES, ids=[block.location for block, _ in EXAMPLES]
)
def test_example(block: Block, index: int) -> None:
    """The example runs after the examples above it in its document."""
    run = _runs.pop(block.document, None)
    if run is not None and run.done != index:
        run.close()
        run = None
    if run is None:
        run = _Run.start(block.document)
    handler = _ReceiverErrors()
    logging.getLogger().addHandler(handler)
    try:
        with run.entered():
            for earlier in _python_blocks(block.document)[run.done : index]:
                try:
                    _execute(earlier, run)
                except Exception as e:
                    pytest.fail(
                        f"The example at {earlier.location}, above this one,"
                        f" failed: {type(e).__name__}: {e}",
                        pytrace=False,
                    )
            handler.records.clear()
            _execute(block, run)
            gc.collect()
    except BaseException:
        run.close()
        raise
    finally:
        logging.getLogger().removeHandler(handler)
    if handler.records and not block.logs_errors:
        run.close()
        messages = "\n".join(record.getMessage() for record in handler.records)
        pytest.fail(f"A receiver failed:\n{messages}", pytrace=False)
    run.done = index + 1
    if run.done == len(_python_blocks(block.document)):
        run.close()
    else:
        _runs[block.document] = run


@pytest.mark.parametrize(
    "document", DOCUMENTS, ids=[d.relative_to(ROOT).as_posix() for d in DOCUMENTS]
)
def test_blocks_say_their_language(document: Path) -> None:
    """Every literal block is a code block whose language is ``python`` or
    one that does not run, so that no Python example escapes the tests.
    """
    blocks, untyped = PARSED[document]
    assert untyped == [], f"literal blocks without a language at lines {untyped}"
    unknown = [
        block.location
        for block in blocks
        if block.language != "python" and block.language not in OTHER_LANGUAGES
    ]
    assert unknown == []
