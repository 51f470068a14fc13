"""Concurrent writers with ``SESSIONEXT_BROADCAST`` on and off: commits per
second at 1, 4 and 16 writers, and what one publisher stalled before its
COMMIT does to the commits of the others.

Each writer is a process of its own, as the workers of a deployment are
(threads would share one interpreter lock and measure it), holding two apps on
the same database, one publishing and one not, so that a comparison switches
between them in the same processes with their connections open. Rounds
alternate on/off and off/on. A writer commits one-row transactions in a loop
until the round's deadline. No process receives (no listener thread), so the
figures are the cost of publishing to the committing deployment.

The stall uses the public API only: a receiver of
:data:`flask_sessionext.signals.commit`, which is sent after
``before_commit`` (where broadcast publishes) and before the DBAPI commit,
sleeps in one writer while the others commit.

Part of :func:`.bench_broadcast.section` on PostgreSQL, on a server of its own
that flushes every commit to disk (``fsync`` and ``synchronous_commit`` on).
Alone: ``python -m benchmarks.broadcast_load [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
import typing as t
from pathlib import Path

import sqlalchemy as sa

from ._writers import (
    Command,
    Commit,
    Committed,
    Stall,
    Stalled,
    Writers,
    fresh,
    sleep_until,
)

#: The numbers of concurrent writers of the throughput measure.
WRITER_COUNTS = (1, 4, 16)
#: The writers that commit while another one stalls.
STALL_OTHERS = 4
#: Broadcast on against off, commits per second, at least.
TARGET_RATIO = 0.95
#: Seconds from a command to its start, so that every writer has it by then.
LEAD = 0.3
#: Seconds the other writers commit before the stall begins, and after it ends.
STALL_MARGIN = 0.5
#: Seconds between two samples of the writers' wait events.
SAMPLE_INTERVAL = 0.05
#: The wait events a table shows for each comparison, the most frequent.
TOP_WAITS = 2
#: What the section of ``results.md`` measured, above its tables.
METHOD = (
    "Load (PostgreSQL with `fsync` and `synchronous_commit` on): writer"
    " processes, each holding an app with broadcast on and one with it off on"
    " the same database, commit one-row transactions in a loop for a fixed"
    " time; rounds alternate on/off and off/on in the same processes; no"
    " process receives. Commits per second are the medians over the rounds,"
    " the ratio the median of the per-round ratios. Stall: one writer sleeps"
    " in a receiver of `signals.commit` (after publishing, before the DBAPI"
    f" commit) while {STALL_OTHERS} others commit; the commits they finish"
    " during the sleep, their rate then relative to their rate outside it"
    " in the same round, and their slowest commit. Waits: what the writers'"
    " backends executing a statement wait on (`pg_stat_activity`, sampled"
    f" every {SAMPLE_INTERVAL * 1000:.0f} ms), in backends per sample, the"
    f" {TOP_WAITS} most frequent. The targets: commits per second on >="
    f" {TARGET_RATIO} x off; during a stall, with broadcast on, the others"
    f" keep >= {TARGET_RATIO} x their rate."
)


class Waits:
    """The wait events of the other backends on the database of ``url`` that
    are executing a statement, sampled during the windows of
    :meth:`sampling`.
    """

    _QUERY = sa.text(
        "SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND state = 'active' AND wait_event IS NOT NULL"
    )

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples = 0
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def sampling(self, start: float, end: float) -> t.Iterator[None]:
        """Sample from ``start`` to ``end`` (monotonic) on a thread, while
        the block runs.
        """
        stop = threading.Event()
        errors: list[BaseException] = []
        thread = threading.Thread(
            target=self._sample, args=(start, end, stop, errors), daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        if errors:
            raise RuntimeError("sampling the wait events failed") from errors[0]

    def per_sample(self) -> dict[str, float]:
        """Backends waiting on each event, per sample, the most frequent first."""
        return {
            event: count / max(self.samples, 1)
            for event, count in sorted(self.counts.items(), key=lambda i: -i[1])
        }

    def _sample(
        self,
        start: float,
        end: float,
        stop: threading.Event,
        errors: list[BaseException],
    ) -> None:
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                sleep_until(start)
                while time.monotonic() < end and not stop.is_set():
                    for event in conn.execute(self._QUERY).scalars():
                        self.counts[event] = self.counts.get(event, 0) + 1
                    self.samples += 1
                    stop.wait(SAMPLE_INTERVAL)
        except BaseException as e:
            errors.append(e)
        finally:
            engine.dispose()


def _orders(rounds: int) -> t.Iterator[bool]:
    """Broadcast on or off, round after round: on/off, off/on, on/off..."""
    for r in range(rounds):
        yield from (True, False) if r % 2 == 0 else (False, True)


def throughput(
    writers: Writers, url: str, counts: t.Sequence[int], seconds: float, rounds: int
) -> dict[int, dict[str, t.Any]]:
    """Commits per second of ``count`` writers on ``url`` with broadcast off
    and on, the median, lowest and highest per-round ratio, and the wait
    events of their backends in each mode, by count.
    """
    figures: dict[int, dict[str, t.Any]] = {}
    for count in counts:
        rates: dict[bool, list[float]] = {False: [], True: []}
        waits = {False: Waits(url), True: Waits(url)}
        for on in _orders(rounds):
            start = time.monotonic() + LEAD
            end = start + seconds
            with waits[on].sampling(start, end):
                replies = writers.run({w: Commit(on, start, end) for w in range(count)})
            commits = sum(
                sum(1 for e in t.cast(Committed, reply).ends if e <= end)
                for reply in replies.values()
            )
            rates[on].append(commits / seconds)
        ratios = [a / b for a, b in zip(rates[True], rates[False])]
        figures[count] = {
            "off": statistics.median(rates[False]),
            "on": statistics.median(rates[True]),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "waits_off": waits[False].per_sample(),
            "waits_on": waits[True].per_sample(),
        }
    return figures


def stall(
    writers: Writers, url: str, seconds: float, rounds: int
) -> dict[str, dict[str, t.Any]]:
    """Writer 0 waits ``seconds`` between publishing and COMMIT while
    :data:`STALL_OTHERS` others commit, broadcast off and on: the others'
    commits during the wait, their rate then relative to their rate in the
    same round outside it (medians over the rounds), their slowest commit
    (the worst of the rounds), and what their backends wait on meanwhile.
    """
    counts: dict[bool, list[int]] = {False: [], True: []}
    relative: dict[bool, list[float]] = {False: [], True: []}
    slowest: dict[bool, float] = {False: 0.0, True: 0.0}
    waits = {False: Waits(url), True: Waits(url)}
    for on in _orders(rounds):
        start = time.monotonic() + LEAD
        end = start + 2 * STALL_MARGIN + seconds
        at = start + STALL_MARGIN
        commands: dict[int, Command] = {0: Stall(on, at, seconds)}
        commands.update({w: Commit(on, start, end) for w in range(1, STALL_OTHERS + 1)})
        with waits[on].sampling(at, at + seconds):
            replies = writers.run(commands)
        stalled = t.cast(Stalled, replies.pop(0))
        others = [t.cast(Committed, reply) for reply in replies.values()]
        ends = [e for reply in others for e in reply.ends if e <= end]
        during = sum(1 for e in ends if stalled.began <= e <= stalled.ended)
        outside = (len(ends) - during) / (end - start - stalled.ended + stalled.began)
        counts[on].append(during)
        relative[on].append(during / (stalled.ended - stalled.began) / outside)
        slowest[on] = max(slowest[on], *(reply.slowest for reply in others))
    return {
        label: {
            "commits": statistics.median(counts[on]),
            "relative": statistics.median(relative[on]),
            "slowest_ms": slowest[on] * 1000,
            "waits": waits[on].per_sample(),
        }
        for label, on in (("off", False), ("on", True))
    }


def measure(url: str, quick: bool) -> dict[str, t.Any]:
    """Throughput and stall on ``url``, short when ``quick``."""
    fresh(url)
    seconds, rounds, stall_seconds, stall_rounds = (
        (0.5, 1, 0.5, 1) if quick else (1.5, 6, 2.0, 2)
    )
    with Writers(url, max(*WRITER_COUNTS, STALL_OTHERS + 1)) as writers:
        return {
            "seconds": seconds,
            "rounds": rounds,
            "throughput": throughput(writers, url, WRITER_COUNTS, seconds, rounds),
            "stall_seconds": stall_seconds,
            "stall_rounds": stall_rounds,
            "stall": stall(writers, url, stall_seconds, stall_rounds),
        }


def measure_on_durable_postgres(quick: bool) -> dict[str, t.Any]:
    """:func:`measure` on a throwaway PostgreSQL server with ``fsync`` on."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from _postgres import start_for_session

    server = start_for_session(durable=True)
    if server is None:
        raise SystemExit("PostgreSQL server binaries not found")
    try:
        return measure(server.create_database("bench_broadcast_load"), quick)
    finally:
        server.close()


