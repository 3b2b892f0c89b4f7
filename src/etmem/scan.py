"""The page access scanner: how often each page of a process was used, from the best source the kernel has.

`Scanner(pid).scan(loop, sleep)` runs `loop` passes `sleep` seconds apart and returns one
`PageRefs` (numpy arrays of address, access count and page size). Four sources:

- `idle_pages`: openEuler's /proc/PID/idle_pages (per page, accessed/dirty/idle);
- `page_idle`: upstream idle page tracking, /proc/PID/pagemap + /sys/kernel/mm/page_idle/bitmap;
- `damon`: DAMON virtual-address monitoring through /sys/kernel/mm/damon/admin;
- `smaps`: /proc/PID/clear_refs + smaps `Referenced:`, one verdict per VMA.

Every pass is a test-and-clear: it reports what was accessed since the previous pass (the
first pass: since the last time anything cleared the bits), then clears. docs/scanner.md
gives the exact count each source adds.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time

import numpy as np

from . import _scan, kernel, procfs
from .errors import EtmemError, KernelFeatureMissing, ProcessGone
from .pages import PAGE, page_addresses

log = logging.getLogger("etmem.scan")

PMD_SIZE = 2 << 20
PUD_SIZE = 1 << 30
SOURCES = ("idle_pages", "page_idle", "damon", "smaps")

# idle_pages scan-flag ioctls: _IOW(0x66, nr, unsigned int)
_IOW = lambda nr: (1 << 30) | (4 << 16) | (0x66 << 8) | nr  # noqa: E731
IDLE_SCAN_ADD_FLAGS, IDLE_SCAN_REMOVE_FLAGS = _IOW(0), _IOW(1)
VMA_SCAN_ADD_FLAGS, VMA_SCAN_REMOVE_FLAGS = _IOW(2), _IOW(3)
SCAN_AS_HUGE = 0o100000000
SCAN_IGN_HOST = 0o200000000
VMA_SCAN_FLAG = 0x1000

PAGE_IDLE_BITMAP = kernel.PAGE_IDLE_BITMAP
DAMON_ADMIN = kernel.DAMON_ADMIN
_PAGEMAP_CHUNK = 1 << 16  # entries per pagemap read: 512 KiB, decoded while still in cache
_BITMAP_WINDOW = 1 << 17  # bitmap words per read/write (1 MiB)
_IDLE_READ_MAX = 1 << 20  # bytes per idle_pages read

# kdamond directories this process created (as "N" strings); only these may be stopped
_OUR_KDAMONDS: set[str] = set()
_DAMON_LOCK = threading.Lock()
# The kernel runs one set of kdamonds, so etmem's DAMON scans take turns: a scan holds
# this from setting its kdamond up until it is removed; others wait (or their stop ends it).
_DAMON_TURN = threading.Lock()


class ScanError(EtmemError):
    """A scan could not run or was cut short; the message says why."""


class _PassEnded(Exception):
    """Internal: the current pass cannot go on (target gone, VMA vanished, refused)."""


def _default_opener(path: str, mode: str = "rb"):
    return open(path, mode, buffering=0)


class PageRefs:
    """The result of a scan: one entry per page (or huge page) seen, sorted by address.

    addr (uint64), count (int32, summed over passes), size (uint64 bytes), vma (int32 index
    into vmas). source names the source that ran; per_vma is True when every page of a VMA
    got its VMA's verdict (smaps); passes is how many passes completed; error is set when
    a pass was cut short.
    """

    def __init__(self, addr, count, size, vma, vmas, source, per_vma=False, passes=0, error=None):
        self.addr = addr
        self.count = count
        self.size = size
        self.vma = vma
        self.vmas = vmas
        self.source = source
        self.per_vma = per_vma
        self.passes = passes
        self.error = error

    def __len__(self) -> int:
        return len(self.addr)

    def __repr__(self) -> str:
        err = f", error={self.error!r}" if self.error else ""
        return (f"PageRefs({len(self)} entries, {self.total_bytes() >> 10} KiB in {len(self.vmas)} VMAs, "
                f"source={self.source!r}, passes={self.passes}{err})")

    def cold(self, threshold: int) -> np.ndarray:
        """Boolean mask of the entries whose count is below threshold (upstream's `count < T`)."""
        return self.count < threshold

    def total_bytes(self, mask=None) -> int:
        """Bytes covered by all entries, or by those selected by mask."""
        return int(self.size.sum() if mask is None else self.size[mask].sum())

    def groups(self):
        """Yield (Vma, slice) for each scanned VMA: its entries are self.addr[slice] etc."""
        bounds = np.searchsorted(self.vma, np.arange(len(self.vmas) + 1), side="left")
        for i, vma in enumerate(self.vmas):
            yield vma, slice(int(bounds[i]), int(bounds[i + 1]))

    @classmethod
    def empty(cls, source: str, vmas=(), per_vma=False, passes=0, error=None) -> "PageRefs":
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.uint64),
                   np.zeros(0, np.int32), list(vmas), source, per_vma, passes, error)


