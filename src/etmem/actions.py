"""Memory actions on a target process: swap pages out, find and move pages between NUMA nodes.

Each action takes a `ProcessHandle` (a pidfd) and a numpy array of addresses, and
never touches another process: swap-out goes through the pidfd (process_madvise) or
through /proc/PID/swap_pages opened and then checked against the handle; move_pages
(which only takes a pid) checks the handle right before and after every batch.
Only pages inside the target's own private VMAs are swapped; locked and hugetlb
VMAs are skipped and counted. Every kernel call is counted in a `CallCounters`.
See docs/actions.md.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from . import kernel, procfs
from .errors import ActionError, EtmemError, ProcessGone
from .kernel.abi import MADV_PAGEOUT, RECLAIM_SWAPCACHE_ON, SET_SWAPCACHE_WMARK, SYS_move_pages, SYS_process_madvise, libc
from .pages import PAGE, page_addresses, union
from .process import ProcessHandle
from .stats import CallCounters, errno_name

log = logging.getLogger("etmem.actions")

IOV_MAX = 1024              # process_madvise refuses more iovecs per call (EINVAL)
MPOL_MF_MOVE = 1 << 1       # move pages mapped only by this process
MOVE_BATCH = 16384          # pages per move_pages call: bounds the pid window and the arrays
SWAP_PAGES_WRITE = 4096     # bytes per write to /proc/PID/swap_pages, whole lines only
SWAP_LINE = 19              # "0x" + 16 hex digits + "\n"
QUOTA_SKIPPED = -errno.EDQUOT   # move_pages status of a page left out because the quota ran out

IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])

# VMA eligibility for swap-out
_OK, _LOCKED, _HUGETLB, _OUTSIDE = 0, 1, 2, 3
_INELIGIBLE_FLAGS = frozenset({"io", "pf", "dd"})   # device I/O, raw PFN maps, excluded from dumps


@dataclass
class SwapResult:
    """What one swap_out did. Counts are in base pages (PAGE bytes each).

    `requested`: distinct pages asked for; `accepted`: pages the kernel took
    (process_madvise's advised bytes / PAGE, or lines written to swap_pages), which the
    call counters count too; `done`: pages this call took out of memory, as the target's
    pagemap shows them (present before; in swap after, or present on another page frame
    because the process faulted it back in meanwhile), and `pages_out` their addresses.
    The kernel accepts pages it then leaves in memory (swap full, pages shared with
    another process, pinned or under writeback): they are in `accepted`, not in `done`.
    `error` is None, or the one-line reason the action was skipped or stopped; `stopped`
    says the caller's `stop` ended it early (then `error` says after how many pages, and
    swap_out itself logs nothing: the caller logs it once).
    """

    requested: int = 0
    accepted: int = 0
    done: int = 0
    pages_out: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    skipped_locked: int = 0
    skipped_hugetlb: int = 0
    skipped_outside: int = 0
    method: str = "none"
    error: str | None = None
    calls: int = 0
    stopped: bool = False

    @property
    def bytes_done(self) -> int:
        return self.done * PAGE


@dataclass
class MoveResult:
    """What one move_pages did: `status` per address (node, or -errno; QUOTA_SKIPPED if not tried)."""

    status: np.ndarray
    node: int
    moved: int = 0
    failed_by_errno: dict = field(default_factory=dict)
    bytes_moved: int = 0
    quota_exhausted: bool = False


_last_warning: dict[str, float] = {}


def _warn(message: str, every: float = 60.0) -> None:
    """Log a warning, but the same sentence at most once per `every` seconds (tasks run in loops)."""
    now = time.monotonic()
    if now - _last_warning.get(message, -every - 1) > every:
        _last_warning[message] = now
        log.warning("%s", message)


# --- address sets -----------------------------------------------------------

def _ranges(addrs, sizes) -> tuple[np.ndarray, np.ndarray]:
    """Page-aligned, sorted, non-overlapping [start, end) ranges covering the request."""
    a = np.asarray(addrs, dtype=np.uint64).ravel()
    if a.size == 0:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    mask = np.uint64(PAGE - 1)
    starts = a & ~mask
    if sizes is None:   # the page holding each address
        ends = starts + np.uint64(PAGE)
        if starts.size < 2 or bool((starts[1:] > starts[:-1]).all()):
            return starts, ends     # already sorted and distinct (the usual case): nothing to merge yet
    else:               # every page touched by [addr, addr + size)
        s = np.broadcast_to(np.asarray(sizes, dtype=np.uint64), a.shape)
        ends = np.maximum((a + s + mask) & ~mask, starts + np.uint64(PAGE))
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    return union(starts, ends)


def _split_at(starts: np.ndarray, ends: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut ranges at every boundary address in sorted `bounds` that falls strictly inside one."""
    lo = np.searchsorted(bounds, starts, side="right")
    hi = np.searchsorted(bounds, ends, side="left")
    cuts = hi - lo
    if not cuts.any():
        return starts, ends
    pieces = cuts + 1
    owner = np.repeat(np.arange(starts.size), pieces)
    first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
    k = np.arange(owner.size) - first_piece
    inner_lo = bounds[np.minimum(lo[owner] + k - 1, bounds.size - 1)]
    inner_hi = bounds[np.minimum(lo[owner] + k, bounds.size - 1)]
    new_starts = np.where(k == 0, starts[owner], inner_lo)
    new_ends = np.where(k == cuts[owner], ends[owner], inner_hi)
    return new_starts, new_ends


