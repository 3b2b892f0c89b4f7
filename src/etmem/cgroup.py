"""Memory cgroups: typed reads of their memory files, their pressure, and proactive reclaim.

cgroup v2 keeps every file of a cgroup in one directory under its mount; openEuler's
cgroup v1 keeps the memory files under the memory hierarchy and `memory.pressure` under
cpuacct. A `Hierarchy` knows which layout the kernel has and finds cgroups (by path, glob,
systemd unit or process); a `Cgroup` reads and writes one cgroup's files. Errors are
translated here: a cgroup removed while it is read is a `CgroupGone` naming it.
"""
from __future__ import annotations

import errno
import glob
import os
import re
from collections import deque

import attrs

from . import kernel, procfs
from .errors import CgroupError, CgroupGone, KernelFeatureMissing, ProcError

PAGE = 4096
# cgroup v1 shows "no limit" as its page counter's maximum (0x7ffffffffffff000 on 64-bit).
V1_UNLIMITED = 1 << 62
GLOB_CHARS = re.compile(r"[*?[]")
UNIT_DEPTH = 8   # how deep under the mount a systemd unit's cgroup is looked for


# -- typed results -------------------------------------------------------------------


@attrs.frozen
class Pressure:
    """A `memory.pressure` reading: percent of time some / all tasks stalled on memory."""

    some_avg10: float
    some_avg60: float
    some_avg300: float
    some_total: int      # microseconds
    full_avg10: float
    full_avg60: float
    full_avg300: float
    full_total: int

    @property
    def recent(self) -> float:
        """The figure the psi engine steers by: max(some avg10, some avg60)."""
        return max(self.some_avg10, self.some_avg60)


def parse_pressure(text: str) -> Pressure:
    """The `some` and `full` lines of a PSI file (the cgroup's or /proc/pressure/memory)."""
    lines = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        fields = dict(item.split("=", 1) for item in rest.split() if "=" in item)
        lines[kind] = fields
    try:
        some, full = lines["some"], lines.get("full", {"avg10": 0, "avg60": 0, "avg300": 0, "total": 0})
        return Pressure(float(some["avg10"]), float(some["avg60"]), float(some["avg300"]), int(some["total"]),
                        float(full["avg10"]), float(full["avg60"]), float(full["avg300"]), int(full["total"]))
    except (KeyError, ValueError):
        raise ValueError(f"not a PSI file: {text[:80]!r}") from None


@attrs.frozen
class MemoryStat:
    """What the psi engine reads from `memory.stat`: LRU sizes in bytes, refault counters in pages."""

    anon_lru: int                 # active + inactive anon
    file_lru: int                 # active + inactive file
    refaults_anon: int | None     # workingset_refault_anon since the cgroup was made; None: not reported
    refaults_file: int | None
    values: dict = attrs.field(factory=dict, repr=False)   # every line, as the kernel wrote it

    @property
    def refaults(self) -> int | None:
        """Refaulted pages, anon and file (None when the kernel reports no refault counters)."""
        if self.refaults_anon is None and self.refaults_file is None:
            return None
        return (self.refaults_anon or 0) + (self.refaults_file or 0)


def parse_memory_stat(text: str, version: int = 2) -> MemoryStat:
    """memory.stat of cgroup v2, or of v1 (whose hierarchical figures are the `total_` lines)."""
    values = {}
    for line in text.splitlines():
        name, _, number = line.partition(" ")
        if number.strip().isdigit():
            values[name] = int(number)
    prefix = "total_" if version == 1 else ""

    def get(name: str) -> int | None:
        return values.get(prefix + name, values.get(name))

    def lru(kind: str) -> int:
        return (get(f"active_{kind}") or 0) + (get(f"inactive_{kind}") or 0)

    anon, file = get("workingset_refault_anon"), get("workingset_refault_file")
    if anon is None and file is None and get("workingset_refault") is not None:
        file = get("workingset_refault")   # kernels before 5.9 count refaults of both kinds in one line
    return MemoryStat(lru("anon"), lru("file"), anon, file, values)


@attrs.frozen
class MemoryFigures:
    """One reading of a cgroup's memory: what the psi engine's floor is made of (bytes)."""

    current: int
    memory_min: int
    memory_low: int
    limit: int | None       # memory.max (v1: limit_in_bytes); None: no limit
    swap_room: int | None   # how much more of its anon memory swap can take; None: no bound known
    stat: MemoryStat


@attrs.frozen
class ReclaimResult:
    """What one write to memory.reclaim did."""

    requested: int
    reclaimed: int     # memory.current before minus after (0 if it grew meanwhile)
    complete: bool     # False: the kernel answered EAGAIN, it could not reclaim all of it


