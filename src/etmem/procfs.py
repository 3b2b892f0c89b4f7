"""Typed reads of /proc and /sys: the one place that knows their text formats.

Each function reads one file and returns plain data; a vanished process is
reported as `NoSuchProcess` (with the pid), a refused read as `AccessDenied`.
"""
from __future__ import annotations

import errno
import os
import re
from typing import NamedTuple
from .errors import AccessDenied, NoSuchProcess, ProcError

PROC = "/proc"
NODE_SYSFS = "/sys/devices/system/node"


def _translate(pid: int, path: str, exc: OSError) -> ProcError:
    if exc.errno in (errno.ENOENT, errno.ESRCH):
        return NoSuchProcess(pid, path)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(pid, path)
    return ProcError(pid, f"reading {path}: {exc.strerror}", exc.errno or 0)


def read_text(pid: int, name: str) -> str:
    """Read /proc/PID/NAME as text, translating errors to ProcError."""
    path = f"{PROC}/{pid}/{name}"
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError as exc:
        raise _translate(pid, path, exc) from None


def pids() -> list[int]:
    """All pids currently in /proc (processes, not threads)."""
    return sorted(int(d) for d in os.listdir(PROC) if d.isdigit())


def comm(pid: int) -> str:
    """The process name as in /proc/PID/comm (at most 15 characters)."""
    return read_text(pid, "comm").rstrip("\n")


def status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of raw values (e.g. 'VmRSS': '1234 kB')."""
    out = {}
    for line in read_text(pid, "status").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmSwap, ...) in KiB; 0 when absent."""
    value = status(pid).get(key, "0 kB").split()
    return int(value[0]) if value else 0


def start_time(pid: int) -> int:
    """Start time of the process in clock ticks since boot (field 22 of stat)."""
    stat = read_text(pid, "stat")
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[19])


def parent(pid: int) -> int:
    stat = read_text(pid, "stat")
    return int(stat[stat.rindex(")") + 2:].split()[1])


