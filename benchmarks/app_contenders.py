"""The memory managers the Redis benchmark (bench_apps.py) compares, one `Contender` each:
etmem run as a user would run it (etmemd, a config file, the etmem client) and the peers a
user would pick instead (damo, DAMON_RECLAIM, memory.high).

Every contender probes the running kernel for what it needs (`unavailable`), sets itself up
on one Redis server (`start`), undoes all of it (`stop`, idempotent) and says how much CPU
its manager has used (`cpu_seconds`). The probes only read; on a machine whose DAMON,
cgroups or modules are not ours (the build hosts) every contender here but slide-refault and
slide-smaps reports why it cannot run and touches nothing.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from etmem import kernel
from etmem.damon_sysfs import owner_problem

MiB = 1 << 20
DAMON_RECLAIM_PARAMS = Path("/sys/module/damon_reclaim/parameters")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# What every DAMON-based contender calls cold by default (bench_apps --cold-age): no access
# seen for this long. A user would pick a few seconds; 10 s leaves room for a hot key read
# only every few seconds under TCG.
COLD_AGE_S = 10
# memory.high: the hot set (the share of the data set the load reads) plus this margin of it.
HIGH_MARGIN = 0.5
HIGH_SLACK = 32 * MiB


# --- CPU time of processes and kernel threads ---------------------------------------------

def stat_cpu_seconds(stat_text: str, clk_tck: int = CLK_TCK) -> float:
    """utime + stime of a /proc/PID/stat line, in seconds (the comm may hold spaces and parentheses)."""
    fields = stat_text.rpartition(")")[2].split()
    # fields[0] is the state, field 3 of the line; utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / clk_tck


def read_cpu_seconds(pid: int) -> float | None:
    """utime + stime of process `pid` (all its threads), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return stat_cpu_seconds(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def kdamond_pids(proc: str = "/proc") -> list[int]:
    """The kernel's DAMON threads (comm kdamond.N), whoever started them."""
    found = []
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                with open(f"{proc}/{entry}/comm") as f:
                    if f.read().startswith("kdamond."):
                        found.append(int(entry))
            except OSError:
                continue
    return found


class KdamondMeter:
    """CPU seconds the kdamond threads use from `start()` on, sampled every `period` s.

    A kdamond ends when its monitoring does (a damon scan of slide lasts a round's passes),
    and a kernel thread's time goes with it: the meter keeps the last figure seen of each,
    so at most one period of a short-lived thread's time is missed. Threads that ran before
    `start()` count only from then.
    """

    def __init__(self, period: float = 0.5):
        self.period = period
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for pid in kdamond_pids():
            seconds = read_cpu_seconds(pid)
            if seconds is not None:
                self._base[pid] = seconds
        self._thread = threading.Thread(target=self._run, name="kdamond-meter", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        for pid in kdamond_pids():
            seconds = read_cpu_seconds(pid)
            if seconds is not None:
                with self._lock:
                    self._last[pid] = seconds

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def seconds(self) -> float:
        with self._lock:
            return sum(max(0.0, s - self._base.get(pid, 0.0)) for pid, s in self._last.items())

    def stop(self) -> None:
        if self._thread is not None:
            self.sample()
            self._stop.set()
            self._thread.join()
            self._thread = None


# --- probes ---------------------------------------------------------------------------------

def damon_vaddr_problem() -> str | None:
    """Why DAMON cannot monitor a process here, read-only; None when it can."""
    if "vaddr" not in kernel.damon_operations():
        return kernel.missing("damon")
    return owner_problem()


def cgroup_memory_problem() -> str | None:
    if not kernel.has_cgroup2_memory():
        return kernel.missing("cgroup2_memory")
    return None


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value) -> None:
    with open(path, "w") as f:
        f.write(f"{value}\n")


def cgroup_dir(path: str) -> str:
    """A cgroup v2 path as psi's cg_dir: relative to the cgroup2 mount."""
    mount = kernel.cgroup_mounts().get("cgroup2")
    if mount is None:
        raise RuntimeError(kernel.missing("cgroup2_memory"))
    rel = os.path.relpath(path, mount)
    if rel.startswith(".."):
        raise RuntimeError(f"cgroup {path} is not under the cgroup2 mount {mount}")
    return rel


# --- the contenders -------------------------------------------------------------------------

class Contender:
    """One memory manager on one Redis server; see the module docstring and bench_apps.py's contract."""

    name = ""
    etmem = False          # one of etmem's own (False: a peer, compared against)
    needs_cgroup = False   # its server must run in a cgroup v2 of its own

    def __init__(self, options=None):
        self.options = options

    def unavailable(self, kernel_info=None) -> str | None:
        raise NotImplementedError

    def start(self, server) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        raise NotImplementedError

    def kdamond_cpu_seconds(self) -> float | None:
        """The part of cpu_seconds() its kdamonds used; None when it uses none."""
        meter = getattr(self, "_meter", None)
        return meter.seconds() if meter is not None else None

    def config(self) -> str | None:
        """What it was set up with, for the benchmark's output."""
        return None

    def option(self, name: str, default):
        """A setting from the benchmark's command line, or the default without one."""
        value = getattr(self.options, name, None)
        return default if value is None else value


def console_script(name: str) -> str:
    """An installed console script (etmem, etmemd), preferring the one beside this Python."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed (the etmem package's console scripts)")
    return found


class Etmemd(Contender):
    """etmem as a user runs it: etmemd with a config file of ours, loaded and started with `etmem`."""

    project = "redis"
    etmem = True
    uses_damon = False   # a DAMON-based engine or source: its kdamonds' CPU counts too

    def __init__(self, options=None):
        super().__init__(options)
        self.workdir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.socket_name = ""
        self.config_path = ""
        self._cpu = 0.0
        self._cpu_at_start = 0.0
        self._meter: KdamondMeter | None = None
        self._loaded = False
        self.text: str | None = None

    def config_text(self, server) -> str:
        raise NotImplementedError

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([console_script("etmem"), *args, "-s", self.socket_name],
                              capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"etmem {' '.join(args)} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()}\netmemd's log:\n{self.log_tail()}")
        return done

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.workdir, "etmemd.log").read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return "(no log)"

    def start(self, server) -> None:
        self.workdir = tempfile.mkdtemp(prefix=f"etmem-app-{self.name}-")
        self.socket_name = f"etmem-app-{uuid.uuid4().hex[:10]}"
        self.config_path = os.path.join(self.workdir, f"{self.name}.conf")
        # etmemd reads only config files no one but root can read or write
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.text = self.config_text(server)
        with os.fdopen(fd, "w") as f:
            f.write(self.text)
        self.proc = subprocess.Popen([console_script("etmemd"), "-s", self.socket_name, "-l", "1",
                                      "--log-file", os.path.join(self.workdir, "etmemd.log")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd="/")
        deadline = time.monotonic() + 120   # Python starts slowly under TCG
        while not self._listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"etmemd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etmemd did not listen within 120 s:\n{self.log_tail()}")
            time.sleep(0.2)
        self.client("obj", "add", "-f", self.config_path)
        self._loaded = True
        # the daemon's start-up and the config's loading are not management
        self._cpu = self._cpu_at_start = read_cpu_seconds(self.proc.pid) or 0.0
        if self.uses_damon:
            self._meter = KdamondMeter()
            self._meter.start()
        self.client("project", "start", "-n", self.project)

    def config(self) -> str | None:
        return self.text

    def _listening(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(b"\0" + self.socket_name.encode())
            except OSError:
                return False
            return True

    def show(self) -> str:
        """`etmem project show -o json` of the running project (statistics included), for the guest's console."""
        return self.client("project", "show", "-n", self.project, "-o", "json", check=False).stdout

    def cpu_seconds(self) -> float:
        if self.proc is not None and self.proc.poll() is None:
            self._cpu = read_cpu_seconds(self.proc.pid) or self._cpu
        return self._cpu - self._cpu_at_start + (self._meter.seconds() if self._meter else 0.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.cpu_seconds()
            if self._loaded:   # project stop and obj del undo what the engine set up (kdamonds, ...)
                # what the engine saw, for the guest's console: the figures alone do not say why
                print(f"app_contenders: {self.name}: etmem project show -o json: {self.show().strip()}",
                      file=sys.stderr, flush=True)
                self.client("project", "stop", "-n", self.project, check=False)
                self.client("obj", "del", "-f", self.config_path, check=False)
            self.cpu_seconds()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._loaded = False
        if self._meter is not None:
            self._meter.stop()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def slide_config(pid: int, scanner: str, project: str = "redis", loop: int = 2, sleep: int = 1,
                 interval: int = 5, T: int = 1, refault_budget: float | None = None,
                 max_threads: int | None = None) -> str:
    """A slide project on one process: `loop` passes `sleep` s apart every `interval` s; pages used fewer than T times are cold."""
    budget = "" if refault_budget is None else f"refault_budget={refault_budget:g}\n"
    threads = "" if max_threads is None else f"max_threads={max_threads}\n"
    return f"""[project]
name={project}
loop={loop}
sleep={sleep}
interval={interval}
scanner={scanner}
{budget}
[engine]
name=slide
project={project}

[task]
project={project}
engine=slide
name=redis
type=pid
value={pid}
T={T}
{threads}"""


def psi_config(cg_dir: str, project: str = "redis") -> str:
    """A psi project on one cgroup with upstream's defaults, a round every 5 s."""
    return f"""[project]
name={project}
scan_type=psi
interval=5

[engine]
name=psi
project={project}

[task]
project={project}
engine=psi
name=redis
cg_dir={cg_dir}
"""


def damon_config(pid: int, project: str = "redis", cold_age_s: int = COLD_AGE_S) -> str:
    """etmem's damon engine on one process: page out regions no sample found accessed for cold_age_s."""
    aggr_us = 100_000
    return f"""[project]
name={project}
scan_type=region
sample_interval=5000
aggr_interval={aggr_us}
update_interval=1000000
min_nr_regions=10
max_nr_regions=1000

[engine]
name=damon
project={project}
min_acc=0
max_acc=0
min_age={cold_age_s * 1_000_000 // aggr_us}
action=pageout

[task]
project={project}
engine=damon
name=redis
type=pid
value={pid}
"""


class Slide(Etmemd):
    """slide on the server's pid with one access source; the settings bench_apps.py gives every slide."""

    scanner = ""
    max_threads: int | None = None

    def config_text(self, server) -> str:
        budget = self.option("refault_budget", 5) if self.scanner == "refault" else None
        return slide_config(server.pid, self.scanner, self.project, loop=self.option("loop", 2),
                            sleep=self.option("sleep", 1), interval=self.option("interval", 5), T=self.option("T", 1),
                            refault_budget=budget, max_threads=self.max_threads)


class HostSlide(Slide):
    """The slides a host without access bits can run, in their own project with one worker thread."""

    project = "bench"
    max_threads = 1


class SlideRefault(HostSlide):
    """slide on the refault source: the one a kernel without access bits leaves (this build host's)."""

    name = "slide-refault"
    scanner = "refault"

    def unavailable(self, kernel_info=None) -> str | None:
        if not kernel.has_process_madvise():
            return kernel.missing("process_madvise")
        return None if kernel.swap_active() else "no swap is on"


class SlideSmaps(HostSlide):
    """slide on smaps, which sees a whole mapping as one unit: what slide did here before the refault source."""

    name = "slide-smaps"
    scanner = "smaps"

    def unavailable(self, kernel_info=None) -> str | None:
        return None if kernel.has_process_madvise() else kernel.missing("process_madvise")


class SlidePageIdle(Slide):
    name = "slide-page_idle"
    scanner = "page_idle"

    def unavailable(self, kernel_info=None) -> str | None:
        return None if kernel.has_page_idle() else kernel.missing("page_idle")


class SlideDamon(Slide):
    """slide with DAMON as its access source: a kdamond of etmem's for each scan, its CPU counted."""

    name = "slide-damon"
    scanner = "damon"
    uses_damon = True

    def unavailable(self, kernel_info=None) -> str | None:
        return damon_vaddr_problem()


class Psi(Etmemd):
    name = "psi"
    needs_cgroup = True

    def unavailable(self, kernel_info=None) -> str | None:
        if not kernel.has_psi():
            return kernel.missing("psi")
        if not kernel.has_memory_reclaim():
            return cgroup_memory_problem() or kernel.missing("memory_reclaim")
        return cgroup_memory_problem()

    def config_text(self, server) -> str:
        if not server.cgroup:
            raise RuntimeError("the psi contender needs the server in a cgroup of its own (needs_cgroup)")
        return psi_config(cgroup_dir(server.cgroup), self.project)


class DamonEngine(Etmemd):
    name = "damon"
    uses_damon = True

    def unavailable(self, kernel_info=None) -> str | None:
        return damon_vaddr_problem()

    def config_text(self, server) -> str:
        return damon_config(server.pid, self.project, self.option("cold_age", COLD_AGE_S))


def damo_dir() -> Path:
    """Where the benchmark installs damo (never into the shared site-packages)."""
    cache = os.environ.get("ETMEM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "etmem")
    return Path(cache) / "damo"


def install_damo() -> Path:
    """pip install --target the cache's damo/ (once); the path to put on PYTHONPATH."""
    target = damo_dir()
    if not (target / "damo" / "damo.py").is_file():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), "damo"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip install --target {target} damo failed: {done.stderr.strip()[-500:]}")
    return target


def damo_start_args(pid: int, cold_age_s: int = COLD_AGE_S) -> list[str]:
    """`damo start` for a pageout scheme on one process: regions with no access for cold_age_s."""
    return ["start", "--ops", "vaddr", "--target_pid", str(pid),
            "--damos_action", "pageout", "--damos_access_rate", "0%", "0%",
            "--damos_age", f"{cold_age_s}s", "max"]


def tracefs_problem(mounts: str = "/proc/self/mounts", filesystems: str = "/proc/filesystems") -> str | None:
    """Why damo cannot start here for want of tracefs (damo 3.4 reads DAMON's trace events from it at start-up)."""
    with open(mounts) as f:
        if any(len(line.split()) > 2 and line.split()[2] == "tracefs" for line in f):
            return None
    with open(filesystems) as f:
        known = any(line.split()[-1:] == ["tracefs"] for line in f)
    if known:
        return "damo needs tracefs mounted (mount -t tracefs nodev /sys/kernel/tracing)"
    return "damo needs tracefs, which this kernel lacks (it is built without CONFIG_TRACING)"


class Damo(Contender):
    """DAMON's user-space tool: `damo start` leaves a kdamond running a pageout scheme; `damo stop` ends it.

    Its CPU is the kdamond's: damo itself runs only to set DAMON up and to stop it, as
    etmemd's start-up is not counted either.
    """

    name = "damo"

    def __init__(self, options=None):
        super().__init__(options)
        self._meter: KdamondMeter | None = None
        self._started = False
        self._nr_before: str | None = None
        self._home = ""
        self.text: str | None = None

    def unavailable(self, kernel_info=None) -> str | None:
        return damon_vaddr_problem() or tracefs_problem()

    def _damo(self, *args: str) -> str:
        path = install_damo()
        # damo keeps a cache of the kernel's DAMON features in $HOME, which is read-only in the guest
        env = dict(os.environ, HOME=self._home,
                   PYTHONPATH=os.pathsep.join(p for p in (str(path), os.environ.get("PYTHONPATH")) if p))
        done = subprocess.run([sys.executable, str(path / "bin" / "damo"), *args], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"damo {' '.join(args)} failed ({done.returncode}): "
                               f"{(done.stdout + done.stderr).strip()[-800:]}")
        return done.stdout

    def start(self, server) -> None:
        self._nr_before = _read(Path(kernel.DAMON_ADMIN, "kdamonds", "nr_kdamonds"))
        self._home = tempfile.mkdtemp(prefix="etmem-app-damo-")
        args = damo_start_args(server.pid, self.option("cold_age", COLD_AGE_S))
        self.text = "damo " + " ".join(args)
        self._meter = KdamondMeter()
        self._meter.start()
        self._started = True
        self._damo(*args)

    def config(self) -> str | None:
        return self.text

    def cpu_seconds(self) -> float:
        return self._meter.seconds() if self._meter else 0.0

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self._meter.sample()
            self._damo("stop")
        finally:
            self._meter.stop()
            # damo leaves its kdamond, off, in the kernel's set; give the set back as it was
            nr = Path(kernel.DAMON_ADMIN, "kdamonds", "nr_kdamonds")
            if self._nr_before == "0" and _read(nr) != "0":
                _write(nr, 0)
            shutil.rmtree(self._home, ignore_errors=True)


def damon_reclaim_params(cold_age_s: int = COLD_AGE_S) -> dict[str, str]:
    """DAMON_RECLAIM's parameters for proactive reclaim: memory unaccessed for cold_age_s, whatever is free.

    Its default watermarks (500/400/200 per thousand of free memory: active only while less
    than 40% of memory is free) would leave it idle in a guest with room to spare, so they
    are opened up: active while less than 99.9% is free, checked every second.
    """
    return {
        "min_age": str(cold_age_s * 1_000_000),   # microseconds
        "quota_ms": "100",                        # at most 100 ms of CPU ...
        "quota_sz": str(256 * MiB),               # ... and 256 MiB reclaimed ...
        "quota_reset_interval_ms": "1000",        # ... a second
        "wmarks_interval": "1000000",
        "wmarks_high": "1000",
        "wmarks_mid": "999",
        "wmarks_low": "0",
    }


class DamonReclaim(Contender):
    """The DAMON_RECLAIM module: reclaims physical memory unaccessed for a while, machine-wide."""

    name = "damon_reclaim"
    params_dir = DAMON_RECLAIM_PARAMS

    def __init__(self, options=None):
        super().__init__(options)
        self._saved: dict[str, str] = {}
        self._meter: KdamondMeter | None = None
        self.text: str | None = None

    def unavailable(self, kernel_info=None) -> str | None:
        if not self.params_dir.is_dir():
            return f"{self.params_dir} is missing: the kernel needs CONFIG_DAMON_RECLAIM=y"
        if _read(self.params_dir / "enabled") == "Y":
            return "DAMON_RECLAIM is enabled already: it is someone else's"
        return owner_problem()

    def start(self, server) -> None:
        params = damon_reclaim_params(self.option("cold_age", COLD_AGE_S))
        self._saved = {name: _read(self.params_dir / name) for name in [*params, "enabled"]}
        self.text = "".join(f"{name}={value}\n" for name, value in [*params.items(), ("enabled", "Y")])
        self._meter = KdamondMeter()
        self._meter.start()
        for name, value in params.items():
            _write(self.params_dir / name, value)
        _write(self.params_dir / "enabled", "Y")

    def config(self) -> str | None:
        return self.text

    def cpu_seconds(self) -> float:
        return self._meter.seconds() if self._meter else 0.0

    def stop(self) -> None:
        if not self._saved:
            return
        self._meter.stop()
        _write(self.params_dir / "enabled", "N")
        for name, value in self._saved.items():
            if name != "enabled":
                _write(self.params_dir / name, value)
        self._saved = {}


def vm_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def memory_high_bytes(resident: int, hot_share: float) -> int:
    """memory.high for a server whose load reads hot_share of its memory: that hot set plus a margin, in whole pages."""
    high = int(resident * hot_share * (1 + HIGH_MARGIN)) + HIGH_SLACK
    return high // 4096 * 4096


class MemoryHigh(Contender):
    """The kernel alone: memory.high on the server's cgroup at the hot set plus a margin; the kernel reclaims above it."""

    name = "memory.high"
    needs_cgroup = True

    def __init__(self, options=None):
        super().__init__(options)
        self._path: Path | None = None
        self._saved: str | None = None
        self.text: str | None = None

    def unavailable(self, kernel_info=None) -> str | None:
        return cgroup_memory_problem()

    def start(self, server) -> None:
        if not server.cgroup:
            raise RuntimeError("the memory.high contender needs the server in a cgroup of its own (needs_cgroup)")
        self._path = Path(server.cgroup, "memory.high")
        # the server's own memory, not memory.current, which also holds the page cache of its RDB
        resident = vm_rss_bytes(server.pid)
        high = memory_high_bytes(resident, self.option("hot_percent", 10.0) / 100)
        self._saved = _read(self._path)
        self.text = f"memory.high={high} (the server's VmRSS {resident} at start)"
        _write(self._path, high)

    def config(self) -> str | None:
        return self.text

    def cpu_seconds(self) -> float:
        # the reclaim above memory.high runs in the server's own threads as they allocate
        return 0.0

    def stop(self) -> None:
        if self._path is not None and self._saved is not None:
            try:
                _write(self._path, self._saved)
            except FileNotFoundError:   # the cgroup went with its server
                pass
        self._saved = None


# what bench_apps.py picks from by name
CONTENDERS = [SlideRefault, SlideSmaps, Psi, DamonEngine, SlidePageIdle, SlideDamon, Damo, DamonReclaim, MemoryHigh]