# --- which sources this kernel offers ----------------------------------------

def _damon_owner_problem() -> str | None:
    """Why DAMON cannot be ours to use, from read-only probing; None when it can."""
    try:
        with open(f"{DAMON_ADMIN}/kdamonds/nr_kdamonds") as f:
            nr = int(f.read().strip() or 0)
    except OSError:
        return kernel.missing("damon")
    foreign = [str(i) for i in range(nr) if str(i) not in _OUR_KDAMONDS]
    if foreign:
        found = [_describe_kdamond(i) for i in foreign]
        hint = ""
        if any(", vaddr on pid" in d and d.endswith("scheme stat") for d in found):
            hint = (f" One looks like etmem's own (vaddr, a stat scheme): if an etmemd was killed, stop "
                    f"its leftover with: echo off > {DAMON_ADMIN}/kdamonds/0/state; "
                    f"echo 0 > {DAMON_ADMIN}/kdamonds/nr_kdamonds")
        return (f"DAMON is in use by another owner ({nr} kdamond(s) not created by this etmem: "
                f"{'; '.join(found)}); the kernel allows only one set and etmem never stops another "
                f"owner's kdamond.{hint}")
    return None


def _describe_kdamond(index: str) -> str:
    """What a kdamond monitors, read-only, for the message that it is not ours."""
    base = f"{DAMON_ADMIN}/kdamonds/{index}"

    def read(path: str) -> str:
        try:
            with open(f"{base}/{path}") as f:
                return f.read().strip()
        except OSError:
            return "?"
    ctx = "contexts/0"
    ops = read(f"{ctx}/operations")
    text = f"kdamond {index} {read('state')}, {ops}"
    if ops in ("vaddr", "fvaddr") and read(f"{ctx}/targets/nr_targets") not in ("0", "?"):
        text += f" on pid {read(f'{ctx}/targets/0/pid_target')}"
    actions = read(f"{ctx}/schemes/0/action") if read(f"{ctx}/schemes/nr_schemes") not in ("0", "?") else None
    return text + (f", scheme {actions}" if actions else "")


def _damon_reason() -> str | None:
    ops = kernel.damon_operations()
    if "vaddr" not in ops:
        have = f" (this kernel has only: {', '.join(sorted(ops))})" if ops else ""
        return kernel.missing("damon") + have
    return _damon_owner_problem()


def available_sources(opener=None) -> dict[str, str | None]:
    """Each source name → None when usable here, else the reason it is not."""
    opener = opener or _default_opener
    out: dict[str, str | None] = {}
    for name, path, feature in (("idle_pages", "/proc/self/idle_pages", "idle_pages"),
                                ("page_idle", PAGE_IDLE_BITMAP, "page_idle")):
        try:
            opener(path, "rb").close()
            out[name] = None
        except FileNotFoundError:
            out[name] = kernel.missing(feature)
        except PermissionError:
            out[name] = f"{path} exists but cannot be opened: permission denied (needs root / CAP_SYS_ADMIN)"
        except OSError as exc:
            out[name] = f"{path} cannot be opened: {exc.strerror or exc}"
    out["damon"] = _damon_reason()
    out["smaps"] = None if os.path.exists("/proc/self/clear_refs") else \
        "/proc/PID/clear_refs is missing: the kernel needs CONFIG_PROC_PAGE_MONITOR=y"
    return out


def best_source(available: dict[str, str | None]) -> str | None:
    """What "auto" picks from available_sources(): the first usable of SOURCES, or None."""
    return next((name for name in SOURCES if available.get(name) is None), None)


def choose_source(requested: str = "auto", opener=None) -> str:
    """The source to use: requested if usable, or the best usable one for "auto".

    Preference for auto: idle_pages > page_idle > damon > smaps. Raises
    KernelFeatureMissing naming what the kernel lacks.
    """
    if requested != "auto" and requested not in SOURCES:
        raise ScanError(f"unknown scanner source {requested!r}: choose one of auto, {', '.join(SOURCES)}")
    avail = available_sources(opener)
    if requested != "auto":
        if avail[requested]:
            raise KernelFeatureMissing(f"scanner source {requested!r} is not available: {avail[requested]}")
        return requested
    best = best_source(avail)
    if best is not None:
        return best
    raise KernelFeatureMissing("no scanner source is available: " +
                               "; ".join(f"{k}: {v}" for k, v in avail.items()))