def children(pid: int) -> list[int]:
    """Direct children of every thread of pid (from /proc/PID/task/*/children)."""
    kids: list[int] = []
    try:
        tids = os.listdir(f"{PROC}/{pid}/task")
    except OSError as exc:
        raise _translate(pid, f"{PROC}/{pid}/task", exc) from None
    for tid in tids:
        try:
            with open(f"{PROC}/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
        except FileNotFoundError:
            continue
    return sorted(set(kids))


def descendants(pid: int) -> list[int]:
    """The whole tree below pid (children, grandchildren, ...), breadth first."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop(0)
        try:
            kids = children(current)
        except NoSuchProcess:
            continue
        for kid in kids:
            if kid not in seen and kid != pid:
                seen.append(kid)
                todo.append(kid)
    return seen


def pids_by_comm(name: str) -> list[int]:
    """Every process whose comm equals name exactly (upstream's rule)."""
    found = []
    for pid in pids():
        try:
            if comm(pid) == name:
                found.append(pid)
        except ProcError:
            continue
    return found


class Vma(NamedTuple):
    """One line of /proc/PID/maps (and optionally its smaps fields)."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    vmflags: frozenset = frozenset()
    referenced_kb: int = -1
    rss_kb: int = -1
    swap_kb: int = -1
    anon_kb: int = -1

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def is_anonymous(self) -> bool:
        """Private anonymous memory: heap, stack and unnamed mappings."""
        return self.inode == 0 and (self.path == "" or self.path in ("[heap]", "[stack]") or self.path.startswith("[anon:"))

    @property
    def is_private(self) -> bool:
        return len(self.perms) > 3 and self.perms[3] == "p"

    @property
    def is_special(self) -> bool:
        """vdso, vvar, vsyscall and other kernel-provided mappings."""
        return self.path in ("[vdso]", "[vvar]", "[vsyscall]", "[vvar_vclock]", "[uprobes]")


_MAPS_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)\s*(.*)$")


def _parse_maps_line(line: str) -> Vma | None:
    m = _MAPS_RE.match(line)
    if not m:
        return None
    return Vma(int(m.group(1), 16), int(m.group(2), 16), m.group(3), int(m.group(4), 16), m.group(5), int(m.group(6)), m.group(7))


def maps(pid: int) -> list[Vma]:
    """The VMAs of /proc/PID/maps, in address order."""
    out = []
    for line in read_text(pid, "maps").splitlines():
        vma = _parse_maps_line(line)
        if vma is not None:
            out.append(vma)
    return out


def vmas(pid: int, flags: bool = False) -> list[Vma]:
    """The VMAs of a process, from maps, or from smaps where their VmFlags matter.

    The kernel builds smaps by walking every page table of the process (some 10 ms per
    GiB resident; maps costs a fiftieth of that). smaps is read when `flags` is asked, and
    when /proc/PID/status shows locked memory (VmLck) or hugetlb pages, or a VMA is an
    anonymous hugetlb mapping, so that the `lo` and `ht` VmFlags are always there when
    they are true. Otherwise the VMAs have no VmFlags and no smaps counters.
    """
    if not flags:
        st = status(pid)
        locked = int(st.get("VmLck", "0 kB").split()[0] or 0)
        hugetlb = int(st.get("HugetlbPages", "0 kB").split()[0] or 0)
        if not (locked or hugetlb):
            out = maps(pid)
            if not any(v.path.startswith("/anon_hugepage") for v in out):
                return out
    return smaps(pid)


def smaps(pid: int) -> list[Vma]:
    """The VMAs of /proc/PID/smaps with VmFlags, Referenced, Rss, Swap and Anonymous."""
    return parse_smaps(read_text(pid, "smaps"))


def parse_smaps(text: str) -> list[Vma]:
    """The VMAs of an smaps text (see `smaps`), for callers that read the file themselves."""
    out: list[Vma] = []
    current: Vma | None = None
    fields: dict = {}

    def flush():
        if current is not None:
            out.append(current._replace(**fields))

    for line in text.splitlines():
        vma = _parse_maps_line(line) if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0] else None
        if vma is not None:
            flush()
            current, fields = vma, {}
            continue
        key, _, value = line.partition(":")
        if key == "VmFlags":
            fields["vmflags"] = frozenset(value.split())
        elif key == "Referenced":
            fields["referenced_kb"] = int(value.split()[0])
        elif key == "Rss":
            fields["rss_kb"] = int(value.split()[0])
        elif key == "Swap":
            fields["swap_kb"] = int(value.split()[0])
        elif key == "Anonymous":
            fields["anon_kb"] = int(value.split()[0])
    flush()
    return out


# --- system memory and NUMA -------------------------------------------------

def _parse_meminfo(text: str, strip_prefix: bool = False) -> dict[str, int]:
    """meminfo lines → {key: KiB}. Node meminfo lines start with 'Node N '."""
    out = {}
    for line in text.splitlines():
        if strip_prefix:
            parts = line.split(None, 2)
            if len(parts) < 3:
                continue
            line = parts[2]
        key, _, value = line.partition(":")
        fields = value.split()
        if fields:
            try:
                out[key.strip()] = int(fields[0])
            except ValueError:
                continue
    return out


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB (HugePages_* are counts)."""
    with open(f"{PROC}/meminfo") as f:
        return _parse_meminfo(f.read())


def memory_nodes() -> list[int]:
    """NUMA nodes with memory (CPU-less CXL nodes included)."""
    return _node_list("has_memory") or _node_list("online")


def cpu_nodes() -> list[int]:
    return _node_list("has_cpu")


def _node_list(name: str) -> list[int]:
    try:
        with open(f"{NODE_SYSFS}/{name}") as f:
            return parse_cpulist(f.read())
    except OSError:
        return [0] if name in ("online", "has_memory", "has_cpu") and not os.path.isdir(NODE_SYSFS) else []


def parse_cpulist(text: str) -> list[int]:
    """'0-2,5' → [0, 1, 2, 5] (the kernel's list format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def node_meminfo(node: int) -> dict[str, int]:
    """/sys/devices/system/node/nodeN/meminfo in KiB (MemTotal, MemFree, ...)."""
    with open(f"{NODE_SYSFS}/node{node}/meminfo") as f:
        return _parse_meminfo(f.read(), strip_prefix=True)


def node_hugepages(node: int, size_kb: int = 2048) -> tuple[int, int]:
    """(total, free) hugetlb pages of size_kb on node."""
    base = f"{NODE_SYSFS}/node{node}/hugepages/hugepages-{size_kb}kB"
    with open(f"{base}/nr_hugepages") as f:
        total = int(f.read())
    with open(f"{base}/free_hugepages") as f:
        free = int(f.read())
    return total, free


def swap_devices() -> list[dict]:
    """Active swap areas from /proc/swaps: name, type, size_kb, used_kb, priority."""
    out = []
    with open(f"{PROC}/swaps") as f:
        for line in f.read().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 5:
                out.append({"name": parts[0], "type": parts[1], "size_kb": int(parts[2]), "used_kb": int(parts[3]), "priority": int(parts[4])})
    return out
