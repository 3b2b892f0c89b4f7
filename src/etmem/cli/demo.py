"""`etmem demo`: watch slide move a workload's cold memory to zram while its hot set stays.

It starts a workload child whose hot pages are scattered through one mapping, as in a
real heap (or, with --layout split, kept in a mapping of their own), makes a zram swap
device of its own when no swap is active (removed at the end), runs a slide project on
the workload through the same Manager the daemon uses, shows one progress line per
round, and ends with a before/after table judged against the workload's own knowledge
of which pages are hot, and a check of every byte of the workload's data. With --dry-run
the task only observes: each round says what slide would swap out, and nothing is swapped.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from .. import kernel, procfs, units, zram
from ..errors import EtmemError
from ..model import Manager, Project
from ..scan import SOURCES, available_sources, best_source, choose_source
from ..stats import TargetResult
from ..workload import LAYOUTS, Workload

MiB = 1 << 20
PAGE = 4096
SETTLED_SHARE = 0.005   # a round that swaps out less than this share of the workload: settled
DEMO_REFAULT_BUDGET = 50.0


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Start a workload with a hot and a cold set, run the slide engine on it and show "
                          "the cold set going to compressed swap (zram) while the hot set stays in memory. "
                          "Needs root.")
    mib = units.size_arg("M", MiB, "MiB")  # 512M, 1g, 1.5G; a bare number is MiB, as --total-mb always took
    parser.add_argument("--total", "--total-mb", dest="total_mb", type=mib, default=512, metavar="SIZE",
                        help="workload size, e.g. 512M or 1g; a bare number is MiB (default 512M)")
    parser.add_argument("--hot", "--hot-mb", dest="hot_mb", type=mib, default=64, metavar="SIZE",
                        help="of which the hot set, touched all the time (default 64M)")
    parser.add_argument("--layout", choices=LAYOUTS, default="scattered",
                        help="scattered (default): hot pages spread through one mapping, as in a real heap; "
                             "split: the hot set in a mapping of its own")
    parser.add_argument("--rounds", type=int, default=0,
                        help="slide rounds to run (default 0: until a round swaps out almost nothing, "
                             "at most --seconds)")
    parser.add_argument("--seconds", type=int, default=180, help="time limit for --rounds 0 (default 180)")
    parser.add_argument("--refault-budget", type=float, default=DEMO_REFAULT_BUDGET,
                        help=f"the refault source's budget, percent of resident memory per minute "
                             f"(default {DEMO_REFAULT_BUDGET:g} so the demo settles in about a minute; "
                             "a project's default is 5)")
    parser.add_argument("--scanner", choices=("auto",) + SOURCES, default="auto",
                        help="access source (default auto: the best this kernel has)")
    parser.add_argument("--loop", type=int, default=2, help="scan passes per round (default 2)")
    parser.add_argument("--sleep", type=int, default=1, help="seconds between passes (default 1)")
    parser.add_argument("--interval", type=int, default=1, help="seconds between rounds (default 1)")
    parser.add_argument("-T", type=int, default=1, dest="T", help="pages used fewer than T times a round are cold (default 1)")
    parser.add_argument("--zram", "--zram-mb", dest="zram_mb", type=mib, default=None, metavar="SIZE",
                        help="size of the zram device made when no swap is active (default: workload size)")
    parser.add_argument("--dry-run", action="store_true",
                        help="observe only (the task's dry_run=yes): each round says what slide would swap out, "
                             "nothing is swapped and no swap device is needed")


def missing_requirements(dry_run: bool = False) -> str | None:
    """Why the demo cannot run here, in one sentence; None when it can (a dry run needs no swap)."""
    if os.geteuid() != 0:
        # By its path: sudo's secure_path holds no venv's (or pyenv's) etmem.
        command = shlex.quote(os.path.abspath(sys.argv[0])) if os.path.basename(sys.argv[0]) == "etmem" else "etmem"
        return ("etmem demo needs root: it swaps another process's memory out (process_madvise) and may create "
                f"a zram device. Run: sudo {command} demo")
    if dry_run:
        return None
    if not kernel.has_process_madvise() and not kernel.has_swap_pages():
        return kernel.missing("process_madvise")
    if not kernel.swap_active():
        reason = zram.missing_reason()
        if reason:
            return f"no swap is active and no zram device can be made: {reason}"
    return None


class _Snapshot:
    """The workload's memory, placement and speed at one moment."""

    def __init__(self, w: Workload, seconds: float):
        w.reset_rate()
        time.sleep(seconds)
        self.ops = w.stats()["ops_per_s"]
        status = procfs.status(w.pid)
        self.rss = _kb(status.get("VmRSS")) << 10
        self.swap = _kb(status.get("VmSwap")) << 10
        self.placement = w.placement()
        self.major_faults = _major_faults(w.pid)


