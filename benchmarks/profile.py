"""``python -m benchmarks.profile ADAPTER WORKLOAD [--db sqlite|postgres]``:
where one adapter's requests spend their time, by cProfile, for the
missed-target analysis of the Performance section.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
from pathlib import Path

from werkzeug.test import EnvironBuilder

from . import bench_apps


def main(argv: list[str] | None = None) -> int:
    """Profile ``--requests`` requests and print the heaviest functions."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("adapter", choices=bench_apps.ADAPTERS)
    parser.add_argument("workload", choices=bench_apps.WORKLOADS)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--filter", default="flask_sessionext|pool|sqlite3|execute")
    args = parser.parse_args(argv)
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.db == "sqlite":
            url = f"sqlite:///{tmp}/profile.sqlite3"
        else:
            sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
            from _postgres import start_for_session

            server = start_for_session()
            assert server is not None, "PostgreSQL server binaries not found"
            url = server.create_database("profile")
        try:
            adapter = bench_apps.build(args.adapter, url)
            environ = EnvironBuilder(path=f"/{args.workload}").get_environ()
            bench_apps._turn(adapter.app, environ, 100)
            profile = cProfile.Profile()
            profile.enable()
            bench_apps._turn(adapter.app, environ, args.requests)
            profile.disable()
            adapter.engine.dispose()
        finally:
            if server is not None:
                server.close()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).sort_stats("cumulative")
    stats.print_stats(args.filter, 25)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
