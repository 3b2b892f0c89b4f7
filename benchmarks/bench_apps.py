"""Benchmark: what etmem and its peers give back from a real service (Debian's redis-server), and what the service pays.

A data set of `--keys` keys of 1000 bytes, named as `redis-benchmark -r` names them
(`key:%012d`) and inserted in a shuffled order (fixed seed), so the hot range that
`redis-benchmark -t get -r <hot>` reads (the keys below `--hot-percent` of N) lies spread
through the heap. It is filled once through `redis-cli --pipe` and saved as an RDB; every
contender then gets a fresh server loaded from that RDB (unix socket, no saving, no AOF),
one at a time, `unmanaged` first. Each managed contender runs `--windows` windows of a GET
load (`redis-benchmark -t get -r <hot> -d 1000 -c <clients> --csv`; each window's request
count is `--window` s at the GET/s the unmanaged server last showed, so windows keep their
length as the machine's speed changes; a window still running after `--window-timeout` s
is cut short and its GET/s counted by the server), unmanaged `--base-windows` of them; after each window the server's
VmRSS and major faults, the manager's CPU seconds, the system's pswpin and the load
average are read and a progress line goes to stderr.

Figures, one JSON line each ({"bench": "apps", "kernel", "contender", "metric", "value",
"unit", "target"}; exits 0 when a target is missed):

- rss_mib, rss_given_back_mib (unmanaged's VmRSS at its last window less the contender's
  at its last: unmanaged's is flat), rss_given_back_percent_of_data (of N x 1000 bytes),
  rss_reduced_share (of unmanaged's VmRSS);
- get_rps_vs_reference and get_p99_vs_reference (with `--paired`, the default where
  MemAvailable holds 4x the data set, so not in a small guest; `--no-paired`): a second,
  unmanaged server with the same data runs beside each managed one, and each managed window
  is followed by one of it, so both see the same moment of a shared machine's load; the mean
  of the per-window GET/s ratios and the median of the p99 ratios, over the windows from
  steady state on (the last two without one); _all_windows over every window;
- get_rps_ratio and get_p99_ratio: the same windows against all of unmanaged's windows of
  this run (mean GET/s, median of the windows' p99), and _all_windows variants; the
  targets are on the reference ratios when there are any, as the load drifts between runs;
- swap_ins: the server's own major faults over its managed windows (every swap-in from
  zram is one), and swap_ins_system_pswpin (/proc/vmstat, the whole machine's);
- manager_cpu_seconds (the manager process's utime+stime: etmemd's for etmem, and the
  kdamonds' for a DAMON-based one, given apart as each window's kdamond_cpu_s), and per GiB
  of data set;
- seconds_to_steady_state: the end of the first window after which VmRSS stays within 2%
  of its value there for two windows or more, to the end of the run (null: not reached);
- get_hit_ratio (keyspace hits over lookups: 1.0 proves the load reads the keys we wrote);
- windows_cut_short (their p99 is unknown and left out of the p99 figures).

The run's settings, each contender's config and each window's readings are JSON lines of
their own ("run", "config", "window"). A zram swap device of the benchmark's own holds what is swapped (priority
32700: above the 32000 that tests and other sessions give theirs, which would otherwise
take our pages first and, on their swapoff, bring them back; below bench_refault's 32767).
Everything started here (servers, etmemd, the zram device, a cgroup, the temp dir) is
stopped or removed on exit, on Ctrl-C and on SIGTERM; only pids started here are signalled.

Contenders (`--contenders a,b,c`): this file's `unmanaged`, plus those in
benchmarks/app_contenders.py's `CONTENDERS`: etmem's (a real etmemd process with a config
file, driven by the real `etmem` client; `slide-refault` and `slide-smaps` are what a host
without access bits can run) and the peers'. The contract a contender keeps:

    class Contender:
        name: str                        # "slide-refault", "psi", "damo", "memory.high", ...
        etmem: bool                      # one of etmem's own (False: a peer, compared against)
        needs_cgroup: bool               # its server must run in a cgroup v2 of its own
        def __init__(self, options)      # the parsed command line (argparse.Namespace)
        def unavailable(self, kernel) -> str | None   # why it cannot run here, or None
        def start(self, server) -> None  # server: .pid, .cgroup (path or None), .data_bytes, .socket
        def stop(self) -> None           # undoes everything it set up; idempotent
        def cpu_seconds(self) -> float   # the manager's CPU seconds so far (0.0 for unmanaged)
        def kdamond_cpu_seconds(self) -> float | None   # the kdamonds' part of it (None: none)
        def config(self) -> str | None   # what it was set up with, for the output

`kernel` is a `Kernel` (label "host-6.18" or "guest-" and the full release, in_guest,
cgroup2_memory). A contender that gives a reason prints {"contender": ..., "skipped":
reason} and the run goes on. With `needs_cgroup`, or for every contender with
`--in-cgroup`, the server starts inside /sys/fs/cgroup/etmem-bench-<pid>-<contender> when
/sys/fs/cgroup is cgroup2 with the memory controller (the guest); elsewhere server.cgroup
is None. `--in-guest` only labels the kernel "guest-..."; booting the guest is
benchmarks/app_guest.py's. `--out PATH` also writes the JSON lines to PATH.

Needs root (the zram device), redis-server, redis-benchmark and redis-cli.

    python benchmarks/bench_apps.py [--contenders unmanaged,slide-refault,slide-smaps]
        [--keys 1000000] [--hot-percent 10] [--window 20] [--windows 30] [--base-windows 8]
        [--clients 50] [--no-paired] [--in-cgroup] [--in-guest] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etmem import kernel as kernel_features
from etmem import zram
from etmem.errors import ZramUnavailable

MiB = 1 << 20
GiB = 1 << 30
VALUE_BYTES = 1000
ZRAM_PRIORITY = 32700
CGROUP_ROOT = "/sys/fs/cgroup"
SEED = 16
BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:      # app_contenders and app_guest sit beside this file
    sys.path.insert(0, str(BENCH_DIR))
import app_contenders  # noqa: E402
from app_contenders import vm_rss_bytes  # noqa: E402


# --- output ---------------------------------------------------------------------------------

class Output:
    """JSON lines to stdout (and to --out when given)."""

    def __init__(self, kernel_label: str, path: str | None):
        self.kernel = kernel_label
        self.file = open(path, "a") if path else None

    def line(self, obj: dict) -> None:
        text = json.dumps({"bench": "apps", "kernel": self.kernel, **obj})
        print(text, flush=True)
        if self.file:
            self.file.write(text + "\n")
            self.file.flush()

    def figure(self, contender: str, metric: str, value, unit: str, target: str | None = None) -> None:
        self.line({"contender": contender, "metric": metric, "value": value, "unit": unit, "target": target})

    def close(self) -> None:
        if self.file:
            self.file.close()


def progress(text: str) -> None:
    print(f"bench_apps: {text}", file=sys.stderr, flush=True)


# --- the kernel, the server -----------------------------------------------------------------

@dataclass
class Kernel:
    label: str            # "host-6.18", "guest-6.12.117+deb12-amd64": the two guest kernels apart
    release: str
    in_guest: bool
    cgroup2_memory: bool  # /sys/fs/cgroup is cgroup2 with the memory controller


def probe_kernel(in_guest: bool) -> Kernel:
    release = platform.release()
    short = ".".join(release.split(".")[:2])
    mounts = kernel_features.cgroup_mounts()
    return Kernel(label=f"guest-{release}" if in_guest else f"host-{short}", release=release, in_guest=in_guest,
                  cgroup2_memory=mounts.get("cgroup2") == CGROUP_ROOT and kernel_features.has_cgroup2_memory())


def proc_stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields from field 3 (state) on: the comm may hold spaces."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def major_faults(pid: int) -> int:
    return int(proc_stat_fields(pid)[9])                    # majflt (field 12)


def system_pswpin() -> int:
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith("pswpin "):
                return int(line.split()[1])
    return 0


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process we started (by its own pid), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServer:
    """One redis-server of ours on a unix socket in `workdir`, optionally inside a cgroup."""

    def __init__(self, workdir: Path, tag: str, data_bytes: int, rdb: Path | None = None, cgroup: str | None = None):
        self.workdir = workdir
        self.socket = str(workdir / f"redis-{tag}.sock")
        self.log_path = workdir / f"redis-{tag}.log"
        self.data_bytes = data_bytes
        self.rdb = rdb
        self.cgroup = cgroup
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 600.0) -> "RedisServer":
        rdb_dir, rdb_name = (self.rdb.parent, self.rdb.name) if self.rdb else (self.workdir, "fill.rdb")
        argv = ["redis-server", "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", str(rdb_dir),
                "--dbfilename", rdb_name, "--daemonize", "no", "--logfile", str(self.log_path)]
        cgroup = self.cgroup

        def enter_cgroup() -> None:   # in the child before exec, so the cgroup is charged for every page
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=enter_cgroup if cgroup else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self.proc.returncode}: {self.log_tail()}")
            if os.path.exists(self.socket):
                info = self.cli("INFO", "persistence", check=False).splitlines()
                if "loading:0" in (line.strip() for line in info):   # not async_loading:0
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"redis-server did not finish loading within {timeout:.0f} s: {self.log_tail()}")

    def cli(self, *args: str, check: bool = True, stdin=None) -> str:
        result = subprocess.run(["redis-cli", "-s", self.socket, *args], stdin=stdin, capture_output=True,
                                text=True, timeout=600)
        if check and (result.returncode != 0 or result.stdout.startswith("ERR")):
            raise RuntimeError(f"redis-cli {' '.join(args)}: {result.stdout.strip()} {result.stderr.strip()}")
        return result.stdout

    def info(self, section: str) -> dict[str, str]:
        return dict(line.split(":", 1) for line in self.cli("INFO", section).splitlines() if ":" in line)

    def log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


# --- the data set ---------------------------------------------------------------------------

def resp_records(ids: np.ndarray, rng: np.random.Generator) -> bytes:
    """SET commands in RESP for keys key:%012d of `ids`, as one byte string.

    Values are text-like: 125 tokens of 8 bytes drawn from a vocabulary of 256, so zram
    compresses them as it would real text rather than as one repeated byte."""
    head = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:"
    mid = b"\r\n$%d\r\n" % VALUE_BYTES
    width = len(head) + 12 + len(mid) + VALUE_BYTES + 2
    out = np.empty((len(ids), width), dtype=np.uint8)
    out[:, :len(head)] = np.frombuffer(head, np.uint8)
    digits = (ids[:, None] // (10 ** np.arange(11, -1, -1, dtype=np.int64))) % 10 + ord("0")
    out[:, len(head):len(head) + 12] = digits
    at = len(head) + 12
    out[:, at:at + len(mid)] = np.frombuffer(mid, np.uint8)
    at += len(mid)
    tokens = rng.integers(ord("a"), ord("z") + 1, size=(256, 8), dtype=np.uint8)
    out[:, at:at + VALUE_BYTES] = tokens[rng.integers(0, 256, size=(len(ids), VALUE_BYTES // 8))].reshape(len(ids), -1)
    out[:, -2:] = np.frombuffer(b"\r\n", np.uint8)
    return out.tobytes()


def build_rdb(workdir: Path, keys: int) -> Path:
    """Fill a server with the shuffled data set through redis-cli --pipe and SAVE it as an RDB."""
    rng = np.random.default_rng(SEED)
    order = rng.permutation(keys)
    server = RedisServer(workdir, "fill", keys * VALUE_BYTES).start()
    try:
        pipe = subprocess.Popen(["redis-cli", "-s", server.socket, "--pipe"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for chunk in np.array_split(order, max(1, keys // 50000)):
                pipe.stdin.write(resp_records(chunk, rng))
            pipe.stdin.close()
        except BrokenPipeError:
            pass
        report = pipe.stdout.read().decode(errors="replace")
        if pipe.wait() != 0 or "errors: 0" not in report:
            raise RuntimeError(f"redis-cli --pipe failed: {report.strip()}")
        count = int(server.cli("DBSIZE").strip())
        if count != keys:
            raise RuntimeError(f"the fill server holds {count} keys, not {keys}")
        server.cli("SAVE")
    finally:
        server.stop()
    return workdir / "fill.rdb"


def get_calls(server: RedisServer) -> int:
    """GETs the server has answered since it started (INFO commandstats' cmdstat_get calls)."""
    fields = server.info("commandstats").get("cmdstat_get", "")
    return int(dict(part.split("=", 1) for part in fields.split(",") if "=" in part).get("calls", 0))


def run_load(server: RedisServer, hot: int, requests: int, clients: int, timeout: float = 3600.0) -> dict:
    """One GET window; redis-benchmark 7's --csv gives rps, avg/min/p50/p95/p99/max latency (ms).

    A window still running after `timeout` s (a server stalled in its reclaim) is cut short:
    its GET/s are then the server's own count of GETs answered over the window, its
    latencies None, and "cut_short" is set."""
    before = get_calls(server)
    began = time.monotonic()
    proc = subprocess.Popen(["redis-benchmark", "-s", server.socket, "-t", "get", "-r", str(hot), "-d", str(VALUE_BYTES),
                             "-n", str(requests), "-c", str(clients), "--csv", "--precision", "3"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        seconds = time.monotonic() - began
        return {"rps": (get_calls(server) - before) / seconds, "p99_latency_ms": None, "seconds": seconds,
                "cut_short": True}
    seconds = time.monotonic() - began
    rows = [line.replace('"', "").split(",") for line in stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or len(rows) < 2 or rows[0][:2] != ["test", "rps"]:
        raise RuntimeError(f"redis-benchmark gave no CSV (status {proc.returncode}): "
                           f"{stdout.strip()[-300:]} {stderr.strip()[-300:]}")
    figures = {name: float(value) for name, value in zip(rows[0][1:], rows[1][1:])}
    figures["seconds"] = seconds
    return figures


def zswap_enabled() -> bool | None:
    """Whether zswap sits in front of the swap devices (None: no zswap in this kernel)."""
    try:
        return Path("/sys/module/zswap/parameters/enabled").read_text().strip() in ("Y", "1")
    except OSError:
        return None


def window_requests(rps: float, options) -> int:
    """The request count for a window of about options.window s at `rps`."""
    return max(options.clients * 10, int(rps * options.window))


# --- contenders -----------------------------------------------------------------------------

class Contender:
    """What the benchmark drives: see the module docstring for the contract."""

    name = "contender"
    etmem = False
    needs_cgroup = False

    def __init__(self, options: argparse.Namespace):
        self.options = options

    def unavailable(self, kernel: Kernel) -> str | None:
        return None

    def start(self, server) -> None:
        pass

    def stop(self) -> None:
        pass

    def cpu_seconds(self) -> float:
        return 0.0

    def kdamond_cpu_seconds(self) -> float | None:
        return None

    def config(self) -> str | None:
        return None


class Unmanaged(Contender):
    name = "unmanaged"


HERE = [Unmanaged]   # etmem's and the peers' are in app_contenders.py


def known_contenders() -> dict[str, type]:
    """unmanaged and benchmarks/app_contenders.py's contenders (etmem's and the peers'), by name."""
    return {cls.name: cls for cls in [*HERE, *app_contenders.CONTENDERS]}


# --- one contender's run --------------------------------------------------------------------

def steady_index(rss: list[int], tolerance: float = 0.02) -> int | None:
    """The first window after which VmRSS stays within 2% of its value there, for at least two
    more windows and to the end of the run (a slow, steady decline is not a steady state)."""
    for i in range(len(rss) - 2):
        if all(abs(later - rss[i]) < tolerance * rss[i] for later in rss[i + 1:]):
            return i
    return None


def ms(latency: float | None) -> str:
    return "- (window cut short)" if latency is None else f"{latency:.3f} ms"


def measure(out: Output, contender, server: RedisServer, device: zram.ZramSwap, options, hot: int, pace: dict,
            reference: RedisServer | None = None) -> dict:
    """Start the contender on the server, run the windows, and return what they saw.

    With a reference (an unmanaged server with the same data), each window of the managed
    server is followed by one of the reference, so the two see the same moment of the
    machine's load. Each window's request count is pace["rps"] x --window, and pace follows
    the unmanaged server's GET/s (the reference's, or unmanaged's own), so a window lasts
    about --window s on an unmanaged server whatever the machine's speed at the time."""
    windows = []
    faults0, pswpin0 = major_faults(server.pid), system_pswpin()
    began = time.monotonic()
    contender.start(server)
    count = options.base_windows if contender.name == "unmanaged" else options.windows
    for k in range(count):
        requests = window_requests(pace["rps"], options)
        load = run_load(server, hot, requests, options.clients, options.window_timeout)
        if contender.name == "unmanaged" and not load.get("cut_short"):
            pace["rps"] = load["rps"]
        window = dict(load, rss=vm_rss_bytes(server.pid), faults=major_faults(server.pid) - faults0,
                      pswpin=system_pswpin() - pswpin0, cpu=contender.cpu_seconds(),
                      kdamond_cpu=contender.kdamond_cpu_seconds(), t=time.monotonic() - began,
                      load=os.getloadavg()[0])
        paired = {}
        if reference is not None:
            ref = run_load(reference, hot, requests, options.clients, options.window_timeout)
            if not ref.get("cut_short"):
                pace["rps"] = ref["rps"]
            window.update(ref_rps=ref["rps"], ref_p99=ref["p99_latency_ms"])
            paired = {"reference_rps": ref["rps"], "reference_p99_ms": ref["p99_latency_ms"]}
        windows.append(window)
        out.line({"contender": contender.name, "window": k + 1, "t_s": round(window["t"], 1),
                  "requests": requests, "seconds": round(load["seconds"], 1), "cut_short": bool(load.get("cut_short")),
                  "rss_mib": round(window["rss"] / MiB, 1), "get_rps": load["rps"], "p99_ms": load["p99_latency_ms"],
                  **paired, "swap_ins": window["faults"], "manager_cpu_s": round(window["cpu"], 2),
                  **({} if window["kdamond_cpu"] is None else {"kdamond_cpu_s": round(window["kdamond_cpu"], 2)}),
                  "load": window["load"]})
        progress(f"{contender.name} window {k + 1}/{count} at {window['t']:.0f} s: "
                 f"VmRSS {window['rss'] / MiB:.0f} MiB, {load['rps']:.0f} GET/s in {load['seconds']:.0f} s, "
                 f"p99 {ms(load['p99_latency_ms'])}, "
                 f"swap-ins {window['faults']}, manager CPU {window['cpu']:.1f} s, load {window['load']:.1f}"
                 + (f"; reference {window['ref_rps']:.0f} GET/s, p99 {ms(window['ref_p99'])}" if paired else ""))
    cpu = contender.cpu_seconds()
    stats = server.info("stats")
    hits, misses = int(stats.get("keyspace_hits", 0)), int(stats.get("keyspace_misses", 0))
    swapped = device.stats()     # before the server goes: its pages leave the device with it
    contender.stop()
    return {"windows": windows, "cpu": cpu, "hit_ratio": hits / max(1, hits + misses), "zram": swapped}


def median_or_none(values) -> float | None:
    """The median of the values that are not None (a window cut short has no latencies), or None."""
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def p99_ratios(windows: list[dict]):
    return (x["p99_latency_ms"] / x["ref_p99"] for x in windows if x["p99_latency_ms"] is not None and x["ref_p99"])


def scaled(value: float | None, base: float) -> float | None:
    return None if value is None else round(value / base, 3)


def report(out: Output, name: str, etmem: bool, seen: dict, base: dict | None, data_bytes: int) -> None:
    w = seen["windows"]
    rss = [x["rss"] for x in w]
    steady = steady_index(rss)
    since = steady if steady is not None else max(0, len(w) - 2)
    out.figure(name, "rss_mib", round(rss[-1] / MiB, 1), "MiB")
    out.figure(name, "get_rps", round(statistics.mean(x["rps"] for x in w[since:])), "req/s")
    out.figure(name, "get_p99_ms", median_or_none(x["p99_latency_ms"] for x in w[since:]), "ms")
    out.figure(name, "windows_cut_short", sum(1 for x in w if x.get("cut_short")), "windows")
    out.figure(name, "seconds_to_steady_state", None if steady is None else round(w[steady]["t"], 1), "s")
    out.figure(name, "swap_ins", w[-1]["faults"], "pages (server's major faults)")
    out.figure(name, "swap_ins_system_pswpin", w[-1]["pswpin"], "pages (whole machine)")
    out.figure(name, "manager_cpu_seconds", round(seen["cpu"], 2), "s")
    out.figure(name, "manager_cpu_seconds_per_gib", round(seen["cpu"] / (data_bytes / GiB), 2), "s/GiB")
    out.figure(name, "get_hit_ratio", round(seen["hit_ratio"], 4), "ratio")
    out.figure(name, "load_average", round(statistics.mean(x["load"] for x in w), 1), "1-min load, mean over windows")
    if seen["zram"]["orig_data_size"] > MiB:   # the device is the machine's top swap: others' few pages land in it too
        out.figure(name, "zram_stored_mib", round(seen["zram"]["orig_data_size"] / MiB, 1), "MiB")
        out.figure(name, "zram_compression_ratio",
                   round(seen["zram"]["orig_data_size"] / max(1, seen["zram"]["mem_used_total"]), 2), "ratio")
    if base is None or base is seen:
        return
    # unmanaged's VmRSS and load are flat from its first window on, so its windows (fewer:
    # --base-windows) all count as its steady state
    b = base["windows"]
    given = b[-1]["rss"] - w[-1]["rss"]
    out.figure(name, "rss_given_back_mib", round(given / MiB, 1), "MiB")
    out.figure(name, "rss_given_back_percent_of_data", round(100 * given / data_bytes, 1), "%")
    out.figure(name, "rss_reduced_share", round(given / b[-1]["rss"], 3), "ratio", ">= 0.5" if etmem else None)
    paired = "ref_rps" in w[0]
    if paired:   # the primary ratios: each window against the reference's window right after it
        out.figure(name, "get_rps_vs_reference", round(statistics.mean(x["rps"] / x["ref_rps"] for x in w[since:]), 3),
                   "ratio", ">= 0.95" if etmem else None)
        out.figure(name, "get_p99_vs_reference", median_or_none(p99_ratios(w[since:])), "ratio", "<= 1.2" if etmem else None)
        out.figure(name, "get_rps_vs_reference_all_windows", round(statistics.mean(x["rps"] / x["ref_rps"] for x in w), 3), "ratio")
        out.figure(name, "get_p99_vs_reference_all_windows", median_or_none(p99_ratios(w)), "ratio")
    target = etmem and not paired
    base_rps = statistics.mean(x["rps"] for x in b)
    base_p99 = median_or_none(x["p99_latency_ms"] for x in b) or float("nan")
    out.figure(name, "get_rps_ratio", round(statistics.mean(x["rps"] for x in w[since:]) / base_rps, 3), "ratio",
               ">= 0.95" if target else None)
    out.figure(name, "get_p99_ratio", scaled(median_or_none(x["p99_latency_ms"] for x in w[since:]), base_p99),
               "ratio", "<= 1.2" if target else None)
    out.figure(name, "get_rps_ratio_all_windows", round(statistics.mean(x["rps"] for x in w) / base_rps, 3), "ratio")
    out.figure(name, "get_p99_ratio_all_windows", scaled(median_or_none(x["p99_latency_ms"] for x in w), base_p99), "ratio")


# --- the run --------------------------------------------------------------------------------

def make_cgroup(stack: ExitStack, name: str) -> str:
    path = os.path.join(CGROUP_ROOT, f"etmem-bench-{os.getpid()}-{name}")
    control = os.path.join(CGROUP_ROOT, "cgroup.subtree_control")
    with open(control) as f:
        enabled = f.read().split()
    if "memory" not in enabled:      # only on a machine whose cgroup2 root is ours (the guest)
        with open(control, "w") as f:
            f.write("+memory")
    os.mkdir(path)

    def remove() -> None:
        for _ in range(50):     # a just-stopped server may take a moment to leave it
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        progress(f"could not remove the cgroup {path}")
    stack.callback(remove)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contenders", default="unmanaged,slide-refault,slide-smaps",
                   help="comma-separated names; unmanaged always runs first (the ratios' base)")
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--hot-percent", type=float, default=10.0)
    p.add_argument("--window", type=float, default=20.0,
                   help="seconds per load window on an unmanaged server (its request count follows that server's GET/s)")
    p.add_argument("--window-timeout", type=float, default=None,
                   help="seconds after which a window is cut short (default 3x --window): GET/s from the server's count, no p99")
    p.add_argument("--windows", type=int, default=30, help="windows per managed contender")
    p.add_argument("--base-windows", type=int, default=8, help="windows of unmanaged (the ratios' base)")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--paired", action=argparse.BooleanOptionalAction, default=None,
                   help="follow each managed window by one of an unmanaged reference server with the same data "
                        "(default: when MemAvailable holds 4x the data set, for the second server)")
    p.add_argument("--loop", type=int, default=2, help="slide: passes per round")
    p.add_argument("--sleep", type=int, default=1, help="slide: seconds between passes")
    p.add_argument("--interval", type=int, default=5, help="slide: seconds between rounds")
    p.add_argument("--T", type=int, default=1, help="slide: pages used fewer than T times in a round are cold")
    p.add_argument("--cold-age", type=int, default=app_contenders.COLD_AGE_S,
                   help="damon, damo, damon_reclaim: seconds without an access before a region is paged out "
                        "(slide's clock is --loop x --sleep)")
    p.add_argument("--refault-budget", type=float, default=5.0, help="slide-refault: percent of resident per minute")
    p.add_argument("--in-cgroup", action="store_true", help="run every contender's server in a cgroup v2 of its own")
    p.add_argument("--in-guest", action="store_true", help="label the kernel as a guest's (benchmarks/app_guest.py)")
    p.add_argument("--guest", choices=("test", "debian", "both"),
                   help="run in QEMU guests instead (benchmarks/app_guest.py): the test kernel, Debian's, or both")
    p.add_argument("--guest-timeout", type=float, default=3600.0, help="with --guest: seconds per guest, boot included")
    p.add_argument("--out", help="also append the JSON lines to this file")
    options = p.parse_args(argv)
    if options.window_timeout is None:
        options.window_timeout = 3 * options.window
    return options


HOST_ONLY_OPTIONS = ("--guest", "--guest-timeout", "--out")   # the guest's --out is app_guest's own


def without_host_options(argv: list[str]) -> list[str]:
    """argv less --guest, --guest-timeout and --out (either form), for the run inside the guest."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in HOST_ONLY_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in HOST_ONLY_OPTIONS)):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_args(argv)
    if options.guest:
        import app_guest     # beside this file; boots vng, runs this script with --in-guest there
        return app_guest.main(["--kernel", options.guest, "--timeout", str(options.guest_timeout),
                               *(["--out", options.out] if options.out else []), "--", *without_host_options(argv)])
    kernel = probe_kernel(options.in_guest)
    out = Output(kernel.label, options.out)
    missing = [t for t in ("redis-server", "redis-benchmark", "redis-cli") if not shutil.which(t)]
    if missing:
        progress(f"{', '.join(missing)} not installed (Debian: apt-get install redis-server redis-tools)")
        return 0
    reason = zram.missing_reason()
    if reason:
        progress(reason)
        return 0
    known = known_contenders()
    wanted = [n.strip() for n in options.contenders.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        progress(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return 2
    names = ["unmanaged"] + [n for n in wanted if n != "unmanaged"]

    def on_signal(signum, _frame):
        for other in (signal.SIGTERM, signal.SIGINT):   # a second Ctrl-C must not cut the clean-up short
            signal.signal(other, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")
    for signum in (signal.SIGTERM, signal.SIGINT):   # SIGINT too: a background start leaves it ignored
        signal.signal(signum, on_signal)
    data_bytes = options.keys * VALUE_BYTES
    hot = max(1, int(options.keys * options.hot_percent / 100))
    if options.paired is None:   # two servers, the RDB's page cache and what zram holds
        options.paired = available_bytes() >= 4 * data_bytes
        if not options.paired:
            progress(f"no reference server: MemAvailable {available_bytes() >> 20} MiB < 4x the data set")
    with ExitStack() as stack:
        stack.callback(out.close)
        workdir = Path(tempfile.mkdtemp(prefix="etmem-bench-apps-"))
        stack.callback(shutil.rmtree, workdir, True)
        try:
            device = zram.ZramSwap(max(512 * MiB, 2 * data_bytes), priority=ZRAM_PRIORITY).create()
        except ZramUnavailable as exc:
            progress(str(exc))
            return 0
        stack.callback(device.remove)
        began = time.monotonic()
        rdb = build_rdb(workdir, options.keys)
        progress(f"{options.keys} keys filled and saved in {time.monotonic() - began:.0f} s "
                 f"({rdb.stat().st_size / MiB:.0f} MiB RDB)")
        state: dict = {}
        for name in names:
            contender = known[name](options)
            why = contender.unavailable(kernel)
            if why:
                out.line({"contender": name, "skipped": why})
                continue
            try:
                run_contender(out, contender, kernel, options, workdir, rdb, device, data_bytes, hot, state)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                out.line({"contender": name, "failed": str(exc)})
                progress(f"{name} failed: {exc}")
    return 0


def run_contender(out: Output, contender, kernel: Kernel, options, workdir: Path, rdb: Path,
                  device: zram.ZramSwap, data_bytes: int, hot: int, state: dict) -> None:
    """One contender on a fresh server, its windows and figures; everything set up for it is undone.

    `state` carries the windows' pace (GET/s of the unmanaged server) and unmanaged's windows (the base)."""
    name = contender.name
    with ExitStack() as one:
        cgroup = None
        if (contender.needs_cgroup or options.in_cgroup) and kernel.cgroup2_memory:
            cgroup = make_cgroup(one, name)
        server = RedisServer(workdir, name, data_bytes, rdb=rdb, cgroup=cgroup)
        one.callback(server.stop)
        server.start()
        if "pace" not in state:    # the windows' GET/s estimate, carried from contender to contender
            # the faster of two probes: the first warms the server and the client up
            rps = max(run_load(server, hot, options.clients * 1000, options.clients)["rps"] for _ in range(2))
            state["pace"] = {"rps": rps}
            out.line({"run": {"keys": options.keys, "value_bytes": VALUE_BYTES, "hot_keys": hot,
                              "clients": options.clients, "window_s": options.window, "windows": options.windows,
                              "base_windows": options.base_windows,
                              "calibrated_rps": round(rps), "window_timeout_s": options.window_timeout,
                              "zswap": zswap_enabled(), "release": kernel.release,
                              "cpus": os.cpu_count(), "zram": device.device, "zram_priority": ZRAM_PRIORITY,
                              "tmpdir": str(workdir), "seed": SEED}})
        reference = None
        if options.paired and name != "unmanaged":
            reference = RedisServer(workdir, f"{name}-reference", data_bytes, rdb=rdb)
            one.callback(reference.stop)
            reference.start()
        one.callback(contender.stop)
        out.line({"contender": name, "server_pid": server.pid, "cgroup": cgroup,
                  "reference_pid": reference.pid if reference else None,
                  "loaded_rss_mib": round(vm_rss_bytes(server.pid) / MiB, 1)})
        seen = measure(out, contender, server, device, options, hot, state["pace"], reference)
        if contender.config():
            out.line({"contender": name, "config": contender.config()})
        if name == "unmanaged":
            state["base"] = seen
        report(out, name, getattr(contender, "etmem", False), seen, state.get("base"), data_bytes)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted; everything it started is stopped and removed")
        sys.exit(130)
