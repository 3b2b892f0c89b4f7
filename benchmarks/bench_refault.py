"""Benchmark: slide with the refault source on one mapping whose hot pages are scattered through it.

A 1 GiB workload in ONE anonymous mapping, a random 10% of its pages touched without pause
(one core busy), the rest never touched, with a private zram device. It is measured
unmanaged first, then managed by a slide project (scanner=refault, loop=2, sleep=1,
interval=1, T=1) run by a Manager in this process, for `--minutes` (5) while the placement
of the hot and cold pages is read from pagemap every few seconds; then managed and
unmanaged windows alternate. Figures (one JSON line each; exits 0 when a target is missed):

- cold pages swapped after the run (target >= 0.9), hot pages resident at the end (>= 0.99),
  the precision of what is swapped, the time until 90% of the cold pages were out;
- workload ops/s managed vs unmanaged once converged (>= 0.97): the median, over the
  managed windows, of each against the mean of the unmanaged windows on either side;
- refaults per minute (the workload's major faults: every swap-in from zram is one) during
  the exploration and over a minute once converged, against the budget (refault_budget,
  the key's default, percent of the resident anonymous pages per minute);
- the manager's CPU seconds (this process, less the benchmark's own pagemap reads) per
  GiB of target over the run, and per minute once converged.

Needs root.

    python benchmarks/bench_refault.py [--total-mb 1024] [--hot-percent 10] [--minutes 5]
"""
from __future__ import annotations

import argparse
import json
import resource
import signal
import statistics
import sys
import time

from etmem import procfs, zram
from etmem.model import Manager, Project
from etmem.scan.sources.refault import DEFAULT_BUDGET_PERCENT
from etmem.workload import PAGE, Workload

GiB = 1 << 30


def emit(metric: str, value, unit: str, target: str | None = None) -> None:
    print(json.dumps({"bench": "refault", "metric": metric, "value": value, "target": target, "unit": unit}), flush=True)


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def major_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[9])   # field 12, majflt


def resident_pages(pid: int) -> int:
    """Resident anonymous pages: what the budget is a share of (file pages are never sampled)."""
    return procfs.status_kb(pid, "RssAnon") * 1024 // PAGE


def ops_rate(w: Workload, seconds: float) -> float:
    w.reset_rate()
    time.sleep(seconds)
    return w.stats()["ops_per_s"]


class Meter:
    """The manager's CPU time: this process's, less what the benchmark's main thread spends itself."""

    def __init__(self):
        self.cpu0, self.own0 = process_cpu(), time.thread_time()

    def manager_cpu(self) -> float:
        return (process_cpu() - self.cpu0) - (time.thread_time() - self.own0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mb", type=int, default=1024)
    parser.add_argument("--hot-percent", type=float, default=10.0)
    parser.add_argument("--minutes", type=float, default=5.0, help="managed time before the figures")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of the converged window")
    parser.add_argument("--window", type=float, default=8.0, help="seconds per ops/s window")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    reason = zram.missing_reason()
    if reason:
        print(f"bench_refault: {reason}", file=sys.stderr)
        return 0
    budget = DEFAULT_BUDGET_PERCENT
    hot_mb = max(1, round(args.total_mb * args.hot_percent / 100))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))   # the device and workload are removed on the way out
    # The highest priority there is: other sessions' devices (tests use 32000) would share
    # the pages round-robin at an equal one, and their swapoff would bring ours back in.
    device = zram.ZramSwap(2 * args.total_mb << 20, priority=32767).create()
    manager = Manager()
    try:
        with Workload(total_mb=args.total_mb, hot_mb=hot_mb, pause=0.0, layout="scattered") as w:
            unmanaged = [ops_rate(w, args.window)]
            project = Project(name="bench", loop=2, interval=1, sleep=1, scanner="refault")
            task = project.add_engine("slide").add_task("w", "pid", w.pid, T=1)
            manager.add(project)

            meter = Meter()
            began = time.monotonic()
            faults0 = major_faults(w.pid)
            rss_sum = rss_n = 0
            converged_at = None
            manager.start("bench")
            while time.monotonic() - began < args.minutes * 60:
                time.sleep(5)
                place = w.placement()
                rss_sum, rss_n = rss_sum + resident_pages(w.pid), rss_n + 1
                if converged_at is None and place["recall"] >= 0.9:
                    converged_at = time.monotonic() - began
            explore_s = time.monotonic() - began
            explore_cpu = meter.manager_cpu()
            explore_faults = major_faults(w.pid) - faults0
            explore_rss = rss_sum / max(1, rss_n)
            place = w.placement()

            # Converged (or not): a steady window for the refault rate and the CPU, then
            # managed and unmanaged ops/s windows alternate.
            meter, f0, t0 = Meter(), major_faults(w.pid), time.monotonic()
            rss_sum = rss_n = 0
            while time.monotonic() - t0 < args.steady:
                time.sleep(5)
                rss_sum, rss_n = rss_sum + resident_pages(w.pid), rss_n + 1
                if converged_at is None and w.placement()["recall"] >= 0.9:
                    converged_at = time.monotonic() - began
            steady_s, steady_faults, steady_cpu = time.monotonic() - t0, major_faults(w.pid) - f0, meter.manager_cpu()
            steady_rss = rss_sum / max(1, rss_n)
            # Unmanaged, managed, unmanaged, ...: each managed window against the mean of the
            # unmanaged ones on either side, so the machine's own drift cancels out.
            manager.stop("bench")
            around, managed = [ops_rate(w, args.window)], []
            for _ in range(args.reps):
                manager.start("bench")
                managed.append(ops_rate(w, args.window))
                manager.stop("bench")
                around.append(ops_rate(w, args.window))
            ratios = [m / ((a + b) / 2) for m, a, b in zip(managed, around, around[1:])]
            unmanaged += around
            end = w.placement()

            emit("cold_swapped_fraction", round(place["recall"], 4), "ratio", ">= 0.9")
            emit("hot_resident_fraction", round(end["hot_resident"], 4), "ratio", ">= 0.99")
            emit("precision", None if end["precision"] is None else round(end["precision"], 4), "ratio")
            emit("minutes_to_90_percent_cold_out", None if converged_at is None else round(converged_at / 60, 2), "min")
            emit("ops_managed_vs_unmanaged", round(statistics.median(ratios), 3), "ratio", ">= 0.97")
            emit("ops_per_s_unmanaged", round(max(unmanaged)), "ops/s")
            emit("ops_per_s_managed", round(max(managed)), "ops/s")
            emit("budget_percent_per_minute", budget, "%/min")
            emit("refaults_per_minute_exploring", round(explore_faults * 60 / explore_s), "pages/min")
            emit("refaults_exploring_percent_of_resident_per_minute",
                 round(100 * explore_faults * 60 / explore_s / max(1, explore_rss), 3), "%/min", f"<= {budget}")
            emit("refaults_per_minute_converged", round(steady_faults * 60 / steady_s), "pages/min")
            emit("refaults_converged_percent_of_resident_per_minute",
                 round(100 * steady_faults * 60 / steady_s / max(1, steady_rss), 3), "%/min", f"<= {budget}")
            gib = args.total_mb / 1024
            emit("manager_cpu_seconds_per_gib", round(explore_cpu / gib, 2), "s/GiB")
            emit("manager_cpu_seconds_per_minute_per_gib_converged", round(steady_cpu * 60 / steady_s / gib, 2), "s/min/GiB")
            emit("rounds", task.stats.rounds, "rounds")
            if not w.verify():
                print("bench_refault: the workload's data was damaged", file=sys.stderr)
                return 1
    finally:
        manager.close()
        device.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
