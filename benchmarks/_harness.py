"""Side-by-side timing: interleaved rounds in one process, reported as ratios.

Each case is a callable that runs ``n`` operations. Rounds run every case in
turn, in a rotating order, so drift of the machine hits all cases alike; the
figure of a case is its median time per operation over the rounds.
"""

from __future__ import annotations

import gc
import statistics
import time
import typing as t

from flask.ctx import AppContext
from flask.globals import app_ctx
from werkzeug.local import LocalProxy

Case = t.Callable[[int], None]

#: The current app context, by Flask's public name: the scope of the
#: hand-written ``scoped_session`` of the plain-SQLAlchemy adapters, as
#: Flask-SQLAlchemy scopes its session (through the private variable).
current_app_context: t.Callable[[], AppContext] = t.cast(
    "LocalProxy[AppContext]", app_ctx
)._get_current_object


def measure(
    cases: t.Mapping[str, Case],
    *,
    n: int,
    rounds: int,
    warmup: int = 1,
    statistic: t.Callable[[list[float]], float] = statistics.median,
) -> dict[str, float]:
    """Seconds per operation of each case: the median over the rounds, or
    ``statistic`` of them.
    """
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name](n)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                start = time.perf_counter()
                cases[name](n)
                samples[name].append((time.perf_counter() - start) / n)
            gc.collect()
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: statistic(values) for name, values in samples.items()}


def report(title: str, results: t.Mapping[str, float], baseline: str) -> str:
    """A table of microseconds per operation and the ratio to ``baseline``."""
    base = results[baseline]
    lines = [title, f"{'case':<34} {'us/op':>9} {'ratio':>7}"]
    for name, value in results.items():
        lines.append(f"{name:<34} {value * 1e6:>9.2f} {value / base:>7.3f}")
    return "\n".join(lines)