def _major_faults(pid: int) -> int:
    """The process's major page faults so far (/proc/PID/stat): swap-ins are among them."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[9])


def _bad_sizes(args: argparse.Namespace) -> str | None:
    """Why the demo's own knobs cannot run here, or None: sizes must fit the free memory.

    loop, sleep, interval and T are the project's and task's keys; their config rules
    (docs/config.md) check them when the project is built, before anything is started.
    """
    if args.total_mb < 1:
        return "--total-mb must be at least 1"
    if args.rounds < 0:
        return "--rounds must be 0 (until settled) or more"
    if args.seconds < 1:
        return "--seconds must be at least 1"
    if not 0 < args.hot_mb < args.total_mb:
        return f"--hot-mb must be above 0 and below --total-mb ({args.total_mb})"
    if args.zram_mb is not None and args.zram_mb < 1:
        return "--zram-mb must be at least 1"
    available_mb = procfs.meminfo().get("MemAvailable", 0) // 1024
    if args.total_mb > available_mb * 3 // 4:
        return (f"a {args.total_mb} MiB workload does not fit: {available_mb} MiB of memory is available and the "
                f"demo keeps its use under three quarters of that; choose --total-mb {max(2, available_mb // 2)} or less")
    return None


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def _mib(n: float) -> str:
    return f"{n / MiB:,.0f} MiB"


def main(args: argparse.Namespace) -> int:
    problem = missing_requirements(args.dry_run)
    if problem:
        print(f"etmem demo: {problem}", file=sys.stderr)
        return 2
    problem = _bad_sizes(args)
    if problem:
        print(f"etmem demo: {problem}", file=sys.stderr)
        return 2
    if args.scanner != "auto":
        reason = available_sources().get(args.scanner)
        if reason and not (args.scanner == "refault" and not kernel.swap_active()):   # the demo adds swap
            print(f"etmem demo: scanner {args.scanner} is not available: {reason}", file=sys.stderr)
            return 2

    device = None
    workload = None
    manager = Manager()
    try:
        project = Project(name="demo", loop=args.loop, interval=args.interval, sleep=args.sleep, scanner=args.scanner,
                          refault_budget=args.refault_budget)
        if args.dry_run:
            print("dry run: nothing is swapped out, so no swap device is made")
        elif not kernel.swap_active():
            device = zram.ZramSwap((args.zram_mb or args.total_mb) * MiB).create()
            print(f"swap: made {device.device} ({_mib(device.size_bytes)}, compressed in RAM); it is removed at the end")
        else:
            names = ", ".join(d["name"] for d in procfs.swap_devices())
            print(f"swap: using the active swap ({names})")
        workload = Workload(total_mb=args.total_mb, hot_mb=args.hot_mb, layout=args.layout).start()
        where = "scattered through one mapping" if args.layout == "scattered" else "in a mapping of its own"
        print(f"workload: pid {workload.pid}, {args.total_mb} MiB, of which {args.hot_mb} MiB hot (touched all the time, "
              f"{where}), {args.total_mb - args.hot_mb} MiB cold")
        before = _Snapshot(workload, 2.0)

        task = project.add_engine("slide").add_task("workload", "pid", workload.pid, T=args.T, dry_run=args.dry_run)
        manager.add(project)
        if args.scanner != "auto":
            source = args.scanner
        elif args.dry_run:   # a dry run scans with a source that only reads
            source = _described(choose_source("auto", read_only=True))
        else:
            source = _auto(available_sources(refresh=True))
        budget = f", refault budget {args.refault_budget:g}%/min of resident memory" if source.startswith("refault") else ""
        print(f"slide: loop={args.loop} sleep={args.sleep}s interval={args.interval}s T={args.T}, "
              f"scanner {args.scanner}{' -> ' + source if args.scanner == 'auto' else ''}{budget}")
        manager.start("demo")
        _follow(task, workload, args.rounds, args.seconds)
        during = _Snapshot(workload, 2.0)       # managed: the project still runs
        manager.stop("demo")
        _table(before, during)
        if args.dry_run:
            _dry_run_summary(task, workload, before, during)
        ok = workload.verify()
        print(f"workload data: {'every byte checked, all intact' if ok else 'CORRUPTED'}")
        if task.stats.last_error:
            print(f"last error: {task.stats.last_error}")
        return 0 if ok else 1
    except EtmemError as exc:
        print(f"etmem demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\netmem demo: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        manager.close()
        if workload is not None:
            workload.stop()
        if device is not None:
            device.remove()


def _auto(sources: dict) -> str:
    return _described(best_source(sources) or "none")


def _described(name: str) -> str:
    if name == "smaps":   # the coarse fallback: say where the per-page sources went
        name += " (per VMA; `etmem kernel` shows what the per-page sources need)"
    elif name == "refault":
        name += " (no access bits on this kernel: samples pages out and watches which come back)"
    return name


def _follow(task, workload: Workload, rounds: int, seconds: int) -> None:
    """One progress line per round (rewritten in place on a terminal), until `rounds` or settled."""
    tty = sys.stdout.isatty()
    seen = 0
    began = time.monotonic()
    settled_pages = max(1, int(SETTLED_SHARE * workload.total_mb * MiB) // PAGE)
    would = None    # a dry run: pages the previous round would have swapped out
    total = str(rounds) if rounds else "?"
    while True:
        if task.stats.rounds == seen:
            line = f"  round {seen + 1}/{total}: scanning ... {time.monotonic() - began:4.0f} s"
            if tty:
                print("\r" + line.ljust(100), end="", flush=True)
            if not rounds and time.monotonic() - began > seconds:
                print(("\r" if tty else "") + f"  stopped after {seconds} s (--seconds)".ljust(100 if tty else 0))
                return
            time.sleep(0.2)
            continue
        seen = task.stats.rounds
        status = procfs.status(workload.pid)
        placement = workload.placement()
        last = task.stats.last_round[0] if task.stats.last_round else TargetResult()
        sampling = last.detail.get("sampling")
        if last.dry_run:
            what = (f"scanned {_mib(last.scanned * PAGE)}, cold {_mib(last.cold * PAGE)}, "
                    f"would swap out {_mib(last.chosen * PAGE)}")
        elif sampling:
            what = (f"sampled {_mib(sampling['sampled'] * PAGE)}, {_mib(sampling['came_back'] * PAGE)} came back, "
                    f"swapped out {_mib(last.swapped * PAGE)}")
        else:
            what = f"scanned {_mib(last.scanned * PAGE)}, cold {_mib(last.cold * PAGE)}, swapped out {_mib(last.swapped * PAGE)}"
        line = (f"  round {seen}/{total}: {what}; RSS {_mib(_kb(status.get('VmRSS')) << 10)}, "
                f"swap {_mib(_kb(status.get('VmSwap')) << 10)}, cold set out {100 * placement['recall']:.0f}%, "
                f"hot set resident {100 * placement['hot_resident']:.0f}% [{task.stats.source}]")
        print(("\r" + line.ljust(100)) if tty else line, flush=True)
        if tty:
            print()
        if rounds and seen >= rounds:
            return
        if last.dry_run:   # nothing changes: done once two rounds in a row would swap the same
            if not rounds and seen >= 2 and last.chosen == would:
                print(f"  steady: rounds {seen - 1} and {seen} would swap out the same {_mib(last.chosen * PAGE)}")
                return
            would = last.chosen
            continue
        # settled: little went out, and (refault) not for want of budget but of pages left to sample
        exhausted = sampling is None or sampling["sampled"] < sampling["sample_size"]
        if not rounds and seen >= 2 and last.swapped < settled_pages and exhausted:
            print(f"  settled: round {seen} swapped out less than {_mib(settled_pages * PAGE)}")
            return
        if not rounds and time.monotonic() - began > seconds:
            print(f"  stopped after {seconds} s (--seconds)")
            return


def _dry_run_summary(task, workload: Workload, before: _Snapshot, after: _Snapshot) -> None:
    """What the dry run would have done, against the workload's own knowledge of its cold set."""
    last = task.stats.last_round[0] if task.stats.last_round else TargetResult()
    cold = (workload.total_mb - workload.hot_mb) * MiB
    print(f"dry run: slide would swap out {_mib(last.chosen * PAGE)} in its last round; the workload's cold set is "
          f"{_mib(cold)}; swapped out: {_mib(before.swap)} before, {_mib(after.swap)} after (a dry run swaps nothing)")


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _table(before: _Snapshot, after: _Snapshot) -> None:
    ratio = after.ops / before.ops if before.ops else 0.0
    rows = [
        ("resident (RSS)", _mib(before.rss), _mib(after.rss)),
        ("swapped out", _mib(before.swap), _mib(after.swap)),
        ("cold pages swapped", _percent(before.placement["recall"]), _percent(after.placement["recall"])),
        ("swapped pages cold", _percent(before.placement["precision"]), _percent(after.placement["precision"])),
        ("hot set resident", _percent(before.placement["hot_resident"]), _percent(after.placement["hot_resident"])),
        ("major faults (swap-ins)", "-", f"{after.major_faults - before.major_faults:,}"),
        ("workload ops/s", f"{before.ops:,.0f}", f"{after.ops:,.0f} ({ratio:.2f}x)"),
    ]
    print()
    print(f"{'':<22}{'unmanaged':>14}{'managed':>22}")
    for name, a, b in rows:
        print(f"{name:<22}{a:>14}{b:>22}")
    print()
