"""Benchmark: cslide's migration throughput through the engine vs bare move_pages(2), same pages, same run.

Needs two NUMA nodes. On a machine with one, the script boots the project's test guest
(virtme-ng + QEMU, node 1 CPU-less, as tests/vm_harness.py does) and runs itself there,
relaying the guest's JSON lines. In the guest, per rep:

- engine: a workload's 256 MiB cold region (4 KiB pages) sits on node 0; a cslide round
  (page_idle, loop=1, node_hot_reserve above node 0's size, unlimited quota) demotes it to
  node 1. Timed: the engine's move phase (grouping by process and node, move_pages batches
  with the pidfd checks before and after each, status and errno accounting), taken from
  the engine's own `last_round` timings; also the whole round after the scan (node
  queries + planning + moves), for information.
- raw: the same region moved back to node 0 and scanned once with page_idle like the
  engine's round does (untimed: a scan just before slows the moves that follow by 10-25%
  under TCG, so both sides move pages in the same state), then moved to node 1 by a bare
  ctypes move_pages loop in the engine's batch size (16384 pages), timed.
Reps alternate the order; best of 4 each counts (interference only slows a run).
Prints one JSON line per figure and exits 0 even when the target is missed.
"""
from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
PAGE = 4096
COLD_MB = 256
REPS = 4
BATCH = 16384
MPOL_MF_MOVE = 2
SYS_move_pages = 279
VM_SHAPE = ["--memory", "2G", "--cpus", "2", "--numa", "1G,cpus=0-1", "--numa", "1G",
            "--numa-distance", "0,1=30", "--numa-distance", "1,0=30"]


def emit(metric: str, value, unit: str, target=None) -> None:
    print(json.dumps({"bench": "cslide", "metric": metric, "value": value, "target": target, "unit": unit}), flush=True)


# --- on the host: run in the guest ------------------------------------------------------------

def find_kernel() -> str | None:
    override = os.environ.get("ETMEM_VM_KERNEL")
    if override:
        return override
    shared = ROOT.parent / "shared" / "testvm" / "bzImage-6.12.117-etmem"
    return str(shared) if shared.is_file() else None


def run_in_guest() -> int:
    vng, kernel_image = shutil.which("vng"), find_kernel()
    if not vng or not shutil.which("qemu-system-x86_64") or not kernel_image:
        print("bench_cslide: this machine has one NUMA node and no test guest to boot "
              "(needs vng, qemu-system-x86_64 and the test kernel, see shared/testvm/README.md)", file=sys.stderr)
        return 0
    script = f"cd {shlex.quote(str(ROOT))} && PYTHONDONTWRITEBYTECODE=1 {shlex.quote(sys.executable)} benchmarks/bench_cslide.py --in-guest"
    cmd = [vng, "--run", kernel_image, "--disable-kvm", "--user", "root", *VM_SHAPE, "--cwd", str(ROOT), "--exec", script]
    print(f"bench_cslide: one NUMA node here; running in the test guest ({kernel_image})", file=sys.stderr)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith('{"bench"') or line.startswith("bench_cslide"):
            print(line.rstrip(), flush=True)
    proc.wait()
    return 0


# --- in the guest ---------------------------------------------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)


def raw_move(pid: int, addrs: np.ndarray, node: int) -> tuple[float, int]:
    """Bare move_pages(2) batches of BATCH pages; (seconds, pages now on node)."""
    pages = np.ascontiguousarray(addrs, dtype=np.uint64)
    nodes = np.full(BATCH, node, dtype=np.int32)
    status = np.empty(len(pages), dtype=np.int32)
    t0 = time.perf_counter()
    for first in range(0, len(pages), BATCH):
        chunk = pages[first:first + BATCH]
        out = status[first:first + BATCH]
        libc.syscall(SYS_move_pages, pid, ctypes.c_ulong(len(chunk)), ctypes.c_void_p(chunk.ctypes.data),
                     ctypes.c_void_p(nodes.ctypes.data), ctypes.c_void_p(out.ctypes.data), MPOL_MF_MOVE)
    return time.perf_counter() - t0, int((status == node).sum())