# --- per-VMA accumulation ----------------------------------------------------

class _Window:
    """The counts and page kinds of one scanned VMA, one slot per 4 KiB page."""

    __slots__ = ("vma", "base", "counts", "kinds")

    def __init__(self, vma: procfs.Vma):
        self.vma = vma
        self.base = vma.start
        n = (vma.end - vma.start) // PAGE
        self.counts = np.zeros(n, dtype=np.int32)
        self.kinds = np.zeros(n, dtype=np.uint8)


def _errno_message(exc: OSError, pid: int, what: str) -> str:
    if exc.errno in (errno.ESRCH, errno.ENOENT):
        return f"process {pid} exited during the scan ({what})"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {what} of process {pid} (etmem needs root / CAP_SYS_ADMIN)"
    return f"{what} of process {pid}: {exc.strerror or exc}"


def _decode_pagemap_file(f, start: int, end: int, buf: np.ndarray) -> dict[str, np.ndarray]:
    """Read the pagemap entries of [start, end) from the open file f, decoding chunk by chunk.

    Each chunk is decoded right after its read, while it is still in the CPU cache; pages
    past what the kernel returned read as absent.
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
    f = (opener or _default_opener)(f"/proc/{pid}/pagemap", "rb")
    try:
        return _decode_pagemap_file(f, start, end, np.empty(_PAGEMAP_CHUNK, dtype=np.uint64))
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
        f = (opener or _default_opener)(f"/proc/{pid}/pagemap", "rb")
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


def _read_pagemap(opener, pid: int, windows):
    """Yield (window, decoded pagemap) for each window; a failure ends the pass."""
    path = f"/proc/{pid}/pagemap"
    try:
        f = opener(path, "rb")
    except OSError as exc:
        raise _PassEnded(_errno_message(exc, pid, path)) from None
    buf = np.empty(_PAGEMAP_CHUNK, dtype=np.uint64)
    try:
        for w in windows:
            yield w, _decode_pagemap_file(f, w.base, w.vma.end, buf)
    except OSError as exc:
        raise _PassEnded(_errno_message(exc, pid, path)) from None
    finally:
        f.close()


def decode_pagemap(raw: np.ndarray) -> dict[str, np.ndarray]:
    """Raw pagemap entries → dict of present, swapped, exclusive, file (bool) and pfn (uint64)."""
    raw = np.ascontiguousarray(raw, dtype=np.uint64)
    n = len(raw)
    flags = np.empty((4, n), dtype=np.uint8)
    pfn = np.empty(n, dtype=np.uint64)
    _scan.decode_pagemap(raw, flags[0], flags[1], flags[2], flags[3], pfn)
    b = flags.view(bool)
    return {"present": b[0], "swapped": b[1], "exclusive": b[2], "file": b[3], "pfn": pfn}


class _Source:
    name = ""
    per_vma = False

    def __init__(self, scanner: "Scanner", stop: threading.Event | None = None):
        self.scanner = scanner
        self.opener = scanner.opener
        self.pid = scanner.pid
        self.stop = stop

    def begin(self, windows, sleep: float) -> None:
        """Set up before the first pass."""

    def one_pass(self, windows, index: int, last: bool) -> None:
        raise NotImplementedError

    def end(self) -> None:
        """Tear down after the last pass (always called)."""

    def wait_before(self, index: int, sleep: float) -> float:
        """Seconds to wait before pass index: passes are sleep apart."""
        return sleep if index else 0.0


class _IdlePagesSource(_Source):
    name = "idle_pages"

    def _ioctl(self, f, request: int, arg: int) -> None:
        try:
            if hasattr(f, "ioctl"):
                f.ioctl(request, arg)
            else:
                fcntl.ioctl(f.fileno(), request, arg)
        except OSError as exc:
            # Older etmem_scan modules lack the IDLE_SCAN ioctls: scan without the flag.
            log.warning("idle_pages of pid %d: scan flag 0x%x not set (%s); scanning without it",
                        self.pid, arg, exc.strerror or exc)

    def one_pass(self, windows, index, last):
        s = self.scanner
        path = f"/proc/{self.pid}/idle_pages"
        try:
            f = self.opener(path, "rb")
        except OSError as exc:
            raise _PassEnded(_errno_message(exc, self.pid, path)) from None
        try:
            scan_flags = (SCAN_AS_HUGE if s.as_huge else 0) | (SCAN_IGN_HOST if s.ign_host else 0)
            if scan_flags:
                self._ioctl(f, IDLE_SCAN_ADD_FLAGS, scan_flags)
            if s.swap_flag:
                self._ioctl(f, VMA_SCAN_ADD_FLAGS, VMA_SCAN_FLAG)
            self._scan_windows(f, windows, s.huge == "keep")
        except OSError as exc:
            raise _PassEnded(_errno_message(exc, self.pid, path)) from None
        except ValueError as exc:
            raise _PassEnded(f"{path}: {exc}") from None
        finally:
            f.close()

    def _scan_windows(self, f, windows, keep: bool) -> None:
        """Read the windows in address order, decoding each read into every window it covers.

        Reading test-and-clears what it covers, and a read covers at least 19 bytes x 8
        pages: a read for a small VMA may reach into the next one. Its records are decoded
        into that window too and reading goes on from the kernel's offset, so no VMA's
        accessed bits are cleared before they are counted.
        """
        i, carry = 0, b""
        f.seek(windows[0].base) if windows else None
        while i < len(windows):
            pos = f.tell()
            while i < len(windows) and windows[i].vma.end <= pos:
                i += 1
            if i == len(windows):
                break
            if pos < windows[i].base:
                f.seek(windows[i].base)  # skip VMAs that are not scanned
                pos, carry = windows[i].base, b""
            # ask for no more than this window needs (the kernel's minimum is 19 bytes)
            want = max(19, min(_IDLE_READ_MAX, -(-(windows[i].vma.end - pos) // PAGE // 8)))
            data = f.read(want)
            if not data:
                if f.tell() > pos:
                    continue  # nothing mapped in the range read; the offset moved past it
                break  # the kernel found nothing more to report up to TASK_SIZE
            if carry:
                data = carry + data
            after = f.tell()
            used = len(data)
            for w in windows[i:]:
                if w.base >= max(after, pos + 1):
                    break
                # The stream sets its own address with SET_HVA; pos covers one that does not.
                _, used = _scan.decode_idle_pages(data, pos, w.base, w.counts, w.kinds, keep)
            carry = bytes(data[used:])
            if after <= pos:
                break


class _PageIdleSource(_Source):
    name = "page_idle"

    # The idle flag has no history to report: mark every page idle first, then each
    # pass waits `sleep`, reads which pages were used since, and marks them idle again.
    def wait_before(self, index, sleep):
        return sleep

    def begin(self, windows, sleep):
        pfns = [pm["pfn"][pm["present"]] for _, pm in _read_pagemap(self.opener, self.pid, windows)]
        self._bitmap(np.concatenate(pfns) if pfns else np.zeros(0, np.uint64), read=False)

    def one_pass(self, windows, index, last):
        pfn_parts, slot_parts = [], []
        for w, pm in _read_pagemap(self.opener, self.pid, windows):
            present = pm["present"]
            w.kinds[present] = 1
            pfn_parts.append(pm["pfn"][present])
            slot_parts.append((w, np.flatnonzero(present)))
        pfns = np.concatenate(pfn_parts) if pfn_parts else np.zeros(0, np.uint64)
        if len(pfns) and not pfns.any():
            raise _PassEnded(f"/proc/{self.pid}/pagemap hides page frame numbers: reading them needs CAP_SYS_ADMIN")
        idle = self._bitmap(pfns, read=True)
        accessed = (idle == 0).view(np.uint8)
        pos = 0
        for w, slots in slot_parts:
            k = len(slots)
            w.counts[slots[accessed[pos:pos + k].view(bool)]] += 1
            pos += k
        self._bitmap(pfns, read=False)

    def _bitmap(self, pfns: np.ndarray, read: bool):
        """Read the idle bits of pfns (read=True), or mark them all idle (read=False)."""
        out = np.zeros(len(pfns), dtype=np.uint8)
        if not len(pfns):
            return out
        words_of = pfns >> np.uint64(6)
        order = np.argsort(words_of, kind="stable")
        sorted_words = words_of[order]
        try:
            f = self.opener(PAGE_IDLE_BITMAP, "rb" if read else "r+b")
        except OSError as exc:
            raise _PassEnded(_errno_message(exc, self.pid, PAGE_IDLE_BITMAP)) from None
        try:
            i = 0
            n = len(sorted_words)
            while i < n:
                first = int(sorted_words[i])
                j = int(np.searchsorted(sorted_words, first + _BITMAP_WINDOW, side="left"))
                count = int(sorted_words[j - 1]) - first + 1
                sel = order[i:j]
                sub_pfns = np.ascontiguousarray(pfns[sel])
                f.seek(first * 8)
                words = np.zeros(count, dtype=np.uint64)
                if read:
                    _read_fully(f, memoryview(words).cast("B"))
                    res = np.empty(len(sub_pfns), dtype=np.uint8)
                    _scan.test_bits(words, first, sub_pfns, res)
                    out[sel] = res
                else:
                    _scan.set_bits(words, first, sub_pfns)
                    _write_fully(f, memoryview(words).cast("B"))
                i = j
        except OSError as exc:
            raise _PassEnded(_errno_message(exc, self.pid, PAGE_IDLE_BITMAP)) from None
        finally:
            f.close()
        return out


def _read_fully(f, buf: memoryview) -> int:
    """Fill buf from f; sysfs hands out at most a page per read call. Stops at end of file."""
    done = 0
    while done < len(buf):
        got = f.readinto(buf[done:])
        if not got:
            break
        done += got
    return done


def _write_fully(f, buf: memoryview) -> None:
    """Write all of buf to f; sysfs takes at most a page per write call."""
    done = 0
    while done < len(buf):
        put = f.write(buf[done:])
        if not put:
            raise OSError(errno.EIO, "short write")
        done += put


class _SmapsSource(_Source):
    name = "smaps"
    per_vma = True

    def one_pass(self, windows, index, last):
        path = f"/proc/{self.pid}/smaps"
        try:
            with self.opener(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError as exc:
            raise _PassEnded(_errno_message(exc, self.pid, path)) from None
        now = {(v.start, v.end): v for v in procfs.parse_smaps(text)}
        referenced = []
        for w in windows:
            v = now.get((w.vma.start, w.vma.end)) or _covering(now.values(), w.vma)
            if v is None:
                raise _PassEnded(f"VMA {w.vma.start:#x}-{w.vma.end:#x} of process {self.pid} vanished during the scan")
            referenced.append(v.referenced_kb > 0)
        for w, pm in _read_pagemap(self.opener, self.pid, windows):
            w.kinds[pm["present"]] = 1
        for w, ref in zip(windows, referenced):
            if ref:
                w.counts += 1
        _clear_refs(self.opener, self.pid)


def _covering(vmas, want: procfs.Vma):
    for v in vmas:
        if v.start <= want.start and want.end <= v.end:
            return v
    return None


def _clear_refs(opener, pid: int) -> None:
    path = f"/proc/{pid}/clear_refs"
    try:
        f = opener(path, "wb")
        try:
            f.write(b"1")
        finally:
            f.close()
    except OSError as exc:
        raise _PassEnded(_errno_message(exc, pid, path)) from None


class _DamonSource(_Source):
    """DAMON vaddr monitoring: one kdamond of our own, a `stat` scheme to read regions."""

    name = "damon"
    sample_us = 5000
    aggr_us = 100_000

    def wait_before(self, index, sleep):
        # DAMON has no history: every pass needs one whole aggregation window first.
        return max(sleep, self.aggr_us / 1e6)

    def begin(self, windows, sleep):
        self.kd = None
        self.turn = False
        ops = kernel.damon_operations()
        if "vaddr" not in ops:
            raise ScanError(f"scanner source 'damon' is not available: {_damon_reason()}")
        self._wait_for_turn()
        try:
            self._set_up(windows, sleep)
        except BaseException:
            self.end()
            raise

    def _wait_for_turn(self) -> None:
        if _DAMON_TURN.acquire(blocking=False):
            self.turn = True
            return
        log.info("scan of pid %d waits for another etmem DAMON scan to end (one kdamond at a time)", self.pid)
        while not _DAMON_TURN.acquire(timeout=0.1):
            if self.stop is not None and self.stop.is_set():
                raise ScanError("stopped while waiting for another etmem DAMON scan to end")
        self.turn = True

    def _set_up(self, windows, sleep):
        aggr_us = self.aggr_us = max(int(sleep * 1e6), 20 * self.sample_us)
        with _DAMON_LOCK:
            problem = _damon_owner_problem()
            if problem:
                raise ScanError(problem)
            base = f"{DAMON_ADMIN}/kdamonds"
            try:
                self._write(f"{base}/nr_kdamonds", "1")
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise ScanError("DAMON is in use by another owner (the kernel refused a new kdamond: EBUSY)") from None
                raise ScanError(f"cannot create a kdamond: {exc.strerror or exc}") from None
            _OUR_KDAMONDS.add("0")
            self.kd = f"{base}/0"
        try:
            ctx = f"{self.kd}/contexts"
            self._write(f"{ctx}/nr_contexts", "1")
            ctx += "/0"
            self._write(f"{ctx}/operations", "vaddr")
            attrs = f"{ctx}/monitoring_attrs"
            self._write(f"{attrs}/intervals/sample_us", str(self.sample_us))
            self._write(f"{attrs}/intervals/aggr_us", str(aggr_us))
            # The regions start as the scanned VMAs (below) and are not re-fitted to
            # DAMON's three-big-areas guess during the scan: a cold VMA next to a hot one
            # is then never one region with it, from the first pass on.
            self._write(f"{attrs}/intervals/update_us", str(3600 * 1_000_000))
            self._write(f"{attrs}/nr_regions/min", "10")
            self._write(f"{attrs}/nr_regions/max", "1000")
            self._write(f"{ctx}/targets/nr_targets", "1")
            self._write(f"{ctx}/targets/0/pid_target", str(self.pid))
            regions = f"{ctx}/targets/0/regions"
            self._write(f"{regions}/nr_regions", str(len(windows)))
            for i, w in enumerate(windows):
                self._write(f"{regions}/{i}/start", str(w.vma.start))
                self._write(f"{regions}/{i}/end", str(w.vma.end))
            self._write(f"{ctx}/schemes/nr_schemes", "1")
            scheme = f"{ctx}/schemes/0"
            self._write(f"{scheme}/action", "stat")
            pattern = f"{scheme}/access_pattern"
            for key, hi in (("sz", 2**64 - 1), ("nr_accesses", 2**32 - 1), ("age", 2**32 - 1)):
                self._write(f"{pattern}/{key}/min", "0")
                self._write(f"{pattern}/{key}/max", str(hi))
            self._write(f"{self.kd}/state", "on")
            self.scheme = scheme
            self.max_accesses = max(1, aggr_us // self.sample_us)
        except OSError as exc:
            self.end()
            raise ScanError(f"cannot set up DAMON monitoring of process {self.pid}: {exc.strerror or exc}") from None

    def _write(self, path: str, value: str) -> None:
        f = self.opener(path, "wb")
        try:
            f.write(value.encode())
        finally:
            f.close()

    def _read(self, path: str) -> str:
        f = self.opener(path, "rb")
        try:
            return f.read().decode().strip()
        finally:
            f.close()

    def one_pass(self, windows, index, last):
        try:
            self._write(f"{self.kd}/state", "update_schemes_tried_regions")
            base = f"{self.scheme}/tried_regions"
            regions = []
            for name in os.listdir(base):
                if name.isdigit():
                    regions.append((int(self._read(f"{base}/{name}/start")), int(self._read(f"{base}/{name}/end")),
                                    int(self._read(f"{base}/{name}/nr_accesses"))))
        except OSError as exc:
            if not os.path.exists(f"/proc/{self.pid}"):
                raise _PassEnded(f"process {self.pid} exited during the scan") from None
            raise _PassEnded(f"reading DAMON regions of process {self.pid}: {exc.strerror or exc}") from None
        # A region seen accessed in this aggregation window counts +1 for each of its pages.
        for w in windows:
            lo, hi = w.vma.start, w.vma.end
            for start, end, nr in regions:
                a, b = max(start, lo), min(end, hi)
                if a < b and nr > 0:
                    w.counts[(a - lo) // PAGE:(b - lo + PAGE - 1) // PAGE] += 1
        for w, pm in _read_pagemap(self.opener, self.pid, windows):
            w.kinds[pm["present"]] = 1

    def end(self):
        if self.kd is not None:
            with _DAMON_LOCK:
                try:
                    self._write(f"{self.kd}/state", "off")
                except OSError:
                    pass
                try:
                    self._write(f"{DAMON_ADMIN}/kdamonds/nr_kdamonds", "0")
                except OSError as exc:
                    log.warning("could not remove etmem's kdamond: %s", exc.strerror or exc)
                _OUR_KDAMONDS.discard("0")
                self.kd = None
        if self.turn:
            self.turn = False
            _DAMON_TURN.release()


_SOURCE_CLASSES = {c.name: c for c in (_IdlePagesSource, _PageIdleSource, _DamonSource, _SmapsSource)}


# --- one scan of a process at a time -----------------------------------------

class ScanClaims:
    """The processes being scanned in this Python process right now, one claim each.

    Every source test-and-clears what it reads (accessed bits, idle flags, clear_refs), so
    two scans of one process at once would each clear what the other is counting, and both
    would call hot pages cold. `Scanner.scan()` claims its target for the scan; an engine
    that acts on the result claims the target first, for the whole round. A thread may
    claim again what it holds (the claims nest); another thread is refused, not kept waiting.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._held: dict[tuple[int, int | None], list[int]] = {}   # ident -> [owner thread, depth]

    @staticmethod
    def _ident(target) -> tuple[int, int | None]:
        pid = int(getattr(target, "pid", target))
        started = getattr(target, "start_time", None)
        if started is None:
            try:
                started = procfs.start_time(pid)
            except (procfs.ProcError, OSError, ValueError, IndexError):
                started = None
        return pid, started

    def claim(self, target):
        """Claim a process (a pid, or a handle with .pid and .start_time).

        Returns the key to hand to release(), or None when another thread holds it.
        """
        key, me = self._ident(target), threading.get_ident()
        with self._lock:
            held = self._held.get(key)
            if held is None:
                self._held[key] = [me, 1]
                return key
            if held[0] == me:
                held[1] += 1
                return key
            return None

    def release(self, key) -> None:
        """Give back one claim; key is what claim() returned."""
        with self._lock:
            held = self._held.get(key)
            if held is not None and held[0] == threading.get_ident():
                held[1] -= 1
                if not held[1]:
                    del self._held[key]

    def busy(self) -> list[int]:
        """Pids claimed right now."""
        with self._lock:
            return sorted(pid for pid, _ in self._held)