def report(figures: t.Mapping[str, t.Any]) -> tuple[str, list[str]]:
    """The Markdown tables of :func:`measure`'s figures, and the targets with
    their verdicts.
    """
    lines = [
        f"| writers | off commits/s | on commits/s | on/off, {figures['rounds']}"
        f" paired rounds of {figures['seconds']:g} s (min to max)"
        " | waits, off | waits, on |",
        "|---|---|---|---|---|---|",
    ]
    targets = []
    for count, f in figures["throughput"].items():
        lines.append(
            f"| {count} | {f['off']:.0f} | {f['on']:.0f} | {f['ratio']:.3f}"
            f" ({f['ratio_min']:.3f} to {f['ratio_max']:.3f})"
            f" | {_top(f['waits_off'])} | {_top(f['waits_on'])} |"
        )
        targets.append(
            f"throughput, {count} writer{'s' if count > 1 else ''} (fsync on):"
            f" {f['ratio']:.3f} x off, target >= {TARGET_RATIO}:"
            f" {_verdict(f['ratio'] >= TARGET_RATIO)}"
        )
    s = figures["stall"]
    lines += [
        "",
        f"| one publisher stalled {figures['stall_seconds']:g} s before COMMIT,"
        f" {figures['stall_rounds']} rounds | commits of {STALL_OTHERS} other"
        " writers during the stall | their rate then / outside it"
        " | their slowest commit, ms | waits |",
        "|---|---|---|---|---|",
    ]
    for label in ("off", "on"):
        f = s[label]
        lines.append(
            f"| broadcast {label} | {f['commits']:g} | {f['relative']:.3f}"
            f" | {f['slowest_ms']:.0f} | {_top(f['waits'])} |"
        )
    ratio = s["on"]["commits"] / max(s["off"]["commits"], 1)
    targets.append(
        f"stall: {STALL_OTHERS} other writers kept {s['on']['relative']:.3f} x"
        f" their rate during it with broadcast on ({s['off']['relative']:.3f} x"
        f" off; {s['on']['commits']:g} commits on, {s['off']['commits']:g} off:"
        f" {ratio:.3f} x), target >= {TARGET_RATIO}:"
        f" {_verdict(s['on']['relative'] >= TARGET_RATIO)}"
    )
    return "\n".join(lines), targets


def _top(waits: t.Mapping[str, float]) -> str:
    """The most frequent wait events, in backends per sample."""
    top = [(event, n) for event, n in waits.items() if n >= 0.05][:TOP_WAITS]
    return ", ".join(f"{event} {n:.1f}" for event, n in top) or "none"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    """Run the load on a throwaway PostgreSQL server and print it."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.broadcast_load", description=__doc__
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    table, targets = report(measure_on_durable_postgres(args.quick))
    print(f"== broadcast load, postgres ==\n{table}\n" + "\n".join(targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