def engine_move(w, etmem) -> tuple[float, float, int]:
    """One cslide round demoting the cold region; (move seconds, after-scan seconds, bytes moved)."""
    project = etmem.Project(name="bench", loop=1, interval=1, sleep=1, scanner="page_idle")
    engine = project.add_engine("cslide", node_pair="0,1", hot_threshold=1,
                                node_mig_quota=1 << 20, node_hot_reserve=1 << 20)
    task = engine.add_task("t", "pid", w.pid, anon_only="yes")
    task.run_round()
    if task.stats.last_error:
        raise SystemExit(f"bench_cslide: the engine round failed: {task.stats.last_error}")
    r = engine.strategy.last_round
    engine.strategy.close()
    return r["move_seconds"], r["query_seconds"] + r["plan_seconds"] + r["move_seconds"], r["moved_bytes"]


def in_guest() -> int:
    import etmem
    from etmem.actions import move_pages, page_nodes
    from etmem.process import ProcessHandle
    from etmem.scan import Scanner
    from etmem.workload import Workload

    if len(etmem.procfs.memory_nodes()) < 2:
        print("bench_cslide: the guest has one NUMA node", file=sys.stderr)
        return 0
    if "--in-guest" in sys.argv and os.path.exists("/proc/sys/kernel/numa_balancing"):
        # the throwaway guest only: the kernel's own balancing must not move pages meanwhile
        with open("/proc/sys/kernel/numa_balancing", "w") as f:
            f.write("0")
    engine_rates, after_scan_rates, raw_rates = [], [], []
    with Workload(total_mb=COLD_MB + 4, hot_mb=4, pause=0.01) as w:
        cold = np.arange(*w.cold, PAGE, dtype=np.uint64)
        with ProcessHandle.open(w.pid) as h:
            for rep in range(REPS):
                for which in (("engine", "raw") if rep % 2 == 0 else ("raw", "engine")):
                    move_pages(h, cold, 0)      # untimed: start every measurement on node 0
                    if which == "engine":
                        seconds, after_scan, moved = engine_move(w, etmem)
                        engine_rates.append(moved / MiB / seconds)
                        after_scan_rates.append(moved / MiB / after_scan)
                    else:
                        Scanner(h, source="page_idle", anon_only=True, huge="keep").scan(loop=1, sleep=1)
                        seconds, on_node = raw_move(w.pid, cold, 1)
                        raw_rates.append(on_node * PAGE / MiB / seconds)
                    on_1 = float((page_nodes(h, cold) == 1).mean())
                    if on_1 < 0.99:
                        print(f"bench_cslide: after the {which} move only {on_1:.1%} of the region is on node 1",
                              file=sys.stderr)
        intact = w.verify()
    engine_best, raw_best, after_best = max(engine_rates), max(raw_rates), max(after_scan_rates)
    emit("engine_move_MBps", round(engine_best, 1), "MB/s")
    emit("raw_move_pages_MBps", round(raw_best, 1), "MB/s")
    emit("engine_round_after_scan_MBps", round(after_best, 1), "MB/s")
    emit("engine_vs_raw_move_pages", round(engine_best / raw_best, 3), "ratio", ">= 0.9")
    emit("engine_round_after_scan_vs_raw_move_pages", round(after_best / raw_best, 3), "ratio")
    if not intact:
        print("bench_cslide: the workload's data did not survive the moves", file=sys.stderr)
    return 0


def main() -> int:
    if "--in-guest" in sys.argv:
        return in_guest()
    sys.path.insert(0, str(ROOT / "src"))
    from etmem import procfs

    if len(procfs.memory_nodes()) >= 2 and os.geteuid() == 0:
        return in_guest()
    return run_in_guest()


if __name__ == "__main__":
    sys.exit(main())
