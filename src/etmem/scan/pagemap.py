"""Reading and decoding /proc/PID/pagemap: which pages of a range are present, swapped, and their PFNs.

Also the way every kernel file of the scanner is opened unless a test hands in its own
opener (`default_opener`).
"""
from __future__ import annotations

import numpy as np

from .. import _scan
from ..pages import PAGE, page_addresses

PAGEMAP_CHUNK = 1 << 16  # entries per pagemap read: 512 KiB, decoded while still in cache


def default_opener(path: str, mode: str = "rb"):
    """Open a kernel file unbuffered: /proc and sysfs files are read and written in whole calls."""
    return open(path, mode, buffering=0)


def decode_pagemap(raw: np.ndarray) -> dict[str, np.ndarray]:
    """Raw pagemap entries → dict of present, swapped, exclusive, file (bool) and pfn (uint64)."""
    raw = np.ascontiguousarray(raw, dtype=np.uint64)
    n = len(raw)
    flags = np.empty((4, n), dtype=np.uint8)
    pfn = np.empty(n, dtype=np.uint64)
    _scan.decode_pagemap(raw, flags[0], flags[1], flags[2], flags[3], pfn)
    b = flags.view(bool)
    return {"present": b[0], "swapped": b[1], "exclusive": b[2], "file": b[3], "pfn": pfn}


def decode_pagemap_file(f, start: int, end: int, buf: np.ndarray) -> dict[str, np.ndarray]:
    """Read the pagemap entries of [start, end) from the open file f, decoding chunk by chunk.

    Each chunk is decoded right after its read, while it is still in the CPU cache; pages
    past what the kernel returned read as absent. buf (uint64) is the read buffer.
    """
    n = (end - start) // PAGE
    flags = np.zeros((4, n), dtype=np.uint8)
    pfn = np.zeros(n, dtype=np.uint64)
    present, swapped, exclusive, file = flags
    raw = memoryview(buf).cast("B")
    f.seek(start // PAGE * 8)
    done = 0
    while done < n:
        want = min(n - done, len(buf))
        got = (f.readinto(raw[:want * 8]) or 0) // 8
        if not got:
            break
        hi = done + got
        _scan.decode_pagemap(buf[:got], present[done:hi], swapped[done:hi], exclusive[done:hi], file[done:hi], pfn[done:hi])
        done = hi
    b = flags.view(bool)
    return {"present": b[0], "swapped": b[1], "exclusive": b[2], "file": b[3], "pfn": pfn}


def read_pagemap(pid: int, start: int, end: int, opener=None) -> dict[str, np.ndarray]:
    """/proc/PID/pagemap of [start, end), decoded: present, swapped, exclusive, file (bool), pfn.

    One entry per 4 KiB page. PFNs are 0 for pages not present, and for all pages
    without CAP_SYS_ADMIN. Raises OSError as the kernel does.
    """
    f = (opener or default_opener)(f"/proc/{pid}/pagemap", "rb")
    try:
        return decode_pagemap_file(f, start, end, np.empty(PAGEMAP_CHUNK, dtype=np.uint64))
    finally:
        f.close()


def present_pages(pid: int, addr: np.ndarray, size: np.ndarray, opener=None) -> int:
    """How many pages of the (addr, size) entries are present in memory now (pagemap bit 63).

    For scattered page sets (such as the pages swapped out last round): one 4 KiB pagemap
    read per 2 MiB of address space touched, no Python work per page. 0 when the process
    has gone.
    """
    addr = np.asarray(addr, dtype=np.uint64)
    if not addr.size:
        return 0
    index = page_addresses(addr, addr + np.asarray(size, dtype=np.uint64)) // np.uint64(PAGE)
    chunks = np.unique(index >> np.uint64(9))           # 512 entries: one read each
    table = np.zeros((len(chunks), 512), dtype=np.uint64)
    try:
        f = (opener or default_opener)(f"/proc/{pid}/pagemap", "rb")
        try:
            for row, chunk in enumerate(chunks):
                f.seek(int(chunk) * 512 * 8)
                raw = np.frombuffer(f.read(512 * 8), dtype=np.uint64)
                table[row, :len(raw)] = raw
        finally:
            f.close()
    except OSError:
        return 0
    rows = np.searchsorted(chunks, index >> np.uint64(9))
    entries = table[rows, (index & np.uint64(511)).astype(np.int64)]
    return int(decode_pagemap(entries)["present"].sum())
