"""The kernel's binary interface as etmem calls it: syscall numbers, madvise advice, ioctl
requests and flags, and the one libc handle every ctypes call goes through.

Numbers are those of Linux on x86_64 (the syscall numbers differ on other architectures).
"""
from __future__ import annotations

import ctypes

# --- syscalls (x86_64) --------------------------------------------------------
SYS_move_pages = 279
SYS_pidfd_open = 434
SYS_process_madvise = 440

# --- madvise(2) advice ----------------------------------------------------------
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_PAGEOUT = 21

# --- ioctl request numbers ------------------------------------------------------
_IOC_WRITE = 1


def _IOW(magic: int, nr: int, size: int) -> int:
    """The kernel's _IOW(magic, nr, size): a request that writes size bytes to the driver."""
    return (_IOC_WRITE << 30) | (size << 16) | (magic << 8) | nr


_UINT = ctypes.sizeof(ctypes.c_uint)

# openEuler's etmem_scan, on an open /proc/PID/idle_pages: _IOW(0x66, nr, unsigned int).
# etmem adds flags to the file it opens afresh for each pass and never removes them
# (the REMOVE requests are nr 1 and 3); older modules lack IDLE_SCAN_ADD_FLAGS.
IDLE_SCAN_ADD_FLAGS = _IOW(0x66, 0, _UINT)
VMA_SCAN_ADD_FLAGS = _IOW(0x66, 2, _UINT)
# their flag values (the same numbers are upstream's C engine ABI)
SCAN_AS_HUGE = 0o100000000     # report a huge page as one entry
SCAN_IGN_HOST = 0o200000000    # KVM guest memory: the EPT only, not the host page table
VMA_SCAN_FLAG = 0x1000         # only VMAs madvised with MADV_SWAPFLAG

# openEuler's etmem_swap, on an open /proc/PID/swap_pages: _IOW(0x77, nr, unsigned int)
RECLAIM_SWAPCACHE_ON = _IOW(0x77, 1, _UINT)
SET_SWAPCACHE_WMARK = _IOW(0x77, 2, _UINT)   # arg: low | high << 8, percent of RAM

# --- libc -------------------------------------------------------------------------
# One handle for the whole process: each user sets the prototypes of the functions it calls.
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
