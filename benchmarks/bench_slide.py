"""Benchmark: what slide costs a workload, and what it costs the machine.

In one run: a busy workload (hot set touched without pause) is measured unmanaged, then
managed by a slide project (smaps source, loop=2, sleep=1, interval=1) once its cold set
is out, and the two windows alternate `--reps` times; the figure is managed / unmanaged
operations per second (target >= 0.97). The Manager runs in this process, so this
process's CPU time over the managed windows, divided by the GiB the scans covered, is the
daemon's CPU seconds per GiB scanned. Prints one JSON line per figure, exits 0 even when
a target is missed. Needs root.

    python benchmarks/bench_slide.py [--total 1G] [--hot 128M] [--window 8] [--reps 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from etmem import units, zram
from etmem.model import Manager, Project
from etmem.workload import Workload

GiB = 1 << 30


def emit(metric: str, value, unit: str, target: str | None = None) -> None:
    print(json.dumps({"bench": "slide", "metric": metric, "value": value, "target": target, "unit": unit}), flush=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ops_rate(w: Workload, seconds: float) -> float:
    w.reset_rate()
    time.sleep(seconds)
    return w.stats()["ops_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", "--total-mb", dest="total_mb", type=units.size_arg("M", 1 << 20, "MiB"), default=1024, metavar="SIZE",
                        help="workload size, e.g. 1G (a bare number is MiB)")
    parser.add_argument("--hot", "--hot-mb", dest="hot_mb", type=units.size_arg("M", 1 << 20, "MiB"), default=128, metavar="SIZE")
    parser.add_argument("--window", type=float, default=8.0, help="seconds per measuring window")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    reason = zram.missing_reason()
    if reason:
        print(f"bench_slide: {reason}", file=sys.stderr)
        return 0
    device = zram.ZramSwap(args.total_mb << 20, priority=32000).create()
    manager = Manager()
    try:
        with Workload(total_mb=args.total_mb, hot_mb=args.hot_mb, pause=0.0) as w:
            project = Project(name="bench", loop=2, interval=1, sleep=1, scanner="smaps")
            task = project.add_engine("slide").add_task("w", "pid", w.pid, T=1)
            manager.add(project)
            unmanaged, managed = [], []
            cpu = scanned = 0.0
            for _ in range(args.reps):
                unmanaged.append(ops_rate(w, args.window))
                manager.start("bench")
                while task.stats.pages_swapped == 0 and task.stats.rounds < 10:
                    time.sleep(0.1)
                c0, s0 = cpu_seconds(), task.stats.pages_scanned
                managed.append(ops_rate(w, args.window))
                cpu += cpu_seconds() - c0
                scanned += (task.stats.pages_scanned - s0) * 4096
                manager.stop("bench")
            ratio = max(managed) / max(unmanaged)
            emit("ops_managed_vs_unmanaged", round(ratio, 3), "ratio", ">= 0.97")
            emit("ops_per_s_unmanaged", round(max(unmanaged)), "ops/s")
            emit("ops_per_s_managed", round(max(managed)), "ops/s")
            if scanned:
                emit("cpu_seconds_per_gib_scanned", round(cpu / (scanned / GiB), 3), "s/GiB")
            if not w.verify():
                print("bench_slide: the workload's data was damaged", file=sys.stderr)
                return 1
    finally:
        manager.close()
        device.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
