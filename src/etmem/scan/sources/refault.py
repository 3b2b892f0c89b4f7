"""The `refault` source: which pages of a process are used, found by paging a spread sample of
them out (process_madvise MADV_PAGEOUT) and watching which come back.

It needs only swap and process_madvise (Linux 5.10+), so it tells used from unused pages
inside one mapping on kernels with no per-page access bits to read (no idle_pages, page_idle
or DAMON vaddr). The rate at which sampled pages may come back is the project's
`refault_budget`; docs/scanner.md gives its counts, budget and back-off.
"""
from __future__ import annotations

import glob
import logging
import threading
import time
from collections import OrderedDict

import attrs
import numpy as np

from ... import kernel, procfs
from ...actions import ActionError, swap_out
from ...errors import ProcessGone, ScanError
from ...pages import PAGE
from ...process import ProcessHandle
from ..pagemap import decode_pagemap
from .base import PassEnded, Source, errno_message, read_windows_pagemap

log = logging.getLogger("etmem.scan")

DEFAULT_BUDGET_PERCENT = 5.0  # of the target's resident pages that may come back per minute
MIN_SAMPLE = 64               # pages: the sample never shrinks below this
FIRST_SAMPLE_SHARE = 256      # the first sample of a target is 1/256 of its resident pages
BACKOFF_BASE_S = 300.0        # a page that came back is not sampled again for 300 s x 2**(level-1)
BACKOFF_MAX_LEVEL = 8         # ... at most 300 s x 128 (10.7 h)
MAX_TARGETS = 1024            # targets remembered across scans; the least recently scanned go first
BANK_S = 15.0                 # unspent allowance is kept for 15 s worth, so a minute brings back little more than the budget

_VMA_NOT_SAMPLED = frozenset({"lo", "ht", "io", "pf", "dd"})   # locked, hugetlb, device, raw PFN, no-dump
_KPF_COMPOUND = np.uint64((1 << 15) | (1 << 16))   # /proc/kpageflags COMPOUND_HEAD | COMPOUND_TAIL
_THP = "/sys/kernel/mm/transparent_hugepage"
_OUT, _BACK, _GONE = 0, 1, 2   # a sampled page: still out, came back (used), unmapped by the target meanwhile


@attrs.frozen
class Sampling:
    """What the refault source did in one scan (`PageRefs.sampling`); counts are 4 KiB pages.

    sampled: pages paged out as this scan's sample; came_back: of those, present again by
    the last pass (used); stayed_out: still out at the end (cold, count 0); late_refaults:
    pages of earlier scans' samples found present again at this scan's start; sample_size:
    the sample this scan aimed for (the budget's current N); allowed: the refaults the
    budget allowed since the previous scan; resident: the resident pages the budget is
    taken of; backed_off: pages not sampled because they came back recently; huge: resident
    pages of huge pages (THP), never sampled since paging 4 KiB of one out splits it; note:
    why fewer than sample_size pages were sampled, or None.
    """

    sampled: int = 0
    came_back: int = 0
    stayed_out: int = 0
    late_refaults: int = 0
    sample_size: int = 0
    allowed: float = 0.0
    resident: int = 0
    backed_off: int = 0
    huge: int = 0
    note: str | None = None


# --- the pure parts: sample, budget, back-off ---------------------------------------

