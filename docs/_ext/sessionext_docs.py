"""Directives that put generated content in the documentation at build time.

``.. sessionext-catalog::``
    The signal catalog table, made by :func:`catalog_rst`
    from ``flask_sessionext.signals.CATALOG``.
``.. sessionext-features::``
    The table of what each feature sends and listens to, made by
    :func:`features_rst` from the feature classes of the runtime's ``FEATURES``.
``.. sessionext-signals::``
    A ``.. data::`` entry for each signal of ``flask_sessionext.signals``,
    with the docstring the catalog generates.
``.. sessionext-benchmarks::``
    The tables of ``benchmarks/results/results.md``, which
    ``python -m benchmarks`` writes; a note saying how to make them when the
    file is missing.

It also gives the code in table cells places to wrap, so that tables fit
the page without breaking a name inside a word: see :func:`break_points`.
"""

from __future__ import annotations

import re
import typing as t
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from flask_sessionext._runtime import FEATURES
from flask_sessionext.signals import CATALOG, namespace

RESULTS = Path(__file__).parents[2] / "benchmarks" / "results" / "results.md"
_SPECIAL = re.compile(r"([\\*`_|])")
#: Where code in a table cell may wrap: after a dot, an underscore, a slash or
#: a comma, and before an opening parenthesis; in the signal catalog, after a
#: dot only, so that signal and event names stay whole.
_BREAKS = re.compile(r"(?<=[._/,])(?=[^\s._/,)])|(?<=\w)(?=\((?!\)))")
_CATALOG_BREAKS = re.compile(r"(?<=\.)(?=\w)")


class _GeneratedDirective(SphinxDirective):
    """A directive whose body is reStructuredText made by :meth:`lines`."""

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        source = self.get_source_info()[0] or "<generated>"
        self.state.nested_parse(
            StringList(self.lines(), source), self.content_offset, container
        )
        return list(container.children)


#: The module of each SQLAlchemy event class, for links to its reference.
_EVENT_MODULES = {
    "SessionEvents": "sqlalchemy.orm",
    "ConnectionEvents": "sqlalchemy.events",
    "PoolEvents": "sqlalchemy.events",
    "DialectEvents": "sqlalchemy.events",
}


def catalog_rst() -> str:
    """The signal catalog as a reStructuredText table, as the documentation's
    signals page shows it.
    """
    rows = [("signal", "SQLAlchemy event", "keyword arguments", "propagates")]
    for entry in CATALOG.values():
        kwargs = ", ".join(entry.kwargs)
        propagates = "yes" if entry.propagates else "no"
        rows.append((f"``{entry.name}``", f"``{entry.qualname}``", kwargs, propagates))
    return _rst_table(rows)


def features_rst() -> str:
    """The features table, from the feature classes of ``_runtime.FEATURES``,
    as a reStructuredText table, as the documentation's performance page
    shows it.
    """
    rows = [("feature", "sends", "listens to, while on", "sends when")]
    for feature in FEATURES:
        bridge = feature.sends == tuple(CATALOG)
        sends = (
            "every bridged signal"
            if bridge
            else (", ".join(f"``{name}``" for name in feature.sends) or "nothing")
        )
        listens = (
            "the event of each signal that has receivers"
            if bridge
            else ", ".join(f"``{name}``" for name in feature.listens) or "no event"
        )
        when = "at the commit, however made" if feature.deferred else "at the event"
        rows.append((feature.name, sends, listens, when))
    return _rst_table(rows)


def _rst_table(rows: t.Sequence[t.Sequence[str]]) -> str:
    """``rows`` as a simple reStructuredText table, the first row its head."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = " ".join("=" * width for width in widths)
    lines = [
        " ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in rows
    ]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])


class FeaturesDirective(_GeneratedDirective):
    """The table of the extension's features and the listeners each needs."""

    def lines(self) -> list[str]:
        return features_rst().splitlines()


class CatalogDirective(_GeneratedDirective):
    """The catalog table of the bridged signals, each signal linked to its
    entry in the API reference and each event to SQLAlchemy's.
    """

    def lines(self) -> list[str]:
        return [".. rst-class:: catalog", "", *catalog_rst().splitlines()]

    def run(self) -> list[nodes.Node]:
        result = super().run()
        for node in result:
            for literal in list(node.findall(nodes.literal)):
                target = _catalog_target(literal.astext())
                if target is None:
                    continue
                reftype, name = target
                xref = addnodes.pending_xref(
                    "",
                    refdomain="py",
                    reftype=reftype,
                    reftarget=name,
                    refexplicit=True,
                    refwarn=False,
                )
                xref += literal.deepcopy()
                literal.replace_self(xref)
        return result


def _catalog_target(text: str) -> tuple[str, str] | None:
    """The Python object that a catalog cell names, as (role, target)."""
    event_class, dot, _ = text.partition(".")
    if dot:
        module = _EVENT_MODULES.get(event_class)
        return ("meth", f"{module}.{text}") if module else None
    if text in namespace:
        return ("data", f"flask_sessionext.signals.{text}")
    return None


