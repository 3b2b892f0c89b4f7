"""Emulated kernel files in their exact formats, for interfaces this kernel lacks.

openEuler's `/proc/PID/idle_pages` and upstream's idle page tracking are not on the
project's machines, so tests (the scanner's and the engines') route those paths to
the objects here through the `opener` argument of `etmem.scan.Scanner`:

    table = PageTable()
    table.add_vma(start, end, state=ACCESSED)        # pages as the kernel would see them
    table.touch(start, start + 8 * 4096, dirty=True)  # the workload writes 8 pages
    emu = Emulator(pid, table)
    Scanner(pid, source="idle_pages", opener=emu.opener).scan(loop=3)

Low-level pieces, usable alone:
- `encode_idle_pages(runs, chunk_size=8000)`: bytes of an idle_pages stream;
- `IdlePagesFile`: seek to a virtual address, read N bytes covering N*8 pages,
  test-and-clear of accessed bits, SET_HVA at each kernel chunk start;
- `PagemapFile`, `IdleBitmapFile`: /proc/PID/pagemap and /sys/kernel/mm/page_idle/bitmap
  over the same `PageTable`, so page_idle scans see the same pages.

DAMON's sysfs tree (/sys/kernel/mm/damon/admin) has its own stand-in, `DamonSysfs`: a
directory of plain files that reacts to writes as Linux 6.12 does (nr_* files remake
their directories, state commands, EBUSY/EINVAL/EPERM), for the damon source and engine.
"""
from __future__ import annotations

import errno
import io
import os
import pathlib
import re
import shutil
import struct

import numpy as np

PAGE = 4096
PMD = 2 << 20
PUD = 1 << 30

# idle_pages record types: each record byte is (type << 4) | run length 1..15
PTE_ACCESSED, PMD_ACCESSED, PUD_PRESENT = 0, 1, 2
PTE_DIRTY_M, PMD_DIRTY_M = 3, 4
PTE_IDLE, PMD_IDLE, PMD_IDLE_PTES = 5, 6, 7
PTE_HOLE, PMD_HOLE = 8, 9
SET_HVA = 0xA0
KBUF_SIZE = 8000

# bytes of address space one record of each type advances
TYPE_SIZE = {PTE_ACCESSED: PAGE, PMD_ACCESSED: PMD, PUD_PRESENT: PUD, PTE_DIRTY_M: PAGE, PMD_DIRTY_M: PMD,
             PTE_IDLE: PAGE, PMD_IDLE: PMD, PMD_IDLE_PTES: PMD, PTE_HOLE: PAGE, PMD_HOLE: PMD}
# upstream's weights: accessed +1, dirty +3, idle and holes 0
TYPE_WEIGHT = {PTE_ACCESSED: 1, PMD_ACCESSED: 1, PUD_PRESENT: 1, PTE_DIRTY_M: 3, PMD_DIRTY_M: 3}

# page states of the emulated page table
HOLE, IDLE, ACCESSED, DIRTY, SWAPPED = 0, 1, 2, 3, 4

IDLE_SCAN_MAGIC = 0x66


def _iow(nr: int) -> int:
    """_IOW(0x66, nr, unsigned int), the idle_pages flag ioctls."""
    return (1 << 30) | (4 << 16) | (IDLE_SCAN_MAGIC << 8) | nr


IDLE_SCAN_ADD_FLAGS, IDLE_SCAN_REMOVE_FLAGS = _iow(0), _iow(1)
VMA_SCAN_ADD_FLAGS, VMA_SCAN_REMOVE_FLAGS = _iow(2), _iow(3)


def encode_records(runs):
    """Yield (record_bytes, address_after) for runs of (addr, type, count).

    count is in pages of the type's size. Consecutive runs that continue at the current
    address need no SET_HVA; every other run starts with one. Runs split at 15.
    Chunking is left to the caller (see `encode_idle_pages`).
    """
    addr = None
    for start, kind, count in runs:
        if start != addr:
            yield b"", start  # a discontinuity: the caller emits SET_HVA(start)
            addr = start
        size = TYPE_SIZE[kind]
        while count > 0:
            nr = min(count, 15)
            addr += nr * size
            count -= nr
            yield bytes([(kind << 4) | nr]), addr


def set_hva(addr: int) -> bytes:
    return bytes([SET_HVA]) + struct.pack(">Q", addr)


