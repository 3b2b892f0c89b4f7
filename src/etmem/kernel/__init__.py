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
    "DAMON_ADMIN", "PAGE_IDLE_BITMAP", "damon_operations", "has_page_idle", "has_pidfd",
    "has_process_madvise", "has_swap_pages", "kernel_config", "missing", "swap_active",
    # from kernel.abi, also here: callers use kernel.libc and kernel.SYS_*
    "SYS_move_pages", "SYS_pidfd_open", "SYS_process_madvise", "libc",
]

PAGE_IDLE_BITMAP = "/sys/kernel/mm/page_idle/bitmap"
DAMON_ADMIN = "/sys/kernel/mm/damon/admin"


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


def swap_active() -> bool:
    """At least one swap area is on (/proc/swaps)."""
    with open("/proc/swaps") as f:
        return len(f.read().splitlines()) > 1


def missing(feature: str) -> str:
    """A sentence naming what the kernel lacks for feature, for error messages."""
    return {
        "idle_pages": "/proc/PID/idle_pages is missing: it needs openEuler's etmem_scan kernel module (modprobe etmem_scan)",
        "swap_pages": "/proc/PID/swap_pages is missing: it needs openEuler's etmem_swap kernel module (modprobe etmem_swap)",
        "page_idle": f"{PAGE_IDLE_BITMAP} is missing: the kernel needs CONFIG_IDLE_PAGE_TRACKING=y",
        "damon": f"{DAMON_ADMIN} with the 'vaddr' operations is missing: the kernel needs CONFIG_DAMON_SYSFS=y and CONFIG_DAMON_VADDR=y",
        "process_madvise": "process_madvise(2) is missing: the kernel needs Linux 5.10 or newer",
        "pidfd": "pidfd_open(2) is missing: the kernel needs Linux 5.3 or newer",
        "swap": "no swap device is active: add one (a zram device or a partition, see docs/swap.md)",
    }[feature]
