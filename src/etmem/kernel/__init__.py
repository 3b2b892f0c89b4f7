"""What the running kernel offers: the one place that probes for features.

The rest of the code asks `kernel.has_page_idle()` and friends, and puts the
`missing()` sentence into its error when the answer is no. The numbers etmem calls
the kernel with (syscalls, ioctls, flags) and the libc handle live in `kernel.abi`.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import os

from .abi import MADV_PAGEOUT, SYS_move_pages, SYS_pidfd_open, SYS_process_madvise, libc

__all__ = [
    "DAMON_ADMIN", "PAGE_IDLE_BITMAP", "PRESSURE_MEMORY", "cgroup_mounts", "cgroup2_controllers",
    "damon_operations", "has_cgroup2_memory", "has_memory_reclaim", "has_page_idle", "has_pidfd",
    "has_process_madvise", "has_psi", "has_swap_pages", "kernel_config", "missing", "swap_active",
    # from kernel.abi, also here: callers use kernel.libc and kernel.SYS_*
    "SYS_move_pages", "SYS_pidfd_open", "SYS_process_madvise", "libc",
]

PAGE_IDLE_BITMAP = "/sys/kernel/mm/page_idle/bitmap"
DAMON_ADMIN = "/sys/kernel/mm/damon/admin"
PRESSURE_MEMORY = "/proc/pressure/memory"


def has_swap_pages(pid: int | None = None) -> bool:
    """openEuler's etmem_swap module: /proc/PID/swap_pages."""
    return os.path.exists(f"/proc/{pid or 'self'}/swap_pages")


def has_page_idle() -> bool:
    """CONFIG_IDLE_PAGE_TRACKING: /sys/kernel/mm/page_idle/bitmap."""
    return os.path.exists(PAGE_IDLE_BITMAP)


def damon_operations() -> set[str]:
    """DAMON operation sets this kernel has (e.g. {'vaddr', 'paddr'}); empty without DAMON sysfs."""
    try:
        with open(f"{DAMON_ADMIN}/kdamonds/nr_kdamonds"):
            pass
    except OSError:
        return set()
    ops = _avail_operations()
    return ops


def _avail_operations() -> set[str]:
    # Kernels >= 6.1 list them in kdamonds/N/contexts/N/avail_operations; reading that
    # needs an existing context, so fall back to the kernel config when none exists.
    base = f"{DAMON_ADMIN}/kdamonds"
    try:
        for kd in os.listdir(base):
            if kd.isdigit():
                for ctx in os.listdir(f"{base}/{kd}/contexts"):
                    if ctx.isdigit():
                        with open(f"{base}/{kd}/contexts/{ctx}/avail_operations") as f:
                            return set(f.read().split())
    except OSError:
        pass
    config = kernel_config()
    found = set()
    for name, op in (("CONFIG_DAMON_VADDR", "vaddr"), ("CONFIG_DAMON_PADDR", "paddr")):
        if config.get(name) == "y":
            found.add(op)
            if op == "vaddr":
                found.add("fvaddr")
    return found


@functools.lru_cache(maxsize=1)
def kernel_config() -> dict[str, str]:
    """The running kernel's build config from /proc/config.gz or /boot (empty when unreadable)."""
    import gzip

    text = ""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        try:
            with open(f"/boot/config-{os.uname().release}") as f:
                text = f.read()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


@functools.lru_cache(maxsize=1)
def has_process_madvise() -> bool:
    """process_madvise(2) (Linux 5.10+): probe with an empty iovec on our own pidfd."""
    pidfd = libc.syscall(SYS_pidfd_open, os.getpid(), 0)
    if pidfd < 0:
        return False
    try:
        rc = libc.syscall(SYS_process_madvise, pidfd, None, 0, MADV_PAGEOUT, 0)
        return rc >= 0 or ctypes.get_errno() != errno.ENOSYS
    finally:
        os.close(pidfd)


@functools.lru_cache(maxsize=1)
def has_pidfd() -> bool:
    pidfd = libc.syscall(SYS_pidfd_open, os.getpid(), 0)
    if pidfd < 0:
        return False
    os.close(pidfd)
    return True