CLAIMS = ScanClaims()


# --- the scanner ------------------------------------------------------------

class Scanner:
    """Scan one process's pages with one source.

    target: a pid, or an object with .pid (and optionally .check() raising ProcessGone).
    source: "auto" or one of SOURCES. anon_only: only private anonymous VMAs (heap, stack,
    anonymous mappings). vm_flags: smaps VmFlags every scanned VMA must have (e.g. ("ht",)).
    ranges: [(start, end), ...] address ranges the scan is limited to. huge: "split" counts
    2 MiB / 1 GiB pages on each 4 KiB page, "keep" as one entry of their size (idle_pages).
    ign_host / as_huge / swap_flag: idle_pages scan flags SCAN_IGN_HOST, SCAN_AS_HUGE and
    VMA_SCAN_FLAG. opener(path, mode) opens every kernel file (tests route them to emulations).
    """

    def __init__(self, target, source: str = "auto", anon_only: bool = True, vm_flags=(), ranges=None,
                 huge: str = "split", ign_host: bool = False, opener=None, as_huge: bool = False,
                 swap_flag: bool = False):
        if huge not in ("split", "keep"):
            raise ScanError(f"huge must be 'split' or 'keep', not {huge!r}")
        self.target = target
        self.pid = int(getattr(target, "pid", target))
        self.opener = opener or _default_opener
        self.anon_only = anon_only
        self.vm_flags = tuple(vm_flags)
        self.ranges = [(int(a), int(b)) for a, b in ranges] if ranges else None
        self.huge = huge
        self.ign_host = ign_host
        self.as_huge = as_huge
        self.swap_flag = swap_flag
        self.source_name = choose_source(source, self.opener)
        log.debug("scanner for pid %d uses source %s", self.pid, self.source_name)

    def _check_target(self) -> None:
        check = getattr(self.target, "check", None)
        if check is not None:
            check()
        elif not os.path.exists(f"/proc/{self.pid}"):
            raise ProcessGone(f"process {self.pid} exited")

    def select_vmas(self) -> list[procfs.Vma]:
        """The VMAs this scanner covers, clipped to ranges, in address order.

        From maps where that says enough (procfs.vmas: smaps is slow for large processes);
        their VmFlags are there when vm_flags must match, and `ht`/`lo` whenever true.
        """
        try:
            vmas = procfs.vmas(self.pid, flags=bool(self.vm_flags))
        except procfs.NoSuchProcess:
            raise _PassEnded(f"process {self.pid} exited before the scan") from None
        except procfs.AccessDenied:
            raise _PassEnded(f"permission denied on the memory map of process {self.pid} "
                             "(etmem needs root / CAP_SYS_ADMIN)") from None
        out = []
        for v in vmas:
            if v.is_special or v.perms[:3] == "---":
                continue  # nothing can be accessed in PROT_NONE reservations
            if self.anon_only and not (v.is_anonymous and v.is_private):
                continue
            if any(flag not in v.vmflags for flag in self.vm_flags):
                continue
            if self.ranges is None:
                out.append(v)
                continue
            for a, b in self.ranges:
                lo, hi = max(a, v.start) // PAGE * PAGE, -(-min(b, v.end) // PAGE) * PAGE
                if lo < hi:
                    out.append(v._replace(start=lo, end=hi))
        out.sort(key=lambda v: v.start)
        return out

    def scan(self, loop: int = 1, sleep: float = 0.0, stop: threading.Event | None = None) -> PageRefs:
        """Run loop passes sleep seconds apart; stop (an Event) ends the waiting early.

        Never raises for a target that exits, a VMA that vanishes or a refused read: the
        result then carries the passes that completed and `error` says what happened.
        """
        key = CLAIMS.claim(self.target)
        if key is None:
            return PageRefs.empty(self.source_name, per_vma=_SOURCE_CLASSES[self.source_name].per_vma,
                                  error=f"process {self.pid} is being scanned by another task; not scanned now")
        try:
            return self._scan(loop, sleep, stop)
        finally:
            CLAIMS.release(key)

    def _scan(self, loop: int, sleep: float, stop: threading.Event | None) -> PageRefs:
        source = _SOURCE_CLASSES[self.source_name](self, stop)
        try:
            self._check_target()
            vmas = self.select_vmas()
        except (ProcessGone, _PassEnded, procfs.ProcError) as exc:
            return PageRefs.empty(self.source_name, per_vma=source.per_vma, error=str(exc))
        windows = [_Window(v) for v in vmas]
        passes, error = 0, None
        t0 = time.monotonic()
        try:
            source.begin(windows, sleep)
        except ScanError as exc:
            return PageRefs.empty(self.source_name, vmas, source.per_vma, error=str(exc))
        except _PassEnded as exc:
            source.end()
            return PageRefs.empty(self.source_name, vmas, source.per_vma, error=str(exc))
        try:
            for index in range(loop):
                wait = source.wait_before(index, sleep)
                if stop is not None:
                    if stop.wait(wait) if wait > 0 else stop.is_set():
                        break
                elif wait > 0:
                    time.sleep(wait)
                try:
                    self._check_target()
                    source.one_pass(windows, index, index == loop - 1)
                    self._check_vmas(windows)
                except (_PassEnded, ProcessGone, procfs.ProcError, OSError) as exc:
                    error = f"pass {index + 1} of {loop} ended early: {exc}"
                    log.warning("scan of pid %d with %s: %s", self.pid, self.source_name, error)
                    break
                passes += 1
        finally:
            source.end()
        log.debug("scan of pid %d with %s: %d passes in %.3f s", self.pid, self.source_name, passes,
                  time.monotonic() - t0)
        return self._result(windows, passes, error, source.per_vma)

    def _check_vmas(self, windows) -> None:
        """A scanned VMA that is gone makes the pass end; its pages are no longer the target's."""
        try:
            current = procfs.maps(self.pid)
        except procfs.NoSuchProcess:
            raise _PassEnded(f"process {self.pid} exited during the scan") from None
        except procfs.ProcError:
            return  # the source itself will report a refused read
        for w in windows:
            if _covering(current, w.vma) is None:
                w.kinds[:] = 0
                raise _PassEnded(f"VMA {w.vma.start:#x}-{w.vma.end:#x} of process {self.pid} vanished during the scan")

    def _result(self, windows, passes: int, error: str | None, per_vma: bool) -> PageRefs:
        addrs, counts, sizes, vmaidx = [], [], [], []
        for i, w in enumerate(windows):
            slots = np.flatnonzero(w.kinds)
            if not len(slots):
                continue
            kinds = w.kinds[slots]
            addr = np.uint64(w.base) + slots.astype(np.uint64) * np.uint64(PAGE)
            size = np.full(len(slots), PAGE, dtype=np.uint64)
            if self.huge == "keep":
                pmd = kinds == _scan.KIND_PMD
                pud = kinds == _scan.KIND_PUD
                addr[pmd] &= ~np.uint64(PMD_SIZE - 1)
                addr[pud] &= ~np.uint64(PUD_SIZE - 1)
                size[pmd] = PMD_SIZE
                size[pud] = PUD_SIZE
            addrs.append(addr)
            counts.append(w.counts[slots])
            sizes.append(size)
            vmaidx.append(np.full(len(slots), i, dtype=np.int32))
        vmas = [w.vma for w in windows]
        if not addrs:
            return PageRefs.empty(self.source_name, vmas, per_vma, passes, error)
        return PageRefs(np.concatenate(addrs), np.concatenate(counts), np.concatenate(sizes),
                        np.concatenate(vmaidx), vmas, self.source_name, per_vma, passes, error)