def encode_idle_pages(runs, chunk_size: int = KBUF_SIZE, limit: int | None = None):
    """Encode runs of (addr, type, count) as the kernel would write them.

    Each kernel chunk of chunk_size bytes starts with SET_HVA of its first record's
    address, and every discontinuity gets one too. With limit, stop before the output
    would exceed limit bytes. Returns (stream, address_after_last_record).
    """
    out = bytearray()
    chunk_used = chunk_size  # forces SET_HVA before the first record
    need_hva = True
    addr = None
    for record, after in encode_records(runs):
        if not record:
            need_hva = True
            addr = after
            continue
        start = addr
        extra = 0
        if chunk_used + 1 > chunk_size or (need_hva and chunk_used + 10 > chunk_size):
            chunk_used = 0
            need_hva = True
        if need_hva:
            extra = 9
        if limit is not None and len(out) + extra + 1 > limit:
            break
        if need_hva:
            out += set_hva(start)
            chunk_used += 9
            need_hva = False
        out += record
        chunk_used += 1
        addr = after
    return bytes(out), addr


class PageTable:
    """The page table of one emulated process: a state per 4 KiB page, per VMA.

    States: HOLE (not mapped in), IDLE, ACCESSED, DIRTY (accessed and written), SWAPPED.
    2 MiB-aligned blocks can be transparent huge pages (`huge=True`): they report as one
    PMD record. The same table backs idle_pages, pagemap and the page_idle bitmap.
    """

    def __init__(self):
        self.vmas: list[list] = []  # [start, end, state uint8[n], thp bool[n], idle bool[n], pfn uint64[n]]
        self._next_pfn = 0x10000

    def add_vma(self, start: int, end: int, state: int = IDLE, huge: bool = False) -> None:
        """Map [start, end) (page aligned) with every page in state; huge makes aligned 2 MiB blocks THPs."""
        n = (end - start) // PAGE
        states = np.full(n, state, dtype=np.uint8)
        thp = np.zeros(n, dtype=bool)
        if huge:
            first = (-start) % PMD // PAGE
            whole = (n - first) // 512 * 512
            thp[first:first + whole] = True
        pfn = np.uint64(self._next_pfn) + np.arange(n, dtype=np.uint64)
        self._next_pfn += n + 512
        self.vmas.append([start, end, states, thp, np.zeros(n, dtype=bool), pfn])
        self.vmas.sort(key=lambda v: v[0])

    def _slices(self, start: int, end: int):
        for vma in self.vmas:
            lo, hi = max(start, vma[0]), min(end, vma[1])
            if lo < hi:
                yield vma, slice((lo - vma[0]) // PAGE, (hi - vma[0] + PAGE - 1) // PAGE)

    def set(self, start: int, end: int, state: int) -> None:
        for vma, s in self._slices(start, end):
            vma[2][s] = state

    def touch(self, start: int, end: int, dirty: bool = False) -> None:
        """The process accesses [start, end): pages become ACCESSED (or DIRTY) and not idle."""
        for vma, s in self._slices(start, end):
            states = vma[2][s]
            if dirty:
                states[:] = DIRTY
            else:
                states[states != DIRTY] = ACCESSED
            vma[4][s] = False

    def unmap(self, start: int, end: int) -> None:
        """Remove the VMA starting at start (a VMA vanishing mid-scan)."""
        self.vmas = [v for v in self.vmas if not (v[0] == start and v[1] == end)]

    def state(self, addr: int) -> int:
        for vma, s in self._slices(addr, addr + PAGE):
            return int(vma[2][s.start])
        return -1

    # --- idle_pages ---------------------------------------------------------

    def runs(self, start: int, end: int):
        """Records (addr, type, count) the kernel would report for [start, end), in order."""
        out = []
        for vma, s in self._slices(start, end):
            states, thp = vma[2], vma[3]
            i = s.start
            while i < s.stop:
                addr = vma[0] + i * PAGE
                block_end = i + 512
                aligned = addr % PMD == 0 and block_end <= len(states)
                if thp[i] and aligned:
                    st = int(states[i:block_end].max())
                    kind = {HOLE: PMD_HOLE, SWAPPED: PMD_HOLE, IDLE: PMD_IDLE, ACCESSED: PMD_ACCESSED, DIRTY: PMD_DIRTY_M}[st]
                    _append(out, addr, kind)
                    i = block_end
                    continue
                if aligned and block_end <= s.stop and not thp[i]:
                    block = states[i:block_end]
                    if (block == HOLE).all():
                        _append(out, addr, PMD_HOLE)
                        i = block_end
                        continue
                    if (block == IDLE).all():
                        _append(out, addr, PMD_IDLE_PTES)
                        i = block_end
                        continue
                st = int(states[i])
                _append(out, addr, {HOLE: PTE_HOLE, SWAPPED: PTE_HOLE, IDLE: PTE_IDLE, ACCESSED: PTE_ACCESSED, DIRTY: PTE_DIRTY_M}[st])
                i += 1
        return out

    def clear_young(self, start: int, end: int) -> None:
        """Test-and-clear of the accessed bits: reported accessed/dirty pages become idle."""
        for vma, s in self._slices(start, end):
            states = vma[2][s]
            states[(states == ACCESSED) | (states == DIRTY)] = IDLE

    # --- pagemap / page_idle ------------------------------------------------

    def pagemap(self, first_page: int, n: int) -> np.ndarray:
        """Raw pagemap entries for virtual pages first_page .. first_page + n."""
        out = np.zeros(n, dtype=np.uint64)
        start, end = first_page * PAGE, (first_page + n) * PAGE
        for vma, s in self._slices(start, end):
            dst = slice((vma[0] // PAGE + s.start) - first_page, (vma[0] // PAGE + s.stop) - first_page)
            states = vma[2][s]
            present = (states == IDLE) | (states == ACCESSED) | (states == DIRTY)
            entries = np.where(present, vma[5][s] | np.uint64(1 << 63) | np.uint64(1 << 56), np.uint64(0))
            swapped = states == SWAPPED
            entries[swapped] = np.uint64(1 << 62) | (np.arange(int(swapped.sum()), dtype=np.uint64) << np.uint64(5))
            out[dst] = entries
        return out

    def idle_words(self, first_word: int, nwords: int) -> np.ndarray:
        """Words of the page_idle bitmap: bit set = the page is idle (not accessed since set)."""
        words = np.zeros(nwords, dtype=np.uint64)
        for vma in self.vmas:
            states, idle, pfn = vma[2], vma[4], vma[5]
            present = (states == IDLE) | (states == ACCESSED) | (states == DIRTY)
            sel = pfn[present & idle]
            w = (sel >> np.uint64(6)).astype(np.int64) - first_word
            ok = (w >= 0) & (w < nwords)
            np.bitwise_or.at(words, w[ok], np.uint64(1) << (sel[ok] & np.uint64(63)))
        return words

    def set_idle_words(self, first_word: int, words: np.ndarray) -> None:
        """A write to the bitmap: pages whose bit is 1 become idle (and their young bit clears)."""
        for vma in self.vmas:
            states, idle, pfn = vma[2], vma[4], vma[5]
            w = (pfn >> np.uint64(6)).astype(np.int64) - first_word
            ok = (w >= 0) & (w < len(words))
            bits = np.zeros(len(pfn), dtype=bool)
            bits[ok] = (words[w[ok]] >> (pfn[ok] & np.uint64(63))) & np.uint64(1) == 1
            present = (states == IDLE) | (states == ACCESSED) | (states == DIRTY)
            mark = bits & present
            idle[mark] = True
            states[mark & ((states == ACCESSED) | (states == DIRTY))] = IDLE


def _append(out, addr, kind):
    if out and out[-1][1] == kind and out[-1][0] + out[-1][2] * TYPE_SIZE[kind] == addr:
        out[-1] = (out[-1][0], kind, out[-1][2] + 1)
    else:
        out.append((addr, kind, 1))


class _FileBase(io.RawIOBase):
    """A kernel file whose offset is set by seek (SEEK_SET or SEEK_CUR) and read by tell."""

    offset = 0

    def seek(self, pos, whence=0):
        self.offset = pos if whence == 0 else self.offset + pos
        return self.offset

    def tell(self):
        return self.offset

    def readable(self):
        return True

    def seekable(self):
        return True

    def fileno(self):
        raise io.UnsupportedOperation("emulated kernel file has no descriptor")


class IdlePagesFile(_FileBase):
    """Behaves like /proc/PID/idle_pages over a PageTable.

    The offset is a virtual address (page aligned, else EINVAL). read(n), n >= 19, covers
    [offset, offset + n*8 pages), reports only mapped VMAs, starts each 8000-byte kernel
    chunk with SET_HVA, test-and-clears the accessed bits it reports, and moves the offset
    to the next address to scan; it returns b"" past the last VMA. `ioctl(request, flags)`
    keeps the scan flags in `.flags` / `.vma_flags`. `reads` counts read calls.
    """

    def __init__(self, table: PageTable, chunk_size: int = KBUF_SIZE):
        self.table = table
        self.chunk_size = chunk_size
        self.offset = 0
        self.flags = 0
        self.vma_flags = 0
        self.reads = 0

    def seek(self, pos, whence=0):
        if whence != 0:
            raise OSError(errno.EINVAL, "idle_pages: only SEEK_SET")
        if pos % PAGE:
            raise OSError(errno.EINVAL, "idle_pages: unaligned offset")
        self.offset = pos
        return pos

    def tell(self):
        return self.offset

    def read(self, n=-1):
        if n is None or n < 19:
            raise OSError(errno.EINVAL, "idle_pages: read of fewer than 19 bytes")
        self.reads += 1
        if not self.table.vmas or self.offset >= self.table.vmas[-1][1]:
            return b""
        # The kernel walks [offset, offset + n*8 pages): a gap before the next VMA is
        # skipped (SET_HVA), but the end of the range stays where the offset put it.
        end = self.offset + n * 8 * PAGE
        following = [v[0] for v in self.table.vmas if v[1] > self.offset]
        start = max(self.offset, following[0])
        if start >= end:
            self.offset = end
            return b""
        runs = self.table.runs(start, end)
        data, after = encode_idle_pages(runs, self.chunk_size, limit=n)
        complete = not runs or after == runs[-1][0] + runs[-1][2] * TYPE_SIZE[runs[-1][1]]
        after = max(end, after or end) if complete else after
        self.table.clear_young(start, after)
        self.offset = after
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def ioctl(self, request: int, arg: int) -> int:
        if request == IDLE_SCAN_ADD_FLAGS:
            self.flags |= arg
        elif request == IDLE_SCAN_REMOVE_FLAGS:
            self.flags &= ~arg
        elif request == VMA_SCAN_ADD_FLAGS:
            self.vma_flags |= arg
        elif request == VMA_SCAN_REMOVE_FLAGS:
            self.vma_flags &= ~arg
        else:
            raise OSError(errno.ENOTTY, "idle_pages: unknown ioctl")
        return 0


class PagemapFile(_FileBase):
    """Behaves like /proc/PID/pagemap: 8 bytes per virtual page, offset = page index * 8."""

    def __init__(self, table: PageTable):
        self.table = table
        self.offset = 0

    def read(self, n=-1):
        if self.offset % 8 or n % 8:
            raise OSError(errno.EINVAL, "pagemap: unaligned read")
        data = self.table.pagemap(self.offset // 8, n // 8).tobytes()
        self.offset += n
        return data

    def readinto(self, b):
        data = self.read(len(b))
        memoryview(b).cast("B")[:len(data)] = data
        return len(data)


class IdleBitmapFile(_FileBase):
    """Behaves like /sys/kernel/mm/page_idle/bitmap: 8-byte words, bit = PFN, 1 = idle.

    Like every sysfs binary file, one read or write call moves at most `max_io` bytes
    (the kernel's PAGE_SIZE); reads past max_pfn return b"".
    """

    def __init__(self, table: PageTable, max_pfn: int = 1 << 24, max_io: int = PAGE):
        self.table = table
        self.offset = 0
        self.max_words = max_pfn // 64
        self.max_io = max_io
        self.writes = 0

    def writable(self):
        return True

    def read(self, n=-1):
        if self.offset % 8 or n % 8:
            raise OSError(errno.EINVAL, "page_idle: unaligned access")
        first = self.offset // 8
        count = max(0, min(n // 8, self.max_io // 8, self.max_words - first))
        self.offset += count * 8
        return self.table.idle_words(first, count).tobytes()

    def readinto(self, b):
        data = self.read(len(b))
        memoryview(b).cast("B")[:len(data)] = data
        return len(data)

    def write(self, b):
        if self.offset % 8 or len(b) % 8:
            raise OSError(errno.EINVAL, "page_idle: unaligned access")
        words = np.frombuffer(bytes(b[:self.max_io]), dtype=np.uint64)
        self.table.set_idle_words(self.offset // 8, words)
        self.offset += len(words) * 8
        self.writes += 1
        return len(words) * 8


class Emulator:
    """Routes one process's idle_pages / pagemap and the page_idle bitmap to a PageTable.

    `opener(path, mode)` is what `Scanner(opener=...)` takes; every other path opens the
    real file. `files` keeps the emulated files handed out, for tests to inspect.
    """

    def __init__(self, pid: int, table: PageTable, idle_pages: bool = True, page_idle: bool = True,
                 chunk_size: int = KBUF_SIZE):
        self.pid = pid
        self.table = table
        self.chunk_size = chunk_size
        self.idle_pages = idle_pages
        self.page_idle = page_idle
        self.files: list = []

    def opener(self, path: str, mode: str = "rb"):
        m = re.fullmatch(r"/proc/(\d+|self)/(idle_pages|pagemap)", path)
        if m and (m.group(1) == "self" or int(m.group(1)) == self.pid):
            if m.group(2) == "idle_pages":
                if not self.idle_pages:
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
                f = IdlePagesFile(self.table, self.chunk_size)
            else:
                f = PagemapFile(self.table)
            self.files.append(f)
            return f
        if path == "/sys/kernel/mm/page_idle/bitmap":
            if not self.page_idle:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            f = IdleBitmapFile(self.table)
            self.files.append(f)
            return f
        return open(path, mode, buffering=0) if "b" in mode else open(path, mode)


# --- DAMON's sysfs interface ------------------------------------------------------------

DAMON_ACTIONS = ("willneed", "cold", "pageout", "hugepage", "nohugepage", "lru_prio", "lru_deprio",
                 "migrate_hot", "migrate_cold", "stat")
DAMON_GOAL_METRICS = ("user_input", "some_mem_psi_us")


class _SysfsWrite(io.RawIOBase):
    """A sysfs file opened for writing: each write call is one store into the emulated kernel."""

    def __init__(self, damon: "DamonSysfs", path: str):
        self.damon, self.path = damon, path

    def writable(self):
        return True

    def write(self, b):
        self.damon.store(self.path, bytes(b).decode())
        return len(b)


class DamonSysfs:
    """/sys/kernel/mm/damon/admin as Linux 6.12 behaves, in a directory of plain files.

    Writing a `nr_*` file removes that level's directories and makes that many new ones
    with the kernel's defaults; `nr_kdamonds` is refused (EBUSY) while a kdamond runs;
    unknown actions, goal metrics and watermark metrics are refused (EINVAL). `state`
    takes on / off / commit / update_schemes_stats / update_schemes_tried_regions as 6.12
    does: `on` checks the attributes and that every target pid is alive; a commit with a
    dead pid stops the kdamond (as 6.12 does, the write itself succeeding); off when off is
    EPERM, a command to an off kdamond EINVAL. `counters[(kdamond, scheme)]` is what the
    kernel counted since that kdamond was turned on, `regions[kdamond]` its regions
    ((start, end, nr_accesses) or (start, end, nr_accesses, age), ...), both set by the test,
    each scheme's `tried_regions` listing those its access pattern matches; `alive(pid)` says which
    processes exist (default: /proc/PID exists). `stores` records every write, in order.

        damon = DamonSysfs(tmp_path / "admin")
        Sysfs(str(damon.root), damon.opener)     # etmem.damon_sysfs's backend on it
    """

    def __init__(self, root, actions=DAMON_ACTIONS, alive=None, nr_kdamonds: int = 0):
        self.root = pathlib.Path(root)
        self.actions = actions
        self.alive = alive or (lambda pid: pid > 0 and os.path.exists(f"/proc/{pid}"))
        self.counters: dict = {}
        self.regions: dict = {}
        self.stores: list = []
        (self.root / "kdamonds").mkdir(parents=True, exist_ok=True)
        self._put("kdamonds/nr_kdamonds", "0")
        if nr_kdamonds:
            self.store(str(self.root / "kdamonds/nr_kdamonds"), str(nr_kdamonds))
            self.stores.clear()

    # -- files ------------------------------------------------------------------------------
    def _put(self, rel: str, value: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)

    def _get(self, rel: str) -> str:
        return (self.root / rel).read_text().strip()

    def _remake(self, rel_dir: str, n: int, make) -> None:
        base = self.root / rel_dir
        for child in list(base.iterdir()) if base.exists() else []:
            if child.name.isdigit():
                shutil.rmtree(child)
        for i in range(n):
            make(f"{rel_dir}/{i}")

    def opener(self, path, mode="rb"):
        path = str(path)
        if "w" in mode and path.startswith(str(self.root)):
            if not os.path.exists(path):
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            return _SysfsWrite(self, path)
        return open(path, mode, buffering=0)

    def store(self, path: str, text: str) -> None:
        rel = str(path)[len(str(self.root)) + 1:]
        value = text.strip()
        self.stores.append((rel, value))
        name = rel.rsplit("/", 1)[-1]
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if rel == "kdamonds/nr_kdamonds":
            if any(self.state(i) == "on" for i in range(int(self._get(rel)))):
                raise OSError(errno.EBUSY, "Device or resource busy")
            self._remake("kdamonds", int(value), self._new_kdamond)
        elif name == "nr_contexts":
            self._remake(parent, min(int(value), 1), self._new_context)
        elif name == "nr_targets":
            self._remake(parent, int(value), self._new_target)
        elif name == "nr_regions" and parent.endswith("/regions"):
            self._remake(parent, int(value), lambda d: (self._put(f"{d}/start", "0"), self._put(f"{d}/end", "0")))
        elif name == "nr_schemes":
            self._remake(parent, int(value), self._new_scheme)
        elif name == "nr_goals":
            self._remake(parent, int(value), self._new_goal)
        elif name == "action" and value not in self.actions:
            raise OSError(errno.EINVAL, "Invalid argument")
        elif name == "target_metric" and value not in DAMON_GOAL_METRICS:
            raise OSError(errno.EINVAL, "Invalid argument")
        elif name == "metric" and parent.endswith("watermarks") and value not in ("none", "free_mem_rate"):
            raise OSError(errno.EINVAL, "Invalid argument")
        elif name == "state":
            self._command(int(rel.split("/")[1]), value)
            return
        self._put(rel, value)

    # -- the kernel's defaults for new directories --------------------------------------------
    def _new_kdamond(self, d: str) -> None:
        self._put(f"{d}/state", "off")
        self._put(f"{d}/pid", "-1")
        self._put(f"{d}/contexts/nr_contexts", "0")

    def _new_context(self, d: str) -> None:
        self._put(f"{d}/avail_operations", "vaddr\nfvaddr\npaddr")
        self._put(f"{d}/operations", "vaddr")
        for name, value in (("intervals/sample_us", "5000"), ("intervals/aggr_us", "100000"),
                            ("intervals/update_us", "60000000"), ("nr_regions/min", "10"),
                            ("nr_regions/max", "1000")):
            self._put(f"{d}/monitoring_attrs/{name}", value)
        self._put(f"{d}/targets/nr_targets", "0")
        self._put(f"{d}/schemes/nr_schemes", "0")

    def _new_target(self, d: str) -> None:
        self._put(f"{d}/pid_target", "0")
        self._put(f"{d}/regions/nr_regions", "0")

    def _new_scheme(self, d: str) -> None:
        self._put(f"{d}/action", "stat")
        self._put(f"{d}/apply_interval_us", "0")
        self._put(f"{d}/target_nid", "-1")
        for name in ("sz", "nr_accesses", "age"):
            self._put(f"{d}/access_pattern/{name}/min", "0")
            self._put(f"{d}/access_pattern/{name}/max", "0")
        for name in ("ms", "bytes", "reset_interval_ms", "effective_bytes", "weights/sz_permil",
                     "weights/nr_accesses_permil", "weights/age_permil"):
            self._put(f"{d}/quotas/{name}", "0")
        self._put(f"{d}/quotas/goals/nr_goals", "0")
        for name, value in (("metric", "none"), ("interval_us", "0"), ("high", "0"), ("mid", "0"), ("low", "0")):
            self._put(f"{d}/watermarks/{name}", value)
        for name in ("nr_tried", "sz_tried", "nr_applied", "sz_applied", "qt_exceeds"):
            self._put(f"{d}/stats/{name}", "0")
        self._put(f"{d}/tried_regions/total_bytes", "0")
        self._put(f"{d}/filters/nr_filters", "0")

    def _new_goal(self, d: str) -> None:
        self._put(f"{d}/target_metric", "user_input")
        self._put(f"{d}/target_value", "0")
        self._put(f"{d}/current_value", "0")

    # -- state commands --------------------------------------------------------------------
    def state(self, index: int) -> str:
        return self._get(f"kdamonds/{index}/state")

    def _ctx(self, index: int) -> str:
        return f"kdamonds/{index}/contexts/0"

    def _pids(self, index: int) -> list[int]:
        targets = f"{self._ctx(index)}/targets"
        return [int(self._get(f"{targets}/{i}/pid_target")) for i in range(int(self._get(f"{targets}/nr_targets")))]

    def _attrs_ok(self, index: int) -> bool:
        a = f"{self._ctx(index)}/monitoring_attrs"
        sample, aggr = int(self._get(f"{a}/intervals/sample_us")), int(self._get(f"{a}/intervals/aggr_us"))
        low, high = int(self._get(f"{a}/nr_regions/min")), int(self._get(f"{a}/nr_regions/max"))
        return sample <= aggr and 3 <= low <= high

    def _command(self, index: int, command: str) -> None:
        kd = f"kdamonds/{index}"
        on = self.state(index) == "on"
        if command == "on":
            if on or self._get(f"{kd}/contexts/nr_contexts") != "1" or not self._attrs_ok(index) \
                    or not all(self.alive(p) for p in self._pids(index)):
                raise OSError(errno.EINVAL, "Invalid argument")
            nr_schemes = int(self._get(f"{self._ctx(index)}/schemes/nr_schemes"))
            for s in range(nr_schemes):
                self.counters[(index, s)] = {}
            # with no target a kdamond stops at once, as the kernel's does
            self._put(f"{kd}/state", "on" if self._pids(index) else "off")
        elif command == "off":
            if not on:
                raise OSError(errno.EPERM, "Operation not permitted")
            self._put(f"{kd}/state", "off")
        elif command not in ("commit", "update_schemes_stats", "update_schemes_tried_regions",
                             "update_schemes_tried_bytes", "clear_schemes_tried_regions"):
            raise OSError(errno.EINVAL, "Invalid argument")
        elif not on:
            raise OSError(errno.EINVAL, "Invalid argument")
        elif command == "commit":
            if not self._attrs_ok(index) or not all(self.alive(p) for p in self._pids(index)):
                self._put(f"{kd}/state", "off")   # 6.12: the kdamond stops, the write succeeds
        elif command == "update_schemes_stats":
            schemes = f"{self._ctx(index)}/schemes"
            for s in range(int(self._get(f"{schemes}/nr_schemes"))):
                counted = self.counters.get((index, s), {})
                for name in ("nr_tried", "sz_tried", "nr_applied", "sz_applied", "qt_exceeds"):
                    self._put(f"{schemes}/{s}/stats/{name}", str(counted.get(name, 0)))
        elif command == "update_schemes_tried_regions":
            schemes = f"{self._ctx(index)}/schemes"
            for s in range(int(self._get(f"{schemes}/nr_schemes"))):
                base = f"{schemes}/{s}/tried_regions"
                self._remake(base, 0, None)
                matched = [r for r in self.regions.get(index, ()) if self._matches(f"{schemes}/{s}", r)]
                for i, (start, end, nr, *age) in enumerate(matched):
                    for name, value in (("start", start), ("end", end), ("nr_accesses", nr), ("age", age[0] if age else 0)):
                        self._put(f"{base}/{i}/{name}", str(value))

    def _matches(self, scheme: str, region: tuple) -> bool:
        """The kernel lists the regions a scheme's access pattern matches (size, accesses, age)."""
        start, end, nr, *age = region
        pattern = f"{scheme}/access_pattern"
        return all(int(self._get(f"{pattern}/{name}/min")) <= value <= int(self._get(f"{pattern}/{name}/max"))
                   for name, value in (("sz", end - start), ("nr_accesses", nr), ("age", age[0] if age else 0)))

    def targets_exited(self, index: int) -> None:
        """Every target of kdamond `index` exited: the kernel stops it."""
        self._put(f"kdamonds/{index}/state", "off")

    def file(self, rel: str) -> str:
        """The content of a file of the tree, e.g. 'kdamonds/0/contexts/0/schemes/0/action'."""
        return self._get(rel)

    def set(self, rel: str, value) -> None:
        """Set a file as the kernel (or another owner) left it, without the semantics of a write."""
        self._put(rel, str(value))

    def commands(self, index: int = 0) -> list[str]:
        """What was written to kdamond `index`'s state file, in order."""
        return [v for rel, v in self.stores if rel == f"kdamonds/{index}/state"]
