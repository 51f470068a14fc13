"""``python -m benchmarks``: run every benchmark and print its table."""

from __future__ import annotations

from . import bench_changes, bench_signals

if __name__ == "__main__":
    bench_signals.main()
    print()
    bench_changes.main()