def stratified_sample(pages: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n of the sorted pages spread over all of them: one random page from each of n equal strata."""
    m = len(pages)
    if n >= m:
        return pages.copy()
    bounds = np.arange(n + 1, dtype=np.int64) * m // n
    lo, width = bounds[:-1], np.diff(bounds)
    return pages[lo + (rng.random(n) * width).astype(np.int64)]


def next_sample_size(n: int, came_back: int, allowed: float, ceiling: int) -> int:
    """The sample size after a round in which came_back pages came back and `allowed` might.

    N *= allowed / came_back, at most doubling: the sample doubles while fewer than half of
    the allowed pages come back, grows in proportion up to the budget, and shrinks in
    proportion above it; never below MIN_SAMPLE, never above `ceiling` (the resident pages).
    """
    n = n * 2 if came_back * 2 <= allowed else int(n * allowed / came_back)
    return max(MIN_SAMPLE, min(n, ceiling))


class Backoff:
    """The pages that came back, each with the time it may be sampled again and its level.

    A page's level grows by one each time it comes back (at most BACKOFF_MAX_LEVEL) and it
    is not sampled again for base * 2**(level-1) seconds. Arrays sorted by address.
    """

    def __init__(self, base: float = BACKOFF_BASE_S, max_level: int = BACKOFF_MAX_LEVEL):
        self.base, self.max_level = base, max_level
        self.addr = np.zeros(0, np.uint64)
        self.until = np.zeros(0, np.float64)
        self.level = np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.addr)

    def _find(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.addr, addrs)
        safe = np.minimum(pos, max(len(self.addr) - 1, 0))
        known = (pos < len(self.addr)) & (self.addr[safe] == addrs) if len(self.addr) else np.zeros(len(addrs), bool)
        return safe, known

    def blocked(self, addrs: np.ndarray, now: float) -> np.ndarray:
        """Mask of addrs that may not be sampled at time now."""
        pos, known = self._find(addrs)
        out = np.zeros(len(addrs), dtype=bool)
        out[known] = self.until[pos[known]] > now
        return out

    def came_back(self, addrs: np.ndarray, now: float) -> None:
        """Record that the (distinct) pages at addrs came back at time now."""
        addrs = np.unique(np.asarray(addrs, dtype=np.uint64))
        if not len(addrs):
            return
        pos, known = self._find(addrs)
        level = np.ones(len(addrs), dtype=np.uint8)
        level[known] = np.minimum(self.level[pos[known]].astype(np.int32) + 1, self.max_level)
        until = now + self.base * np.exp2(level.astype(np.float64) - 1)
        keep = np.ones(len(self.addr), dtype=bool)
        keep[pos[known]] = False
        self._set(np.concatenate([self.addr[keep], addrs]), np.concatenate([self.until[keep], until]),
                  np.concatenate([self.level[keep], level]))

    def forget(self, addrs: np.ndarray) -> None:
        """Drop the pages at addrs (they stayed out when sampled again: cold now)."""
        pos, known = self._find(np.asarray(addrs, dtype=np.uint64))
        if known.any():
            keep = np.ones(len(self.addr), dtype=bool)
            keep[pos[known]] = False
            self._set(self.addr[keep], self.until[keep], self.level[keep])

    def keep_only(self, inside: np.ndarray) -> None:
        """Keep the entries where inside (a mask over them) is true: pages still mapped."""
        self._set(self.addr[inside], self.until[inside], self.level[inside])

    def _set(self, addr, until, level) -> None:
        order = np.argsort(addr, kind="stable")
        self.addr, self.until, self.level = addr[order], until[order], level[order]


class TargetMemory:
    """What the source remembers about one target process between scans."""

    def __init__(self, budget_percent: float):
        self.budget_percent = budget_percent
        self.sample_size = 0                  # 0: not yet sized (first scan)
        self.tokens = 0.0                     # refaults the budget still allows (negative: overspent)
        self.accounted_at: float | None = None
        self.pending_came_back = 0            # came back in the last scan, charged at the next one
        self.sampled_last = False
        self.out = np.zeros(0, np.uint64)     # sampled pages that stayed out, sorted
        self.backoff = Backoff()
        self.rng = np.random.default_rng()

    def settle(self, now: float, resident: int, late: int) -> tuple[float, int]:
        """Charge what came back since the last scan to the budget; size this scan's sample.

        Returns (allowed, came_back): what the budget allowed and what came back since the
        previous scan. The allowance is budget_percent of resident per minute, banked up
        to BANK_S seconds' worth; a budget overspent (tokens < 0) pauses the sampling, for at
        most about a minute: the debt is capped at a minute's allowance, since a one-off
        burst (a swapoff bringing every page of a device back, one sweep over all memory)
        says little about the next samples, and the sample size has shrunk for it already.
        """
        came = self.pending_came_back + late
        allowed = 0.0
        per_minute = self.budget_percent / 100 * resident
        if self.accounted_at is None:
            self.sample_size = max(MIN_SAMPLE, resident // FIRST_SAMPLE_SHARE)
        else:
            allowed = per_minute * (now - self.accounted_at) / 60
            self.tokens = max(min(self.tokens + allowed, per_minute * BANK_S / 60) - came, -per_minute)
            if self.sampled_last:
                self.sample_size = next_sample_size(self.sample_size, came, allowed, max(MIN_SAMPLE, resident))
        self.accounted_at = now
        self.pending_came_back = 0
        self.sampled_last = False
        return allowed, came


_STORE: OrderedDict[tuple[int, int], TargetMemory] = OrderedDict()
_STORE_LOCK = threading.Lock()


def memory_for(ident: tuple[int, int], budget_percent: float) -> TargetMemory:
    """The memory of target ident (pid, start time), made on its first scan.

    Every call first drops the memory of processes that have exited (their pid no longer
    has that start time), and keeps at most MAX_TARGETS, the least recently scanned going first.
    """
    with _STORE_LOCK:
        for key in [k for k in _STORE if not _alive(k)]:
            del _STORE[key]
        mem = _STORE.pop(ident, None) or TargetMemory(budget_percent)
        mem.budget_percent = budget_percent
        _STORE[ident] = mem
        while len(_STORE) > MAX_TARGETS:
            _STORE.popitem(last=False)
        return mem


def _alive(ident: tuple[int, int]) -> bool:
    try:
        return procfs.start_time(ident[0]) == ident[1]
    except (procfs.ProcError, OSError, ValueError, IndexError):
        return False


# --- kernel reads ------------------------------------------------------------------

def _gather(path: str, index: np.ndarray, opener, chunk: int = 512, run_max: int = 1 << 16) -> np.ndarray:
    """The uint64 entries at index (sorted) of a table file (pagemap, kpageflags).

    Only the chunks of `chunk` entries that hold an index are read, neighbouring chunks
    together in one read of up to `run_max` entries: a sample spread thinly costs one small
    read per chunk, a dense one a few large reads.
    """
    out = np.zeros(len(index), dtype=np.uint64)
    if not len(index):
        return out
    index = index.astype(np.uint64)
    chunks = np.unique(index // np.uint64(chunk)).astype(np.int64)
    per_run = max(1, run_max // chunk)
    new_run = np.ones(len(chunks), dtype=bool)
    new_run[1:] = np.diff(chunks) != 1
    run_id = np.cumsum(new_run) - 1
    first = np.flatnonzero(new_run)
    new_run |= (np.arange(len(chunks)) - first[run_id]) % per_run == 0   # cap each read at run_max
    starts = np.flatnonzero(new_run)
    lengths = np.diff(np.append(starts, len(chunks)))
    table = np.zeros(len(chunks) * chunk, dtype=np.uint64)
    f = opener(path, "rb")
    try:
        for pos, n in zip(starts.tolist(), lengths.tolist()):
            f.seek(int(chunks[pos]) * chunk * 8)
            raw = np.frombuffer(f.read(n * chunk * 8), dtype=np.uint64)
            table[pos * chunk:pos * chunk + len(raw)] = raw
    finally:
        f.close()
    rows = np.searchsorted(chunks, (index // np.uint64(chunk)).astype(np.int64))
    return table[rows * chunk + (index % np.uint64(chunk)).astype(np.int64)]


def pmd_huge_pages(base: int, present: np.ndarray, pfn: np.ndarray, pmd_pages: int = 512) -> np.ndarray:
    """Mask of the pages of [base, ...) that lie in PMD-mapped huge pages, from their pagemap.

    A 2 MiB huge page shows as a 2 MiB-aligned run of present pages whose frame numbers
    are consecutive from a 2 MiB-aligned frame. (Ordinary pages that happen to look so are
    left unsampled too: rare, and safe.)
    """
    n = len(present)
    out = np.zeros(n, dtype=bool)
    first = (-(base // PAGE)) % pmd_pages
    blocks = max(0, (n - first) // pmd_pages)
    if not blocks:
        return out
    sl = slice(first, first + blocks * pmd_pages)
    p = present[sl].reshape(blocks, pmd_pages)
    f = pfn[sl].reshape(blocks, pmd_pages)
    huge = p.all(axis=1) & (f[:, 0] % np.uint64(pmd_pages) == 0) & (np.diff(f, axis=1) == 1).all(axis=1)
    out[sl] = np.repeat(huge, pmd_pages)
    return out


def _small_thp_enabled() -> bool:
    """Whether the kernel may give anonymous memory multi-size THP folios smaller than a PMD.

    Those are PTE-mapped, so the pagemap does not show them; /proc/kpageflags does.
    """
    def setting(path: str) -> str:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            return "never"
        return text[text.find("[") + 1:text.find("]")] if "[" in text else "never"
    try:
        with open(f"{_THP}/hpage_pmd_size") as f:
            pmd_kb = int(f.read()) >> 10
    except (OSError, ValueError):
        return False   # no THP at all
    top = setting(f"{_THP}/enabled")
    for path in glob.glob(f"{_THP}/hugepages-*kB/enabled"):
        size_kb = int(path.rsplit("hugepages-", 1)[1].split("kB", 1)[0])
        mode = setting(path)
        if size_kb < pmd_kb and (mode in ("always", "madvise") or (mode == "inherit" and top != "never")):
            return True
    return False


# --- the source ----------------------------------------------------------------------

class RefaultSource(Source):
    """Pages a spread sample of the target's pages out and counts which come back (docs/scanner.md)."""

    name = "refault"
    rank = 40          # after damon (30), before smaps (50): per page where no access bits exist
    per_vma = False
    pages_out = True   # its samples go to swap: not for read-only scans (cslide)

    @classmethod
    def probe(cls, opener=None):
        return None if kernel.has_process_madvise() else kernel.missing("process_madvise")

    @classmethod
    def live_problem(cls, opener=None):
        return None if kernel.swap_active() else f"{kernel.missing('swap')}; the refault source pages samples out to it"

    def __init__(self, scanner, stop=None):
        super().__init__(scanner, stop)
        budget = scanner.refault_budget
        self.budget_percent = DEFAULT_BUDGET_PERCENT if budget is None else float(budget)
        self.counters = scanner.counters
        self.sampling: Sampling | None = None
        self.handle: ProcessHandle | None = None
        self.own_handle = False
        self.memory: TargetMemory | None = None
        self.sample = np.zeros(0, np.uint64)        # this scan's sampled page addresses, sorted
        self.state = np.zeros(0, dtype=np.int8)      # per sampled page: _OUT, _BACK or _GONE
        self.layout = (np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(1, np.int64))
        self.refusal = ""
        self.huge = 0                                 # resident pages of huge pages: never sampled
        self.figures: dict = {}

    def wait_before(self, index, sleep):
        return sleep   # the sample went out in begin(): the first pass waits too

    # -- begin: pick the sample and page it out ------------------------------------------------
    def begin(self, windows, sleep):
        if not kernel.swap_active():
            raise ScanError(f"scanner source 'refault' cannot run: {kernel.missing('swap')}")
        try:
            self._open_handle()
            self._begin(windows)
        except BaseException:
            self._close_handle()
            raise

    def _open_handle(self) -> None:
        target = self.scanner.target
        if isinstance(target, ProcessHandle):
            self.handle = target
            return
        try:
            self.handle = ProcessHandle.open(self.pid)
        except ProcessGone as exc:
            raise PassEnded(str(exc)) from None
        self.own_handle = True

    def _close_handle(self) -> None:
        if self.own_handle and self.handle is not None:
            self.handle.close()
        self.handle = None

    def _begin(self, windows) -> None:
        now = time.monotonic()
        maps = [(w, pm) for w, pm in read_windows_pagemap(self.opener, self.pid, windows)]
        bases = np.array([w.base for w, _ in maps], dtype=np.uint64)
        ends = np.array([w.vma.end for w, _ in maps], dtype=np.uint64)
        present = np.concatenate([pm["present"] for _, pm in maps]) if maps else np.zeros(0, bool)
        swapped = np.concatenate([pm["swapped"] for _, pm in maps]) if maps else np.zeros(0, bool)
        self.layout = (bases, ends, np.concatenate([[0], np.cumsum((ends - bases) // np.uint64(PAGE))]).astype(np.int64))
        resident = int(present.sum())
        mem = self.memory = memory_for((self.handle.pid, self.handle.start_time), self.budget_percent)

        # Pages sampled out earlier and present again: late refaults. Pages neither
        # present nor in swap any more were unmapped: forgotten.
        slot, inside = self._slots(mem.out)
        late = np.zeros(len(mem.out), dtype=bool)
        late[inside] = present[slot[inside]]
        still_out = inside & ~late
        still_out[inside] &= swapped[slot[inside]]
        mem.backoff.came_back(mem.out[late], now)
        mem.out = mem.out[still_out]
        _, mapped = self._slots(mem.backoff.addr)
        mem.backoff.keep_only(mapped)
        allowed, came = mem.settle(now, resident, int(late.sum()))

        eligible, refused = self._eligible(maps)
        blocked = mem.backoff.blocked(eligible, now)
        candidates = eligible[~blocked]
        self.figures = dict(late_refaults=int(late.sum()), sample_size=mem.sample_size, allowed=allowed,
                            resident=resident, backed_off=int(blocked.sum()))
        if not len(eligible) and refused:
            raise ScanError(f"process {self.pid} has no memory the refault source may page out: its "
                            f"{refused * PAGE >> 10} KiB resident in the scanned VMAs {self.refusal}; nothing was paged out")
        if mem.tokens < 0:
            self.figures["note"] = (f"refault budget spent: {came} pages came back since the previous sample, "
                                    f"{allowed:.0f} allowed ({self.budget_percent:g}% of {resident} resident pages "
                                    f"per minute); sampling resumes when the budget allows")
            return
        if not len(candidates):
            self.figures["note"] = ("no page to sample: every resident page is backed off after coming back"
                                    if len(eligible) else
                                    "no page to sample: the resident pages are all in huge pages, which are never sampled"
                                    if self.huge else "no resident page to sample")
            return
        sample = stratified_sample(candidates, mem.sample_size, mem.rng)
        if len(sample) < mem.sample_size:
            self.figures["note"] = f"only {len(sample)} pages may be sampled"
        sample = self._drop_small_thp(sample, maps)
        self._page_out(sample)

    def _slots(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot in the concatenated windows, inside a scanned window) for page addresses."""
        bases, ends, offsets = self.layout
        if not len(bases):
            return np.zeros(len(addrs), np.int64), np.zeros(len(addrs), bool)
        w = np.maximum(np.searchsorted(bases, addrs, side="right").astype(np.int64) - 1, 0)
        inside = (addrs >= bases[w]) & (addrs < ends[w])
        return offsets[w] + ((addrs - bases[w]) // np.uint64(PAGE)).astype(np.int64), inside

    def _eligible(self, maps) -> tuple[np.ndarray, int]:
        """The addresses of the pages that may be sampled (sorted), and how many resident pages may not.

        Resident, exclusive to the target, anonymous (not file or shared-anonymous), in a
        private VMA that is not locked, hugetlb or a device mapping.
        """
        parts, refused, reasons = [], 0, set()
        pfns_visible = self._pfns_visible(maps)
        for w, pm in maps:
            vma = w.vma
            present = pm["present"]
            if not vma.is_private or vma.vmflags & _VMA_NOT_SAMPLED or vma.path.startswith("/anon_hugepage"):
                n = int(present.sum())
                if n:
                    refused += n
                    reasons.add("are mlocked" if "lo" in vma.vmflags else
                                "are hugetlb pages" if "ht" in vma.vmflags or vma.path.startswith("/anon_hugepage") else
                                "are shared" if not vma.is_private else "are device or raw PFN mappings")
                continue
            ok = present & pm["exclusive"] & ~pm["file"]
            n_refused = int(present.sum()) - int(ok.sum())
            if pfns_visible:
                huge = ok & pmd_huge_pages(w.base, present, pm["pfn"])
                self.huge += int(huge.sum())
                ok &= ~huge
            if n_refused:
                refused += n_refused
                reasons.add("are shared with another process or a file (not exclusive to it)")
            parts.append(np.uint64(w.base) + np.flatnonzero(ok).astype(np.uint64) * np.uint64(PAGE))
        self.refusal = " or ".join(sorted(reasons)) or "cannot be paged out"
        eligible = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        if len(eligible) > 1 and not (eligible[1:] > eligible[:-1]).all():
            eligible = np.unique(eligible)   # overlapping ranges gave a page twice
        return eligible, refused

    def _pfns_visible(self, maps) -> bool:
        """Whether pagemap shows frame numbers (CAP_SYS_ADMIN), which tell huge pages apart.

        Without them the source samples only a target that has no huge pages (its
        smaps_rollup AnonHugePages is 0) on a kernel without smaller multi-size THPs.
        """
        if any(pm["pfn"].any() for _, pm in maps) or not any(pm["present"].any() for _, pm in maps):
            return True
        try:
            rollup = procfs.read_text(self.pid, "smaps_rollup")
        except procfs.ProcError as exc:
            raise PassEnded(str(exc)) from None
        thp_kb = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("AnonHugePages:")), 0)
        if thp_kb or _small_thp_enabled():
            raise ScanError(f"/proc/{self.pid}/pagemap hides page frame numbers (reading them needs CAP_SYS_ADMIN), "
                            "so the refault source cannot tell the huge pages a 4 KiB page-out would split; "
                            "nothing was paged out")
        return False

    def _drop_small_thp(self, sample: np.ndarray, maps) -> np.ndarray:
        """The sample without pages of multi-size THP folios (kernels where they are enabled)."""
        if not len(sample) or not _small_thp_enabled():
            return sample
        slot, _ = self._slots(sample)
        pfn = np.concatenate([pm["pfn"] for _, pm in maps])[slot]
        order = np.argsort(pfn)
        try:
            flags = np.empty(len(pfn), dtype=np.uint64)
            flags[order] = _gather("/proc/kpageflags", pfn[order], self.opener, chunk=64)
        except OSError as exc:
            raise ScanError(f"cannot tell multi-size THP folios apart (/proc/kpageflags: {exc.strerror or exc}); "
                            "a 4 KiB page-out would split them, so nothing was paged out") from None
        large = (flags & _KPF_COMPOUND) != 0
        self.huge += int(large.sum())
        return sample[~large]

    def _page_out(self, sample: np.ndarray) -> None:
        try:
            result = swap_out(self.handle, sample, counters=self.counters, method="process_madvise", stop=self.stop)
        except ProcessGone:
            raise PassEnded(f"process {self.pid} exited while its sample was paged out") from None
        except ActionError as exc:
            raise PassEnded(str(exc)) from None
        if result.stopped and result.done == 0:
            raise PassEnded(result.error)
        if result.done == 0 and result.error:
            raise ScanError(f"the refault source could not page its sample out: {result.error}")
        self.sample = sample
        self.state = np.full(len(sample), _OUT, dtype=np.int8)
        self.memory.sampled_last = True
        if result.error:
            # Swap filled up (or the kernel stopped) part-way: the pages still present were
            # not paged out, and must not count as used. Only they are left out.
            self.figures["note"] = result.error
            self._look(np.flatnonzero(self.state == _OUT), _GONE)

    def _look(self, which: np.ndarray, present_means: int) -> None:
        """Read the pagemap entries of the sampled pages `which`; mark the present ones."""
        try:
            entries = _gather(f"/proc/{self.pid}/pagemap", self.sample[which] // np.uint64(PAGE), self.opener)
        except OSError as exc:
            raise PassEnded(errno_message(exc, self.pid, f"/proc/{self.pid}/pagemap")) from None
        self.state[which[decode_pagemap(entries)["present"]]] = present_means

    # -- passes: which sampled pages came back -------------------------------------------------
    def one_pass(self, windows, index, last):
        if not self.handle.alive():   # a zombie's pagemap reads as empty: every page would look out
            raise PassEnded(f"process {self.pid} exited during the scan")
        out = np.flatnonzero(self.state == _OUT)
        if not last:
            if len(out):
                self._look(out, _BACK)
            return
        # The last pass reads the whole pagemap: every present page is an entry, "used or
        # not known idle"; a sampled page present again came back; one that stayed out
        # (and is in swap, not unmapped) is an entry with count 0.
        used = (index + 1) * 3
        stayed = self.sample[out]
        for w, pm in read_windows_pagemap(self.opener, self.pid, windows):
            present = pm["present"]
            mine = np.flatnonzero((stayed >= np.uint64(w.base)) & (stayed < np.uint64(w.vma.end)))
            slots = ((stayed[mine] - np.uint64(w.base)) // np.uint64(PAGE)).astype(np.int64)
            back, in_swap = present[slots], pm["swapped"][slots]
            self.state[out[mine[back]]] = _BACK
            self.state[out[mine[~back & ~in_swap]]] = _GONE
            w.kinds[present] = 1
            w.counts[present] = used
            cold = slots[in_swap & ~back]
            w.kinds[cold] = 1
            w.counts[cold] = 0

    # -- end: remember what came back and what stayed out ---------------------------------------
    def end(self):
        try:
            mem = self.memory
            if mem is None:
                return
            now = time.monotonic()
            stayed, came_back = self.sample[self.state == _OUT], self.sample[self.state == _BACK]
            mem.backoff.came_back(came_back, now)
            mem.backoff.forget(stayed)
            mem.out = np.union1d(mem.out, stayed)
            mem.pending_came_back += len(came_back)
            self.sampling = Sampling(sampled=int((self.state != _GONE).sum()), came_back=len(came_back),
                                     stayed_out=len(stayed), huge=self.huge, **self.figures)
            log.debug("refault sample of pid %d: %s", self.pid, self.sampling)
        finally:
            self._close_handle()


SOURCE = RefaultSource