class SignalsDirective(_GeneratedDirective):
    """A ``.. data::`` entry per signal, in the namespace's order."""

    def lines(self) -> list[str]:
        lines: list[str] = []
        for name, signal in namespace.items():
            lines += [f".. data:: {name}", ""]
            lines += [f"   {line}" for line in (signal.__doc__ or "").splitlines()]
            lines.append("")
        return lines


class BenchmarksDirective(_GeneratedDirective):
    """The benchmark results, converted from their Markdown."""

    def lines(self) -> list[str]:
        self.env.note_dependency(str(RESULTS))
        if not RESULTS.is_file():
            return [
                ".. note::",
                "",
                "   This build has no benchmark results: ``python -m benchmarks``",
                "   writes ``benchmarks/results/results.md``, which this page",
                "   shows once the documentation is built again.",
            ]
        return markdown_to_rst(RESULTS.read_text(encoding="utf-8"))


def _text(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", text.strip())


def markdown_to_rst(markdown: str) -> list[str]:
    """The headings, paragraphs, bullet lists, code blocks and pipe tables that
    ``python -m benchmarks`` writes, as reStructuredText.
    """
    lines = markdown.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line:
            continue
        if line.startswith("#"):
            out += [f".. rubric:: {_text(line.lstrip('#'))}", ""]
        elif line.startswith("```"):
            out += [".. code-block:: text", ""]
            while index < len(lines) and not lines[index].startswith("```"):
                out.append(f"    {lines[index]}" if lines[index].strip() else "")
                index += 1
            index += 1
            out.append("")
        elif line.startswith("|"):
            rows = [line]
            while index < len(lines) and lines[index].strip().startswith("|"):
                rows.append(lines[index].strip())
                index += 1
            out += _table(rows)
        elif line.startswith("- "):
            out.append(f"* {_text(line[2:])}")
            while index < len(lines) and lines[index].strip().startswith("- "):
                out.append(f"* {_text(lines[index].strip()[2:])}")
                index += 1
            out.append("")
        else:
            out += [_text(line), ""]
    return out


def _table(rows: list[str]) -> list[str]:
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    cells = [row for row in cells if not all(set(c) <= set("-: ") for c in row)]
    header = cells[0]
    units, ratios = header[1::2], header[2::2]
    if (
        len(units) == len(ratios)
        and all(unit.endswith(" µs") for unit in units)
        and all(ratio.endswith(" ratio (IQR)") for ratio in ratios)
    ):
        # The adapters' table is too wide for a page: one table of times and
        # one of ratios, with the workloads as columns.
        workloads = [unit.removesuffix(" µs") for unit in units]
        times = [[row[0], *row[1::2]] for row in cells[1:]]
        ratio_rows = [
            [row[0], *(cell.replace(" to ", "\u2013") for cell in row[2::2])]
            for row in cells[1:]
        ]
        return [
            *_list_table("Microseconds per request", [header[0], *workloads], times),
            *_list_table(
                "Ratio to raw: median (interquartile range) over the rounds",
                [header[0], *workloads],
                ratio_rows,
            ),
        ]
    return _list_table("", header, cells[1:])


def _list_table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    out = [f".. list-table:: {_text(title)}".rstrip(), "   :header-rows: 1", ""]
    for row in [header, *rows]:
        for position, cell in enumerate(row):
            out.append(f"   {'* -' if position == 0 else '  -'} {_text(cell)}")
    return [*out, ""]


def break_points(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Put a ``<wbr>`` at each place where code in a table cell may wrap.

    A code literal never wraps inside its words (Sphinx's ``span.pre`` is
    ``white-space: nowrap``), so a long name would widen its table past the
    page; breaking it anywhere would split words. These break points are
    invisible and are not copied with the text.
    """
    if app.builder.format != "html":
        return
    for table in list(doctree.findall(nodes.table)):
        pattern = _CATALOG_BREAKS if "catalog" in table["classes"] else _BREAKS
        for literal in list(table.findall(nodes.literal)):
            for text in list(literal.findall(nodes.Text)):
                parts = pattern.split(str(text))
                if len(parts) == 1:
                    continue
                pieces: list[nodes.Node] = [nodes.Text(parts[0])]
                for part in parts[1:]:
                    pieces += [nodes.raw("", "<wbr>", format="html"), nodes.Text(part)]
                text.parent.replace(text, pieces)


def setup(app: Sphinx) -> dict[str, t.Any]:
    app.connect("doctree-resolved", break_points)
    app.add_directive("sessionext-catalog", CatalogDirective)
    app.add_directive("sessionext-features", FeaturesDirective)
    app.add_directive("sessionext-signals", SignalsDirective)
    app.add_directive("sessionext-benchmarks", BenchmarksDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
