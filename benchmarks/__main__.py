"""``python -m benchmarks``: this extension against plain SQLAlchemy and its
peers, side by side in one process.

Whole requests through the adapters of ``bench_apps`` on SQLite and/or
PostgreSQL (the throwaway server the tests use) and the cost and latency of
``SESSIONEXT_BROADCAST`` (``bench_broadcast``; on PostgreSQL also its load, on
a server with ``fsync`` on); on SQLite, several processes on one file
(``bench_sqlite``); then the micro benchmarks of the signal bridge, change
tracking and query recording. Writes the tables as Markdown and JSON.
``--quick`` is a smoke run of about a minute that fails only on errors, never
on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
import typing as t
from dataclasses import asdict
from pathlib import Path

from . import (
    bench_apps,
    bench_async,
    bench_broadcast,
    bench_changes,
    bench_recording,
    bench_signals,
    bench_sqlite,
)

TARGET_WORKLOADS = ("nodb", "empty", "read", "write")


def _postgres_urls(names: t.Sequence[str]) -> tuple[t.Any, dict[str, str]]:
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from _postgres import find_pg_bin, start_for_session

    if find_pg_bin() is None:
        raise SystemExit("PostgreSQL server binaries not found: use --db sqlite")
    server = start_for_session()
    assert server is not None
    return server, {name: server.create_database(f"bench_{name}") for name in names}


def _table(
    results: dict[str, dict[str, bench_apps.Result]], workloads: t.Sequence[str]
) -> str:
    cells = " | ".join(f"{w} µs | {w} ratio (IQR)" for w in workloads)
    lines = [f"| adapter | {cells} |", "|---|" + "---|---|" * len(workloads)]
    for name, by_workload in results.items():
        row = []
        for w in workloads:
            r = by_workload[w]
            iqr = f"{r.ratio_q1:.3f} to {r.ratio_q3:.3f}"
            row.append(f"{r.us_per_request:.1f} | {r.ratio:.3f} ({iqr})")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _targets(results: dict[str, dict[str, bench_apps.Result]]) -> list[str]:
    worst = max(results["sessionext"][w].ratio for w in TARGET_WORKLOADS)
    lines = [
        f"sessionext (no receivers): worst ratio {worst:.3f}, target <= 1.02:"
        f" {_verdict(worst <= 1.02)}"
    ]
    for w in ("empty", "read", "write"):
        ours = results["sessionext"][w].ratio
        floor = results["raw_pre_ping"][w].ratio
        lines.append(
            f"{w}: sessionext {ours:.3f} x raw, raw_pre_ping {floor:.3f} x raw,"
            f" target: no more than raw_pre_ping: {_verdict(ours <= floor)}"
        )
    for w in ("empty", "read", "write"):
        # From the median per-round ratios, which cancel the machine's drift
        # over the run, rather than from differences of medians.
        raw = results["raw"][w].us_per_request
        ours = (results["sessionext_full"][w].ratio - 1) * raw
        theirs = (results["fsa_full"][w].ratio - 1) * raw
        # The features alone: each full mode against its own library's
        # defaults, which leaves out the per-request costs they share.
        ours_features = (
            results["sessionext_full"][w].ratio - results["sessionext"][w].ratio
        ) * raw
        theirs_features = (results["fsa_full"][w].ratio - results["fsa"][w].ratio) * raw
        lines.append(
            f"{w}: sessionext_full adds {ours:.1f} µs, fsa_full {theirs:.1f} µs,"
            f" target <= half: {_verdict(ours <= theirs / 2)} (the features"
            f" alone, over each library's defaults: {ours_features:.1f} µs and"
            f" {theirs_features:.1f} µs)"
        )
    for name in ("sessionext", "sessionext_noping", "sessionext_full"):
        ratio = results[name]["nodb"].ratio
        lines.append(
            f"nodb: {name} {ratio:.3f} x raw, target <= 1.01: {_verdict(ratio <= 1.01)}"
        )
    ours = results["sessionext_full"]["bulk"].us_per_request
    theirs = results["fsa_full"]["bulk"].us_per_request
    lines.append(
        f"bulk (whole request, insert included): sessionext_full {ours:.0f} µs,"
        f" fsa_full {theirs:.0f} µs (the tracking part alone: see the change"
        " tracking benchmark)"
    )
    return lines


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, Python {platform.python_version()}, {platform.system()}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; the exit code says whether they ran, not how fast."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    rounds, scale = (3, 0.2) if args.quick else (args.rounds, 1.0)
    databases = ("sqlite", "postgres") if args.db == "both" else (args.db,)

    report: dict[str, t.Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": _machine(),
        "rounds": rounds,
        "databases": {},
    }
    markdown = [f"# Benchmarks ({report['date']})", "", report["machine"], ""]
    broadcast: list[str] = []
    report["broadcast"] = {}
    for database in databases:
        server = None
        with tempfile.TemporaryDirectory() as tmp:
            url_for: t.Callable[[str], str]
            if database == "sqlite":
                urls = {
                    name: f"sqlite:///{tmp}/{name}.sqlite3"
                    for name in bench_apps.ADAPTERS
                }

                def url_for(name: str, tmp: str = tmp) -> str:
                    return f"sqlite:///{tmp}/{name}.sqlite3"

            else:
                server, urls = _postgres_urls(bench_apps.ADAPTERS)
                url_for = server.create_database
            try:
                adapters = {
                    name: bench_apps.build(name, urls[name])
                    for name in bench_apps.ADAPTERS
                }
                results = bench_apps.run(adapters, bench_apps.WORKLOADS, rounds, scale)
                for adapter in adapters.values():
                    adapter.engine.dispose()
                b_table, b_targets, b_figures = bench_broadcast.section(
                    database, url_for, args.quick
                )
            finally:
                if server is not None:
                    server.close()
        table = _table(results, bench_apps.WORKLOADS)
        targets = _targets(results)
        print(f"\n== {database} ==\n{table}\n" + "\n".join(targets))
        markdown += [
            f"## {database}",
            "",
            table,
            "",
            *[f"- {line}" for line in targets],
            "",
        ]
        report["databases"][database] = {
            "results": {
                a: {w: asdict(r) for w, r in ws.items()} for a, ws in results.items()
            },
            "targets": targets,
        }
        print(f"\n== broadcast, {database} ==\n{b_table}\n" + "\n".join(b_targets))
        broadcast += [
            f"### {database}",
            "",
            b_table,
            "",
            *[f"- {line}" for line in b_targets],
            "",
        ]
        report["broadcast"][database] = {"figures": b_figures, "targets": b_targets}
        if database == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                p_table, p_targets, p_figures = bench_sqlite.section(
                    lambda name, tmp=tmp: f"sqlite:///{tmp}/{name}.sqlite3", args.quick
                )
            print(
                "\n== SQLite, several processes on one file ==\n"
                f"{p_table}\n" + "\n".join(p_targets)
            )
            markdown += [
                "## sqlite, several processes on one file",
                "",
                bench_sqlite.METHOD,
                "",
                p_table,
                "",
                *[f"- {line}" for line in p_targets],
                "",
            ]
            report["sqlite_processes"] = {"figures": p_figures, "targets": p_targets}

    micro: list[tuple[str, t.Callable[[], t.Any]]] = [
        (
            "signal bridge",
            lambda: bench_signals.main(
                n=200 if args.quick else 2000, rounds=3 if args.quick else 15
            ),
        ),
        (
            "change tracking",
            lambda: bench_changes.main(n=2, rounds=2 if args.quick else 25),
        ),
        ("async sessions", lambda: bench_async.section(args.quick)),
        (
            "query recording",
            lambda: bench_recording.main(
                n=200 if args.quick else 2000, rounds=3 if args.quick else 15
            ),
        ),
    ]
    for title, run in micro:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            run()
        print(f"\n{out.getvalue()}", end="")
        markdown += [f"## {title}", "", "```", out.getvalue().rstrip(), "```", ""]
        report[title] = out.getvalue()

    markdown += [
        "## broadcast (SESSIONEXT_BROADCAST)",
        "",
        bench_broadcast.METHOD,
        "",
        *broadcast,
    ]

    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text("\n".join(markdown))
        (args.out / "results.json").write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out / 'results.md'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