# -- one cgroup ----------------------------------------------------------------------


class Cgroup:
    """One memory cgroup, by its path relative to the hierarchy's mount ("" is the root)."""

    def __init__(self, hierarchy: "Hierarchy", path: str):
        self.hierarchy = hierarchy
        self.path = path.strip("/")
        self.dir = os.path.join(hierarchy.root, self.path) if self.path else hierarchy.root
        self.pressure_dir = os.path.join(hierarchy.pressure_root, self.path) if self.path else hierarchy.pressure_root

    def __repr__(self) -> str:
        return f"<Cgroup {self.path or '/'} (v{self.hierarchy.version} at {self.hierarchy.root})>"

    @property
    def name(self) -> str:
        return self.path or "/"

    def identity(self) -> tuple[int, int]:
        """(device, inode) of its directory: a cgroup made again under the same path is another one."""
        try:
            st = os.stat(self.dir)
        except FileNotFoundError:
            raise CgroupGone(self.name, self.hierarchy.root) from None
        return st.st_dev, st.st_ino

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    # -- files --------------------------------------------------------------------
    def read(self, name: str, directory: str | None = None) -> str | None:
        """The text of one of its files; None when this kernel does not have that file."""
        path = os.path.join(directory or self.dir, name)
        try:
            with open(path) as f:
                return f.read()
        except OSError as exc:
            return self._absent_or_raise(path, exc, "reading")

    def write(self, name: str, text: str, tolerate: tuple = ()) -> int | None:
        """Write text to one of its files; an errno in `tolerate` is returned instead of raised."""
        path = os.path.join(self.dir, name)
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            self._absent_or_raise(path, exc, "writing")
            raise CgroupError(f"cgroup {self.name}: this kernel has no {name}") from None
        try:
            os.write(fd, text.encode())
        except OSError as exc:
            if exc.errno in tolerate:
                return exc.errno
            self._translate(path, exc, "writing", text)
        finally:
            os.close(fd)
        return None

    def _absent_or_raise(self, path: str, exc: OSError, doing: str) -> None:
        if exc.errno == errno.ENOENT and self.exists():
            return None
        self._translate(path, exc, doing)

    def _translate(self, path: str, exc: OSError, doing: str, value: str | None = None):
        if exc.errno in (errno.ENOENT, errno.ENODEV) and not self.exists():
            raise CgroupGone(self.name, self.hierarchy.root) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CgroupError(f"permission denied {doing} {path} (etmem needs root)") from None
        if exc.errno == errno.EINVAL and value is not None:
            raise CgroupError(f"the kernel refused {value!r} for {path}") from None
        raise CgroupError(f"{doing} {path}: {exc.strerror}") from None

    def _number(self, name: str, directory: str | None = None, default: int | None = None) -> int | None:
        """A file holding one number, or 'max' (None); `default` when the kernel lacks the file."""
        text = self.read(name, directory)
        if text is None:
            return default
        text = text.strip()
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            raise CgroupError(f"cgroup {self.name}: {name} holds {text[:40]!r}, not a number") from None
        return None if value >= V1_UNLIMITED else value

    def _required(self, name: str) -> int:
        value = self._number(name)
        if value is None:
            raise CgroupError(f"cgroup {self.name} has no {name}: {kernel.missing('cgroup2_memory')}")
        return value

    # -- typed reads ----------------------------------------------------------------
    def current(self) -> int:
        """Memory charged to it now, in bytes (memory.current; v1 memory.usage_in_bytes)."""
        return self._required(self.hierarchy.files["current"])

    def pressure(self) -> Pressure | None:
        """Its memory.pressure, or None when the kernel keeps no PSI for cgroups (PSI off)."""
        text = self.read("memory.pressure", self.pressure_dir)
        if text is None:
            return None
        try:
            return parse_pressure(text)
        except ValueError as exc:
            raise CgroupError(f"cgroup {self.name}: memory.pressure: {exc}") from None

    def stat(self) -> MemoryStat:
        text = self.read("memory.stat")
        if text is None:
            raise CgroupError(f"cgroup {self.name} has no memory.stat: {kernel.missing('cgroup2_memory')}")
        return parse_memory_stat(text, self.hierarchy.version)

    def swap_room(self) -> int | None:
        """Bytes of swap its anon memory may still use: its own swap limit's room, bounded by free swap."""
        files = self.hierarchy.files
        limit = self._number(files["swap_limit"], default=None)
        used = self._number(files["swap_used"], default=None)
        own = None if limit is None or used is None else max(0, limit - used)
        free = procfs.meminfo().get("SwapFree", 0) << 10
        return free if own is None else min(own, free)

    def figures(self) -> MemoryFigures:
        """Everything the floor of the psi engine needs, read now."""
        files = self.hierarchy.files
        return MemoryFigures(
            current=self.current(),
            memory_min=self._number("memory.min", default=0) or 0,
            memory_low=self._number("memory.low", default=0) or 0,
            limit=self._number(files["limit"], default=None),
            swap_room=self.swap_room(),
            stat=self.stat())

    def reclaim(self, nbytes: int) -> ReclaimResult:
        """Ask the kernel to reclaim nbytes from it (memory.reclaim); EAGAIN counts as a partial reclaim."""
        before = self.current()
        # EAGAIN: the kernel gave up before reclaiming it all; EINTR: a signal cut it short.
        refused = self.write("memory.reclaim", str(int(nbytes)), tolerate=(errno.EAGAIN, errno.EINTR))
        after = self.current()
        return ReclaimResult(int(nbytes), max(0, before - after), refused is None)