def has_psi() -> bool:
    """Pressure stall information is on: /proc/pressure/memory (CONFIG_PSI, not turned off at boot)."""
    return os.path.exists(PRESSURE_MEMORY)


def cgroup_mounts() -> dict[str, str]:
    """Where the cgroup hierarchies are mounted: 'cgroup2', and the v1 'memory' and 'cpuacct' ones.

    Read from /proc/self/mounts on each call (a mount may come or go); the first mount
    of each kind counts.
    """
    found: dict[str, str] = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 4:
                continue
            where, fstype, options = fields[1].replace("\\040", " "), fields[2], fields[3].split(",")
            if fstype == "cgroup2":
                found.setdefault("cgroup2", where)
            elif fstype == "cgroup":
                for controller in ("memory", "cpuacct"):
                    if controller in options:
                        found.setdefault(controller, where)
    return found


def cgroup2_controllers() -> set[str]:
    """Controllers the cgroup v2 hierarchy has (its root's cgroup.controllers); empty without one."""
    root = cgroup_mounts().get("cgroup2")
    if root is None:
        return set()
    try:
        with open(os.path.join(root, "cgroup.controllers")) as f:
            return set(f.read().split())
    except OSError:
        return set()


def has_cgroup2_memory() -> bool:
    """The memory controller is on cgroup v2 (memory.current, memory.reclaim, ... of its cgroups)."""
    return "memory" in cgroup2_controllers()


def has_memory_reclaim() -> bool:
    """Proactive reclaim by cgroup: memory.reclaim in cgroup v2 (Linux 5.19+) or openEuler's cgroup v1."""
    mounts = cgroup_mounts()
    if has_cgroup2_memory() and os.path.exists(os.path.join(mounts["cgroup2"], "memory.reclaim")):
        return True
    return "memory" in mounts and os.path.exists(os.path.join(mounts["memory"], "memory.reclaim"))


def _psi_missing() -> str:
    config = kernel_config()
    if config and config.get("CONFIG_PSI") != "y":
        need = "the kernel needs CONFIG_PSI=y"
    elif config.get("CONFIG_PSI_DEFAULT_DISABLED") == "y":
        need = "this kernel has PSI off unless booted with psi=1 (CONFIG_PSI_DEFAULT_DISABLED=y): add psi=1 to its command line"
    elif config:
        need = "PSI is turned off on the kernel command line (psi=0): boot without it, or with psi=1"
    else:
        need = "the kernel needs CONFIG_PSI=y, and psi=1 on its command line if built with CONFIG_PSI_DEFAULT_DISABLED=y"
    return f"{PRESSURE_MEMORY} is missing: {need}"


def _cgroup2_memory_missing() -> str:
    mounts = cgroup_mounts()
    if "cgroup2" not in mounts:
        text = "cgroup v2 is not mounted (mount -t cgroup2 none /sys/fs/cgroup)"
    elif kernel_config() and kernel_config().get("CONFIG_MEMCG") != "y":
        return "no cgroup v2 memory controller: the kernel needs CONFIG_MEMCG=y"
    else:
        text = f"cgroup v2 at {mounts['cgroup2']} has no memory controller"
    if "memory" in mounts:
        text += (f"; the memory controller is bound to cgroup v1 at {mounts['memory']}: boot with "
                 "systemd.unified_cgroup_hierarchy=1 (or cgroup_no_v1=memory) to have it on cgroup v2")
    return f"no cgroup v2 memory controller: {text}"


def swap_active() -> bool:
    """At least one swap area is on (/proc/swaps)."""
    with open("/proc/swaps") as f:
        return len(f.read().splitlines()) > 1


