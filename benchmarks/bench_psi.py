"""Benchmark: what the psi engine saves a cgroup, and what that costs its workload.

Runs in the project's test guest (virtme-ng + QEMU, as tests/vm_harness.py boots it): the
engine creates and reclaims cgroups, and this machine's cgroups are not ours to touch. In
the guest: a zram swap device, a cgroup of its own, and in it a workload whose hot pages
lie scattered through one mapping (`layout="scattered"`), its hot set touched in a loop
`--pause` s apart. (Under TCG a loop without pause slows the kernel's reclaim some
30-fold: every page unmapped flushes the busy vCPU's software TLB.) Its throughput is
measured unmanaged, then a psi task (upstream's defaults but `interval`) manages the
cgroup for `--duration` seconds, sampled every second, and the throughput is measured
again under management at the end (best of 3 windows each). Figures, one JSON line each:
memory saved, throughput managed / unmanaged, pressure and refaults at steady state, the
time to steady state (memory.current within 5% of the saved amount of its final level
from then on), and where the hot and cold pages are (pagemap). Exits 0 even when a
figure is poor.

    python benchmarks/bench_psi.py [--total-mb 256] [--hot-mb 32] [--pause 0.01] [--interval 2] [--duration 180]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
PAGE = 4096
CGROUP = "etmem-bench-psi"
WINDOW = 6.0   # seconds per throughput window
SETTLE = 10.0  # seconds after the workload starts before the first window (the guest is busy with its start)
WINDOWS = 3    # windows each side; the best counts (on a shared machine interference only slows a run)


def emit(metric: str, value, unit: str, out=None) -> None:
    line = json.dumps({"bench": "psi", "metric": metric, "value": value, "unit": unit})
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


# --- on the host: boot the guest and run there ------------------------------------------------

def run_in_guest(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from vm_harness import VmUnavailable, find_kernel

    try:
        kernel_image = find_kernel(ROOT)
    except VmUnavailable as exc:
        print(f"bench_psi: {exc}", file=sys.stderr)
        return 0
    vng = shutil.which("vng")
    if not vng or not shutil.which("qemu-system-x86_64"):
        print("bench_psi: needs vng (pip install virtme-ng) and qemu-system-x86_64 to boot the test guest", file=sys.stderr)
        return 0
    out_dir = tempfile.mkdtemp(prefix="etmem-bench-psi-")
    results = os.path.join(out_dir, "results.jsonl")
    script = (f"cd {shlex.quote(str(ROOT))} && PYTHONDONTWRITEBYTECODE=1 {shlex.quote(sys.executable)} "
              f"benchmarks/bench_psi.py --in-guest --out {shlex.quote(results)} {shlex.join(argv)}")
    cmd = [vng, "--run", str(kernel_image), "--disable-kvm", "--user", "root", "--memory", "2G", "--cpus", "2",
           "--force-9p", "--append", "rootflags=version=9p2000.L,trans=virtio,access=any,msize=524288,cache=loose",
           f"--rwdir={out_dir}", "--cwd", str(ROOT), "--exec", script]
    print(f"bench_psi: running in the test guest ({kernel_image}); results in {results}", file=sys.stderr)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if os.path.exists(results):
        with open(results) as f:
            sys.stdout.write(f.read())
    else:
        print(f"bench_psi: the guest wrote no results (vng exit status {proc.returncode}):\n{proc.stdout[-2000:]}",
              file=sys.stderr)
    return 0


# --- in the guest ----------------------------------------------------------------------------

def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def started_in(cgroup_dir: str, mount: str, **workload):
    """A workload charged to cgroup_dir from its first page (this process joins it for the fork)."""
    from etmem.workload import Workload

    with open("/proc/self/cgroup") as f:
        home = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    _write(f"{cgroup_dir}/cgroup.procs", str(os.getpid()))
    try:
        return Workload(**workload).start()
    finally:
        _write(f"{mount}{home}/cgroup.procs", str(os.getpid()))


def ops_rate(w, seconds: float) -> float:
    w.reset_rate()
    time.sleep(seconds)
    return w.stats()["ops_per_s"]


def steady_time(samples: list[dict], start: int) -> tuple[float | None, int]:
    """(seconds from the start of management to steady state, the steady level in bytes)."""
    tail = samples[-10:]
    final = sum(s["current"] for s in tail) // len(tail)
    band = max(MiB, (start - final) // 20)
    for i, sample in enumerate(samples):
        if all(abs(s["current"] - final) <= band for s in samples[i:]):
            return sample["t"], final
    return None, final


def in_guest(args: argparse.Namespace) -> int:
    from etmem import Manager, Project, kernel, zram
    from etmem.cgroup import system_hierarchy

    out = open(args.out, "w") if args.out else None
    if "cgroup2" not in kernel.cgroup_mounts():
        os.makedirs("/sys/fs/cgroup", exist_ok=True)
        subprocess.run(["mount", "-t", "cgroup2", "none", "/sys/fs/cgroup"], check=True)
    for need in ("cgroup2_memory", "memory_reclaim", "psi"):
        if not {"cgroup2_memory": kernel.has_cgroup2_memory, "memory_reclaim": kernel.has_memory_reclaim,
                "psi": kernel.has_psi}[need]():
            print(f"bench_psi: {kernel.missing(need)}", file=sys.stderr)
            return 0
    mount = kernel.cgroup_mounts()["cgroup2"]
    _write(f"{mount}/cgroup.subtree_control", "+memory")
    directory = f"{mount}/{CGROUP}"
    os.makedirs(directory, exist_ok=True)
    device = zram.ZramSwap(args.total_mb * 2 * MiB, priority=32000).create()
    manager = Manager()
    w = None
    try:
        w = started_in(directory, mount, total_mb=args.total_mb, hot_mb=args.hot_mb, pause=args.pause, layout="scattered")
        cg = system_hierarchy().cgroup(CGROUP)
        time.sleep(SETTLE)
        unmanaged = max(ops_rate(w, WINDOW) for _ in range(WINDOWS))
        start = cg.current()
        project = Project(name="bench", scan_type="psi", interval=args.interval)
        task = project.add_engine("psi").add_task("w", None, None, cg_dir=CGROUP)
        manager.add(project)
        began = time.monotonic()
        refaults0 = cg.stat().refaults
        manager.start("bench")
        samples = []
        while time.monotonic() - began < args.duration:
            time.sleep(1.0)
            p = cg.pressure()
            samples.append({"t": round(time.monotonic() - began, 1), "current": cg.current(),
                            "avg10": p.some_avg10, "refaults": cg.stat().refaults - refaults0})
        managed = max(ops_rate(w, WINDOW) for _ in range(WINDOWS))
        manager.stop("bench")
        placement = w.placement()
        steady_at, final = steady_time(samples, start)
        steady = [s for s in samples if steady_at is not None and s["t"] >= steady_at] or samples[-10:]
        seconds = max(1.0, steady[-1]["t"] - steady[0]["t"])
        cgroups = task.stats.extra.get("cgroups", {})
        rate = next(iter(cgroups.values()), {}).get("rate")
        emit("unmanaged_current", round(start / MiB, 1), "MiB", out)
        emit("memory_saved", round((start - final) / MiB, 1), "MiB", out)
        emit("memory_saved_share", round((start - final) / start, 3), "ratio", out)
        emit("throughput_managed_vs_unmanaged", round(managed / unmanaged, 3), "ratio", out)
        emit("time_to_steady_state", steady_at, "s", out)
        emit("steady_pressure_avg10", round(sum(s["avg10"] for s in steady) / len(steady), 2), "percent", out)
        emit("steady_refaults", round((steady[-1]["refaults"] - steady[0]["refaults"]) / seconds, 1), "pages/s", out)
        emit("hot_set_resident", round(placement["hot_resident"], 3), "ratio", out)
        emit("cold_set_out", round(placement["recall"], 3), "ratio", out)
        emit("rounds", task.stats.rounds, "rounds", out)
        emit("final_rate", rate, "share", out)
        emit("reclaimed_total", round(task.stats.extra.get("reclaimed_bytes", 0) / MiB, 1), "MiB", out)
        if not w.verify():
            print("bench_psi: the workload's data did not survive", file=sys.stderr)
    finally:
        manager.close()
        if w is not None:
            w.stop()
        device.remove()
        os.rmdir(directory)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mb", type=int, default=256)
    parser.add_argument("--hot-mb", type=int, default=32)
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between the workload's passes over its hot set")
    parser.add_argument("--interval", type=int, default=2, help="seconds between psi rounds")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of management")
    parser.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.in_guest:
        return in_guest(args)
    return run_in_guest(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