# -- the hierarchy -------------------------------------------------------------------

V2_FILES = {"current": "memory.current", "limit": "memory.max",
            "swap_limit": "memory.swap.max", "swap_used": "memory.swap.current"}
# openEuler's v1 bounds memory+swap together: the room left is memsw.limit - memsw.usage.
V1_FILES = {"current": "memory.usage_in_bytes", "limit": "memory.limit_in_bytes",
            "swap_limit": "memory.memsw.limit_in_bytes", "swap_used": "memory.memsw.usage_in_bytes"}


@attrs.frozen
class Hierarchy:
    """Where memory cgroups live: cgroup v2 (one tree) or openEuler's v1 (memory tree + cpuacct for pressure)."""

    version: int
    root: str            # cgroup paths are relative to it and globbed under it
    pressure_root: str   # where memory.pressure is: the same tree on v2, cpuacct's on v1

    @property
    def files(self) -> dict:
        return V2_FILES if self.version == 2 else V1_FILES

    def cgroup(self, path: str) -> Cgroup:
        return Cgroup(self, path)

    def glob(self, pattern: str) -> list[str]:
        """Paths of the cgroups (directories) that match pattern now, sorted."""
        found = glob.glob(pattern.strip("/"), root_dir=self.root)
        return sorted(p for p in found if os.path.isdir(os.path.join(self.root, p)))

    def find_unit(self, unit: str) -> str | None:
        """The cgroup of a systemd unit (system.slice/redis.service), or None when it has none now."""
        if unit.endswith(".slice"):
            parts = unit[: -len(".slice")].split("-")
            path = "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))
            return path if os.path.isdir(os.path.join(self.root, path)) else None
        todo = deque([("", 0)])
        while todo:
            here, depth = todo.popleft()
            try:
                entries = [e for e in os.scandir(os.path.join(self.root, here)) if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue   # removed while we looked
            for entry in sorted(entries, key=lambda e: e.name):
                path = f"{here}/{entry.name}" if here else entry.name
                if entry.name == unit:
                    return path
                if depth + 1 < UNIT_DEPTH:
                    todo.append((path, depth + 1))
        return None

    def process_cgroup(self, pid: int) -> str:
        """The cgroup process pid runs in, from /proc/PID/cgroup ("" is the root)."""
        for line in procfs.read_text(pid, "cgroup").splitlines():
            _, controllers, path = line.split(":", 2)
            if (self.version == 2 and controllers == "") or (self.version == 1 and "memory" in controllers.split(",")):
                return path.strip().strip("/")
        raise ProcError(pid, f"process {pid} is in no cgroup v{self.version} memory cgroup (/proc/{pid}/cgroup)")


def system_hierarchy() -> Hierarchy:
    """The running kernel's memory cgroups with memory.reclaim, or KernelFeatureMissing saying what lacks.

    cgroup v2 with its memory controller first; else openEuler's cgroup v1 when its memory
    hierarchy has memory.reclaim (pressure then comes from the cpuacct hierarchy).
    """
    mounts = kernel.cgroup_mounts()
    if kernel.has_cgroup2_memory():
        if not os.path.exists(os.path.join(mounts["cgroup2"], "memory.reclaim")):
            raise KernelFeatureMissing(kernel.missing("memory_reclaim"))
        return Hierarchy(2, mounts["cgroup2"], mounts["cgroup2"])
    memory = mounts.get("memory")
    if memory and os.path.exists(os.path.join(memory, "memory.reclaim")):
        return Hierarchy(1, memory, mounts.get("cpuacct", memory))
    raise KernelFeatureMissing(f"{kernel.missing('cgroup2_memory')}; and {kernel.missing('memory_reclaim')}")