def _vma_kind(vma: procfs.Vma) -> int:
    if "ht" in vma.vmflags:
        return _HUGETLB
    if not vma.is_private or vma.is_special or vma.vmflags & _INELIGIBLE_FLAGS:
        return _OUTSIDE
    if "lo" in vma.vmflags:
        return _LOCKED
    return _OK


def _classify(starts: np.ndarray, ends: np.ndarray, vmas: list[procfs.Vma]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ranges at VMA edges; return (starts, ends, kind) with kind _OK/_LOCKED/_HUGETLB/_OUTSIDE."""
    if not vmas:
        return starts, ends, np.full(starts.shape, _OUTSIDE)
    vstart = np.fromiter((v.start for v in vmas), dtype=np.uint64, count=len(vmas))
    vend = np.fromiter((v.end for v in vmas), dtype=np.uint64, count=len(vmas))
    vkind = np.fromiter((_vma_kind(v) for v in vmas), dtype=np.int8, count=len(vmas))
    bounds = np.unique(np.concatenate([vstart, vend]))
    starts, ends = _split_at(starts, ends, bounds)
    idx = np.searchsorted(vstart, starts, side="right") - 1
    safe = np.maximum(idx, 0)
    inside = (idx >= 0) & (ends <= vend[safe])
    kind = np.where(inside, vkind[safe], _OUTSIDE)
    return starts, ends, kind


def _pages(starts: np.ndarray, ends: np.ndarray) -> int:
    return int(((ends - starts) // np.uint64(PAGE)).sum())


def iovecs(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A struct iovec array (base, len) for ranges, contiguous ones merged into one entry."""
    starts, ends = union(np.asarray(starts, np.uint64), np.asarray(ends, np.uint64))
    iov = np.empty(starts.size, dtype=IOVEC)
    iov["base"] = starts
    iov["len"] = ends - starts
    return iov


def encode_swap_pages(page_addrs: np.ndarray) -> np.ndarray:
    """Lines `0x%016x\\n` for /proc/PID/swap_pages as an (n, 19) uint8 array (no Python loop)."""
    a = np.asarray(page_addrs, dtype=np.uint64)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nibbles = ((a[:, None] >> shifts) & np.uint64(0xF)).astype(np.uint8)
    out = np.empty((a.size, SWAP_LINE), dtype=np.uint8)
    out[:, 0] = ord("0")
    out[:, 1] = ord("x")
    out[:, 2:18] = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    out[:, 18] = ord("\n")
    return out


# --- swap out ---------------------------------------------------------------

#: What swap_out's `stop` may be: an Event (a task's stop event) or a callable that returns
#: True once the caller wants the swap-out to end.
Stop = Union[threading.Event, Callable[[], bool], None]


def _stop_test(stop: Stop) -> Callable[[], bool]:
    if stop is None:
        return lambda: False
    if isinstance(stop, threading.Event):
        return stop.is_set
    if callable(stop):
        return stop
    raise ActionError(f"swap_out's stop must be a threading.Event or a callable returning a bool, "
                      f"not {type(stop).__name__}")


def _stopped(result: SwapResult, target: ProcessHandle, pages: int) -> None:
    """Record in result that the caller's stop ended the swap-out with `pages` pages sent to the kernel."""
    result.stopped = True
    result.error = (f"swap-out of process {target.pid} stopped early on request: {pages} of "
                    f"{result.requested} pages were given to the kernel")

def _swap_problem() -> str | None:
    devices = procfs.swap_devices()
    if not devices:
        return kernel.missing("swap")
    free_kb = sum(d["size_kb"] - d["used_kb"] for d in devices)
    if free_kb * 1024 < PAGE:
        names = ", ".join(d["name"] for d in devices)
        return f"swap is full ({names}): no page can be swapped out until swap space is freed or added"
    return None


def swap_out(target: ProcessHandle, addrs: np.ndarray, sizes: np.ndarray | None = None,
             counters: CallCounters | None = None, method: str = "auto", stop: Stop = None) -> SwapResult:
    """Swap out the pages at `addrs` (each `sizes` bytes, default one page) of `target`.

    method: 'auto' (swap_pages where the kernel has it, else process_madvise),
    'swap_pages' or 'process_madvise'. Pages outside the target's private VMAs, in
    locked or in hugetlb VMAs are skipped and counted. A missing or full swap, or a
    kernel without the interface, returns a result with `error` set (one log line)
    and does nothing. Raises ProcessGone when the target has exited.

    `stop` (a threading.Event, or a callable returning True) is looked at before the
    work begins and before every kernel call (IOV_MAX iovecs of process_madvise, or
    SWAP_PAGES_WRITE bytes of swap_pages): once it is set the rest is left alone and
    the result has `stopped` set, so stopping a task need not wait for a swap-out of
    gigabytes.
    """
    if method not in ("auto", "swap_pages", "process_madvise"):
        raise ActionError(f"unknown swap-out method {method!r}: expected auto, swap_pages or process_madvise")
    counters = counters if counters is not None else CallCounters()
    should_stop = _stop_test(stop)
    target.check()
    starts, ends = _ranges(addrs, sizes)
    result = SwapResult(requested=_pages(starts, ends))
    if result.requested == 0:
        return result
    if should_stop():
        _stopped(result, target, 0)
        return result

    if method == "auto":
        if kernel.has_swap_pages(target.pid):
            method = "swap_pages"
        elif kernel.has_process_madvise():
            method = "process_madvise"
        else:
            result.error = f"{kernel.missing('process_madvise')}, and {kernel.missing('swap_pages')}; swap-out skipped"
            _warn(result.error)
            return result
    elif method == "swap_pages" and not kernel.has_swap_pages(target.pid):
        result.error = f"{kernel.missing('swap_pages')}; swap-out skipped"
        _warn(result.error)
        return result
    elif method == "process_madvise" and not kernel.has_process_madvise():
        result.error = f"{kernel.missing('process_madvise')}; swap-out skipped"
        _warn(result.error)
        return result
    result.method = method

    problem = _swap_problem()
    if problem:
        result.error = f"{problem}; swap-out of process {target.pid} skipped"
        _warn(result.error)
        return result

    try:
        vmas = procfs.vmas(target.pid)
    except procfs.ProcError as exc:
        target.check()
        raise ActionError(f"cannot read the memory map of process {target.pid}: {exc}") from None
    target.check()   # the map just read belongs to our process, not to a namesake
    starts, ends, kind = _classify(starts, ends, vmas)
    result.skipped_locked = _pages(starts[kind == _LOCKED], ends[kind == _LOCKED])
    result.skipped_hugetlb = _pages(starts[kind == _HUGETLB], ends[kind == _HUGETLB])
    result.skipped_outside = _pages(starts[kind == _OUTSIDE], ends[kind == _OUTSIDE])
    ok = kind == _OK
    starts, ends = union(starts[ok], ends[ok])
    pages = page_addresses(starts, ends)
    if pages.size:
        before = _pagemap_entries(target, pages)
        if method == "process_madvise":
            _pageout_madvise(target, iovecs(starts, ends), counters, result, should_stop)
        else:
            _pageout_swap_pages(target, pages, counters, result, should_stop)
        result.pages_out = pages[_left_memory(before, _pagemap_entries(target, pages))]
        result.done = int(result.pages_out.size)
    if result.error is None and 0 < result.accepted and result.done < pages.size:
        full = _swap_problem()
        if full:
            result.error = f"{full} (it filled during this swap-out; some pages stayed in memory)"
            _warn(result.error)
    log.debug("swap_out pid %d via %s: %d of %d pages (the kernel accepted %d), skipped %d locked, %d hugetlb, "
              "%d outside", target.pid, result.method, result.done, result.requested, result.accepted,
              result.skipped_locked, result.skipped_hugetlb, result.skipped_outside)
    return result


_PRESENT, _SWAPPED, _PFN = np.uint64(1 << 63), np.uint64(1 << 62), np.uint64((1 << 55) - 1)


def _left_memory(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Which pages a swap-out took out of memory, from their pagemap entries before and after.

    A page that was present left if it is in swap now, or present on another page frame: it
    went out and was faulted back in during the call (a busy page; the refault guard must
    see it). One on the same frame never left (swap full, shared, pinned). PFNs read as 0
    without CAP_SYS_ADMIN, and then only the pages still in swap are seen.
    """
    was_present = (before & _PRESENT) != 0
    in_swap = (after & _SWAPPED) != 0
    pfn_before, pfn_after = before & _PFN, after & _PFN
    moved = ((after & _PRESENT) != 0) & (pfn_before != pfn_after) & (pfn_before != 0)
    return was_present & (in_swap | moved)


def _pagemap_entries(target: ProcessHandle, pages: np.ndarray) -> np.ndarray:
    """The target's pagemap entry of each page (sorted addresses); 0 past the end of its map.

    One read per run of the 2 MiB blocks (512 entries) the pages touch, so scattered
    pages cost a 4 KiB read per block and a range one read. Raises ProcessGone once the
    target has exited: a read after that would be of its remains or of a namesake.
    """
    index = (pages // np.uint64(PAGE)).astype(np.int64)
    blocks = np.unique(index >> 9)
    starts_run = np.ones(blocks.size, dtype=bool)
    starts_run[1:] = np.diff(blocks) != 1
    first = np.flatnonzero(starts_run)                  # each run of adjacent blocks is one read
    lengths = np.diff(np.append(first, blocks.size))
    table = np.zeros(blocks.size * 512, dtype=np.uint64)
    raw = memoryview(table).cast("B")
    path = f"/proc/{target.pid}/pagemap"
    try:
        with open(path, "rb", buffering=0) as f:
            for row, count in zip(first.tolist(), lengths.tolist()):
                f.seek(int(blocks[row]) * 512 * 8)
                at, end = row * 512 * 8, (row + count) * 512 * 8
                while at < end:
                    got = f.readinto(raw[at:end])
                    if not got:
                        break
                    at += got
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.ENOENT) or not target.alive():   # ESRCH: its memory is gone, it is exiting
            raise ProcessGone(f"process {target.pid} ({target.comm}) exited during swap-out") from None
        raise ActionError(f"cannot read {path} to see what was swapped out: {exc.strerror}") from None
    if not target.alive():
        raise ProcessGone(f"process {target.pid} ({target.comm}) exited during swap-out")
    slot = np.searchsorted(blocks, index >> 9) * 512 + (index & 511)
    return table[slot]


_STOP_ERRNOS = {errno.EPERM: "permission denied (swap-out of another process needs CAP_SYS_NICE / root)",
                errno.EBADF: "the pidfd is not valid",
                errno.ENOSYS: kernel.missing("process_madvise")}


def _pageout_madvise(target: ProcessHandle, iov: np.ndarray, counters: CallCounters, result: SwapResult,
                     should_stop: Callable[[], bool] = lambda: False) -> None:
    """process_madvise(MADV_PAGEOUT) over iov, IOV_MAX entries per call; per-range errors skip
    that range; should_stop() before each call ends it early."""
    syscall = libc.syscall
    base = iov.ctypes.data
    lens = iov["len"]
    n = iov.size
    pos = 0
    consecutive_errors = 0
    done_bytes = 0
    ends_at = np.zeros(n + 1, dtype=np.uint64)     # ends_at[i]: bytes in the iovecs before i
    np.cumsum(lens, out=ends_at[1:])
    while pos < n:
        if should_stop():
            _stopped(result, target, int(ends_at[pos]) // PAGE)
            break
        count = min(IOV_MAX, n - pos)
        batch_bytes = int(ends_at[pos + count] - ends_at[pos])
        rc = syscall(SYS_process_madvise, target.fd, ctypes.c_void_p(base + pos * IOVEC.itemsize),
                     ctypes.c_size_t(count), MADV_PAGEOUT, 0)
        result.calls += 1
        if rc >= 0:
            consecutive_errors = 0
            done_bytes += rc
            counters.record("process_madvise", batch_bytes // PAGE, rc // PAGE, rc)
            if rc == batch_bytes:
                pos += count
                continue
            # Partial: the kernel stopped inside this batch. Resume at the first byte not done.
            done_in = np.cumsum(lens[pos:pos + count], dtype=np.uint64)
            whole = int(np.searchsorted(done_in, np.uint64(rc), side="right"))
            pos += whole
            already = rc - (int(done_in[whole - 1]) if whole else 0)
            if already:
                iov["base"][pos] += np.uint64(already)
                iov["len"][pos] -= np.uint64(already)
                ends_at[pos] += np.uint64(already)
            continue
        err = ctypes.get_errno()
        if err == errno.EINTR or (err == errno.EAGAIN and consecutive_errors < 3):
            consecutive_errors += 1
            continue
        first = int(lens[pos])
        counters.record("process_madvise", batch_bytes // PAGE, 0, 0, err)
        if err == errno.ESRCH:
            raise ProcessGone(f"process {target.pid} ({target.comm}) exited during swap-out")
        if err in _STOP_ERRNOS:
            result.error = f"process_madvise on process {target.pid}: {_STOP_ERRNOS[err]}"
            _warn(result.error)
            break
        # The first range of the batch failed (EINVAL, ENOMEM, EFAULT: it changed since we read
        # the map). Skip that range only.
        log.debug("process_madvise pid %d: range %#x+%d: %s", target.pid, int(iov["base"][pos]), first, errno_name(err))
        consecutive_errors += 1
        if consecutive_errors > 64:
            result.error = f"process_madvise on process {target.pid} keeps failing ({errno_name(err)}: {os.strerror(err)}); swap-out stopped"
            _warn(result.error)
            break
        pos += 1
    result.accepted += done_bytes // PAGE


def _pageout_swap_pages(target: ProcessHandle, pages: np.ndarray, counters: CallCounters, result: SwapResult,
                        should_stop: Callable[[], bool] = lambda: False) -> None:
    """Write page addresses to /proc/PID/swap_pages in whole lines per write."""
    path = f"/proc/{target.pid}/swap_pages"
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        target.check()
        result.error = f"cannot open {path}: {exc.strerror}; swap-out skipped"
        _warn(result.error)
        return
    try:
        # An open /proc/PID file stays bound to the process it was opened for; if that is
        # still ours now, every write below goes to our process.
        target.check()
        write_swap_lines(fd, encode_swap_pages(pages), counters, result, target, should_stop)
    finally:
        os.close(fd)


def write_swap_lines(fd: int, lines: np.ndarray, counters: CallCounters, result: SwapResult,
                     target: ProcessHandle, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Write (n, SWAP_LINE) lines to fd, at most SWAP_PAGES_WRITE bytes and only whole lines per
    write; should_stop() before each chunk ends it early."""
    per_write = SWAP_PAGES_WRITE // SWAP_LINE
    path = f"/proc/{target.pid}/swap_pages"
    for first in range(0, len(lines), per_write):
        if should_stop():
            _stopped(result, target, first)
            return
        chunk = np.ascontiguousarray(lines[first:first + per_write])
        data = memoryview(chunk).cast("B")
        written = 0
        try:
            while written < len(data):
                n = os.write(fd, data[written:])
                result.calls += 1
                if n <= 0:
                    raise OSError(errno.EIO, "the kernel accepted no bytes")
                written += n
        except OSError as exc:
            done = written // SWAP_LINE
            counters.record("swap_pages", len(chunk), done, done * PAGE, exc.errno or 0)
            result.accepted += done
            if exc.errno == errno.ESRCH:
                raise ProcessGone(f"process {target.pid} ({target.comm}) exited during swap-out") from None
            result.error = f"writing {path}: {exc.strerror}; swap-out stopped"
            _warn(result.error)
            return
        counters.record("swap_pages", len(chunk), len(chunk), len(chunk) * PAGE)
        result.accepted += len(chunk)


# --- NUMA -------------------------------------------------------------------

def _page_addrs(addrs) -> np.ndarray:
    a = np.asarray(addrs, dtype=np.uint64).ravel()
    return np.ascontiguousarray(a & ~np.uint64(PAGE - 1))


def _move_pages_call(pid: int, pages: np.ndarray, nodes: np.ndarray | None, status: np.ndarray) -> int:
    """One move_pages(2); returns 0 or the errno."""
    rc = libc.syscall(SYS_move_pages, pid, ctypes.c_ulong(pages.size),
                      ctypes.c_void_p(pages.ctypes.data),
                      None if nodes is None else ctypes.c_void_p(nodes.ctypes.data),
                      ctypes.c_void_p(status.ctypes.data), MPOL_MF_MOVE)
    return 0 if rc >= 0 else ctypes.get_errno()


def _call_error(call: str, target: ProcessHandle, err: int, node: int | None = None) -> EtmemError:
    if err == errno.ESRCH:
        return ProcessGone(f"process {target.pid} ({target.comm}) exited during {call}")
    if err == errno.ENODEV:
        nodes = ", ".join(str(n) for n in procfs.memory_nodes())
        return ActionError(f"node {node} does not exist (this machine has nodes {nodes})")
    if err in (errno.EPERM, errno.EACCES):
        return ActionError(f"{call} on process {target.pid}: permission denied (needs root / CAP_SYS_NICE)")
    if err == errno.ENOMEM:
        return ActionError(f"{call} on process {target.pid}: the kernel is out of memory")
    if err == errno.ENOSYS:
        return ActionError(f"{call}: move_pages(2) is missing: the kernel needs CONFIG_NUMA=y")
    return ActionError(f"{call} on process {target.pid}: {errno_name(err)} ({os.strerror(err)})")


def page_nodes(target: ProcessHandle, addrs, counters: CallCounters | None = None) -> np.ndarray:
    """The NUMA node of each page at `addrs` (int32), or -errno (-ENOENT: not present, -EFAULT: unmapped)."""
    counters = counters if counters is not None else CallCounters()
    pages = _page_addrs(addrs)
    status = np.empty(pages.size, dtype=np.int32)
    for first in range(0, pages.size, MOVE_BATCH):
        chunk = pages[first:first + MOVE_BATCH]
        out = status[first:first + MOVE_BATCH]
        target.check()
        err = _move_pages_call(target.pid, chunk, None, out)
        counters.record("move_pages_query", chunk.size, 0 if err else int((out >= 0).sum()), 0, err)
        target.check()
        if err:
            raise _call_error("the node query (move_pages)", target, err)
    return status


def move_pages(target: ProcessHandle, addrs, node: int, quota_mb: float | None = None,
               counters: CallCounters | None = None) -> MoveResult:
    """Move the pages at `addrs` to NUMA `node`, at most `quota_mb` MB of them (None: no limit).

    The batch size is MOVE_BATCH pages. move_pages(2) takes a pid, not a pidfd, so the
    handle is checked right before and after each batch (see docs/actions.md). Pages past
    the quota get status QUOTA_SKIPPED and set `quota_exhausted`. A node that does not
    exist raises ActionError; per-page failures are kept in `status` and `failed_by_errno`.
    """
    counters = counters if counters is not None else CallCounters()
    node = int(node)
    if node < 0:
        raise ActionError(f"node {node} is not a NUMA node number (nodes are 0 or more)")
    pages = _page_addrs(addrs)
    status = np.full(pages.size, QUOTA_SKIPPED, dtype=np.int32)
    result = MoveResult(status=status, node=node)
    limit = pages.size
    if quota_mb is not None:
        if quota_mb < 0:
            raise ActionError(f"node_mig_quota {quota_mb} MB is negative")
        limit = min(limit, int(quota_mb * (1 << 20)) // PAGE)
        result.quota_exhausted = limit < pages.size
    nodes = np.full(min(limit, MOVE_BATCH), node, dtype=np.int32)
    for first in range(0, limit, MOVE_BATCH):
        chunk = pages[first:min(first + MOVE_BATCH, limit)]
        out = status[first:first + chunk.size]
        target.check()
        err = _move_pages_call(target.pid, chunk, nodes[:chunk.size], out)
        if err:
            out[:] = QUOTA_SKIPPED
            counters.record("move_pages", chunk.size, 0, 0, err)
            target.check()
            raise _call_error("move_pages", target, err, node)
        target.check()
        moved = int((out == node).sum())
        failed = out[out < 0]
        codes, counts = np.unique(-failed, return_counts=True)
        by_errno = dict(zip(codes.tolist(), counts.tolist()))
        counters.record("move_pages", chunk.size, moved, moved * PAGE)
        if by_errno:
            counters.record_errors("move_pages", by_errno)
        result.moved += moved
        for code, count in by_errno.items():
            name = errno_name(code)
            result.failed_by_errno[name] = result.failed_by_errno.get(name, 0) + count
    result.bytes_moved = result.moved * PAGE
    if result.quota_exhausted:
        log.debug("move_pages pid %d: quota %.1f MB reached, %d pages left for later", target.pid, quota_mb, pages.size - limit)
    return result


# --- swap cache watermarks --------------------------------------------------

_logged_no_wmark = False


def set_swapcache_watermarks(target: ProcessHandle, low_percent: int, high_percent: int) -> bool:
    """Set the swap cache reclaim watermarks (percent of RAM) through /proc/PID/swap_pages.

    True when set; False (with one log line per daemon run) when the kernel lacks
    openEuler's etmem_swap ioctls.
    """
    global _logged_no_wmark
    low, high = int(low_percent), int(high_percent)
    if not (1 <= low < high <= 100):
        raise ActionError(f"swapcache watermarks need 1 <= low < high <= 100 (got low={low}, high={high})")
    target.check()
    if not kernel.has_swap_pages(target.pid):
        if not _logged_no_wmark:
            _logged_no_wmark = True
            log.warning("swapcache_high_wmark/swapcache_low_wmark are ignored: %s", kernel.missing("swap_pages"))
        return False
    path = f"/proc/{target.pid}/swap_pages"
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        target.check()
        raise ActionError(f"cannot open {path}: {exc.strerror}") from None
    try:
        target.check()
        fcntl.ioctl(fd, SET_SWAPCACHE_WMARK, struct.pack("I", low | high << 8))
        fcntl.ioctl(fd, RECLAIM_SWAPCACHE_ON, struct.pack("I", 0))
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            if not _logged_no_wmark:
                _logged_no_wmark = True
                log.warning("swapcache_high_wmark/swapcache_low_wmark are ignored: this etmem_swap module has no swap cache ioctls")
            return False
        raise ActionError(f"setting swap cache watermarks of process {target.pid}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return True