def missing(feature: str) -> str:
    """A sentence naming what the kernel lacks for feature, for error messages."""
    if feature == "psi":
        return _psi_missing()
    if feature == "cgroup2_memory":
        return _cgroup2_memory_missing()
    return {
        "idle_pages": "/proc/PID/idle_pages is missing: it needs openEuler's etmem_scan kernel module (modprobe etmem_scan)",
        "swap_pages": "/proc/PID/swap_pages is missing: it needs openEuler's etmem_swap kernel module (modprobe etmem_swap)",
        "page_idle": f"{PAGE_IDLE_BITMAP} is missing: the kernel needs CONFIG_IDLE_PAGE_TRACKING=y",
        "damon": f"{DAMON_ADMIN} with the 'vaddr' operations is missing: the kernel needs CONFIG_DAMON_SYSFS=y and CONFIG_DAMON_VADDR=y",
        "process_madvise": "process_madvise(2) is missing: the kernel needs Linux 5.10 or newer",
        "pidfd": "pidfd_open(2) is missing: the kernel needs Linux 5.3 or newer",
        "swap": "no swap device is active: add one (a zram device or a partition, see docs/swap.md)",
        "memory_reclaim": ("memory.reclaim is missing: proactive reclaim needs the cgroup v2 memory controller "
                           "on Linux 5.19 or newer, or an openEuler kernel's cgroup v1 memory.reclaim"),
        "cgroup1_psi": ("memory.pressure is missing from cgroup v1's cpuacct cgroups: openEuler kernels need "
                        "CONFIG_PSI_CGROUP_V1=y and psi=1 psi_v1=1 on the kernel command line"),
    }[feature]


# --- DAMON schemes: which actions and quota goals this kernel's DAMON has --------------

# DAMOS actions: the Linux release whose DAMON knows the name, and the one whose `vaddr`
# operations (process memory, what etmem monitors) apply it; None: only `paddr` applies it.
DAMOS_ACTIONS = {
    "willneed": ((5, 16), (5, 16)),
    "cold": ((5, 16), (5, 16)),
    "pageout": ((5, 16), (5, 16)),
    "hugepage": ((5, 16), (5, 16)),
    "nohugepage": ((5, 16), (5, 16)),
    "stat": ((5, 16), (5, 16)),
    "lru_prio": ((6, 0), None),
    "lru_deprio": ((6, 0), None),
    "migrate_hot": ((6, 11), (6, 17)),
    "migrate_cold": ((6, 11), (6, 17)),
}
# quota goal metrics: the release that has each (quota goals came in 6.8, with user_input only)
DAMOS_QUOTA_GOALS = {"user_input": (6, 8), "some_mem_psi_us": (6, 9)}


def linux_version() -> tuple[int, int]:
    """(major, minor) of the running kernel, from uname (e.g. (6, 12))."""
    release = os.uname().release
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _release(version: tuple[int, int]) -> str:
    return f"Linux {version[0]}.{version[1]}"


def damon_action_problem(action: str) -> str | None:
    """Why DAMON's `vaddr` operations on this kernel cannot apply `action` to a process's memory; None when they can.

    The kernel accepts every action name it knows for any operations set and silently does
    nothing where the operations do not apply it, so this is judged by release and config.
    """
    if action not in DAMOS_ACTIONS:
        return f"DAMON has no action '{action}' (it has: {', '.join(DAMOS_ACTIONS)})"
    known, vaddr = DAMOS_ACTIONS[action]
    if vaddr is None:
        return (f"DAMON's action {action} ({_release(known)}) is applied only to physical memory (the paddr "
                f"operations); for process memory (vaddr, what etmem monitors) the kernel does nothing with it")
    running = linux_version()
    if running < vaddr:
        return (f"DAMON's action {action} on process memory (vaddr) needs {_release(vaddr)} or newer; "
                f"this kernel is {os.uname().release}")
    if action.startswith("migrate_") and kernel_config().get("CONFIG_MIGRATION", "y") != "y":
        return f"DAMON's action {action} needs page migration: the kernel needs CONFIG_MIGRATION=y"
    return None


def damon_quota_goal_problem(metric: str) -> str | None:
    """Why this kernel's DAMON cannot tune a scheme's quota towards `metric`; None when it can."""
    since = DAMOS_QUOTA_GOALS.get(metric)
    if since is None:
        return f"DAMON has no quota goal metric '{metric}' (etmem uses: {', '.join(DAMOS_QUOTA_GOALS)})"
    if linux_version() < since:
        return (f"DAMON's quota goal {metric} needs {_release(since)} or newer; "
                f"this kernel is {os.uname().release}")
    if metric == "some_mem_psi_us" and not has_psi():
        return f"DAMON's quota goal {metric} follows memory pressure, but {missing('psi')}"
    return None
