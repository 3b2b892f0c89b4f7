"""A workload with a known hot and cold set, for `etmem demo`, tests and benchmarks.

The child process holds anonymous memory filled once with a checkable pattern, of
which a known set of *hot* pages is read and written in a loop while the *cold*
rest is never touched again. Two layouts:

- `scattered`: one mapping (one VMA), its hot pages at seeded random page indices,
  as the hot objects of a real heap lie among the cold ones;
- `split`: two mappings, each its own VMA, a cold one and a hot one.

The parent talks to it with one-line JSON commands on stdin/stdout: `stats`,
`reset`, `verify`, `quit`. The ground truth is on the parent's side:

    with Workload(total_mb=512, hot_mb=64, layout="scattered") as w:
        w.pid, w.region               # (start, end) of the one mapping
        w.hot_pages, w.cold_pages     # page addresses (uint64), sorted
        w.placement()                 # recall, precision, hot set resident, from pagemap
        w.stats()["ops_per_s"]        # page touches per second, recent window
        w.verify()                    # every byte still right

With `layout="split"`, `w.hot` and `w.cold` are the (start, end) ranges of the two
mappings (and `w.region` is None). The child imports only numpy and the standard
library, and ignores SIGINT: Ctrl-C stops the parent, which then stops the child.
"""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys
import threading
import time

import numpy as np

from .errors import EtmemError
from .kernel.abi import MADV_HUGEPAGE, MADV_NOHUGEPAGE
from .kernel.abi import libc as _libc

PAGE = mmap.PAGESIZE
LAYOUTS = ("scattered", "split")
HOT_SEED = 7   # the default seed of the scattered layout's hot page indices

# The child ignores SIGINT before importing anything, so a Ctrl-C meant for the
# parent (which stops the child itself) prints no KeyboardInterrupt from the child.
_CHILD = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); import etmem.workload as w; w.main()"


def _pattern(n_words: int, seed: int) -> np.ndarray:
    """Deterministic 8-byte words: cheap to write and to check again."""
    words = np.arange(n_words, dtype=np.uint64)
    return words * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)


def hot_page_indices(n_pages: int, n_hot: int, seed: int) -> np.ndarray:
    """The scattered layout's hot pages: n_hot distinct page indices of n_pages, sorted."""
    return np.sort(np.random.default_rng(seed).choice(n_pages, n_hot, replace=False)).astype(np.int64)


_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class _Region:
    """An anonymous mapping of `size` bytes that is a VMA of its own.

    PROT_NONE guard pages on both sides stop the kernel from merging it with a
    neighbouring mapping, so per-VMA sources (smaps) can tell the regions apart.
    """

    def __init__(self, size: int, seed: int, huge: bool):
        self.map = mmap.mmap(-1, size + 2 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.map.madvise(MADV_HUGEPAGE if huge else MADV_NOHUGEPAGE)
        guard = np.frombuffer(self.map, dtype=np.uint8).ctypes.data
        base = guard + PAGE
        for page in (guard, base + size):
            if _libc.mprotect(page, PAGE, 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect of a guard page failed")
        self.words = np.frombuffer(self.map, dtype=np.uint64, count=size // 8, offset=PAGE)
        self.words[:] = _pattern(len(self.words), seed)
        self.seed = seed
        self.start = base
        self.size = size

    def verify(self, touched_words: np.ndarray | slice, rounds: int) -> bool:
        """Every word matches the pattern, plus `rounds` on the words the hot loop touches."""
        expect = _pattern(len(self.words), self.seed)
        expect[touched_words] += np.uint64(rounds)
        return bool(np.array_equal(self.words, expect))


def _child(total_mb: int, hot_mb: int, pause: float, huge: bool, layout: str, seed: int) -> None:
    if layout == "split":
        cold = _Region((total_mb - hot_mb) << 20, seed=1, huge=huge)
        hot = _Region(hot_mb << 20, seed=2, huge=huge)
        regions = [(cold, slice(0, 0)), (hot, slice(None, None, PAGE // 8))]
        hello = {"hot": [hot.start, hot.start + hot.size], "cold": [cold.start, cold.start + cold.size]}
    else:
        one = _Region(total_mb << 20, seed=1, huge=huge)
        hot_idx = hot_page_indices((total_mb << 20) // PAGE, (hot_mb << 20) // PAGE, seed)
        regions = [(one, hot_idx * (PAGE // 8))]
        hello = {"region": [one.start, one.start + one.size]}
    region, touched = regions[-1]
    n_hot = (hot_mb << 20) // PAGE
    state = {"rounds": 0, "stop": False}
    recent: list[tuple[float, int]] = [(time.monotonic(), 0)]
    lock = threading.Lock()

    def touch_loop():
        while not state["stop"]:
            region.words[touched] += np.uint64(1)  # reads and writes one word of every hot page
            with lock:
                state["rounds"] += 1
                recent.append((time.monotonic(), state["rounds"]))
                del recent[:-200]
            if pause:
                time.sleep(pause)

    worker = threading.Thread(target=touch_loop, daemon=True)
    worker.start()
    print(json.dumps({"pid": os.getpid(), "page_size": PAGE, **hello}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            with lock:
                (t0, r0), (t1, r1) = recent[0], recent[-1]
                rounds = state["rounds"]
            rate = (r1 - r0) * n_hot / (t1 - t0) if t1 > t0 else 0.0
            print(json.dumps({"rounds": rounds, "ops": rounds * n_hot, "ops_per_s": rate}), flush=True)
        elif cmd == "reset":
            with lock:
                recent[:] = [(time.monotonic(), state["rounds"])]
            print("{}", flush=True)
        elif cmd == "verify":
            state["stop"] = True
            worker.join()
            ok = all(r.verify(words, state["rounds"] if r is region else 0) for r, words in regions)
            print(json.dumps({"ok": ok}), flush=True)
        elif cmd == "quit":
            break
    state["stop"] = True


class WorkloadError(EtmemError):
    """The workload child could not be started."""


def _pagemap_bits(pid: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(present, swapped) per page of [start, end), read plainly from /proc/PID/pagemap."""
    n = (end - start) // PAGE
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
        f.seek(start // PAGE * 8)
        raw = np.frombuffer(f.read(n * 8), dtype=np.uint64)
    one = np.uint64(1)
    return (raw >> np.uint64(63)) & one == one, (raw >> np.uint64(62)) & one == one


class Workload:
    """Parent-side handle of a workload child process.

    layout: "split" (default: a cold VMA and a hot VMA) or "scattered" (one VMA, hot
    pages at random indices drawn with `seed`). pause: seconds between touch rounds.
    """

    def __init__(self, total_mb: int = 512, hot_mb: int = 64, pause: float = 0.01, huge: bool = False,
                 layout: str = "split", seed: int = HOT_SEED):
        if not 0 < hot_mb < total_mb:
            raise ValueError("need 0 < hot_mb < total_mb")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        self.total_mb, self.hot_mb, self.pause, self.huge = total_mb, hot_mb, pause, huge
        self.layout, self.seed = layout, seed
        self.proc: subprocess.Popen | None = None
        self.region = self.hot = self.cold = None

    def start(self) -> "Workload":
        cmd = [sys.executable, "-c", _CHILD, str(self.total_mb), str(self.hot_mb), str(self.pause),
               "1" if self.huge else "0", self.layout, str(self.seed)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = json.loads(self.proc.stdout.readline() or "null")
        if not hello:
            raise WorkloadError(f"the workload process ({self.total_mb} MiB) failed to start "
                                f"(exit status {self.proc.wait()}; see its message above)")
        self.pid = hello["pid"]
        if self.layout == "split":
            self.hot, self.cold = tuple(hello["hot"]), tuple(hello["cold"])
            self.hot_pages = _pages_of(*self.hot)
            self.cold_pages = _pages_of(*self.cold)
        else:
            self.region = tuple(hello["region"])
            start, end = self.region
            n_pages = (end - start) // PAGE
            hot_idx = hot_page_indices(n_pages, (self.hot_mb << 20) // PAGE, self.seed)
            is_hot = np.zeros(n_pages, dtype=bool)
            is_hot[hot_idx] = True
            every = _pages_of(start, end)
            self.hot_pages, self.cold_pages = every[is_hot], every[~is_hot]
        return self

    def placement(self) -> dict:
        """Where the hot and cold pages are now, from /proc/PID/pagemap.

        hot_pages / cold_pages: how many there are; hot_resident: fraction of hot pages
        present; cold_swapped: cold pages in swap; swapped: all pages in swap;
        recall: cold_swapped / cold_pages; precision: cold pages among the swapped ones
        (None when nothing is swapped).
        """
        hot_present, hot_swapped = self._bits(self.hot_pages)
        _, cold_swapped = self._bits(self.cold_pages)
        cold_out, hot_out = int(cold_swapped.sum()), int(hot_swapped.sum())
        swapped = cold_out + hot_out
        return {"hot_pages": len(self.hot_pages), "cold_pages": len(self.cold_pages),
                "hot_resident": float(hot_present.mean()), "cold_swapped": cold_out, "swapped": swapped,
                "recall": cold_out / len(self.cold_pages), "precision": cold_out / swapped if swapped else None}

    def _bits(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(present, swapped) of the given sorted page addresses, one pagemap read per region."""
        ranges = [self.region] if self.layout == "scattered" else [self.hot, self.cold]
        present = np.zeros(len(pages), dtype=bool)
        swapped = np.zeros(len(pages), dtype=bool)
        for start, end in ranges:
            inside = (pages >= start) & (pages < end)
            p, s = _pagemap_bits(self.pid, start, end)
            slots = ((pages[inside] - np.uint64(start)) // np.uint64(PAGE)).astype(np.int64)
            present[inside], swapped[inside] = p[slots], s[slots]
        return present, swapped

    def _ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        return self._ask("stats")

    def reset_rate(self) -> None:
        self._ask("reset")

    def verify(self) -> bool:
        """Stop touching and check every byte of the workload's memory; True when all is intact."""
        return self._ask("verify")["ok"]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Workload":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _pages_of(start: int, end: int) -> np.ndarray:
    return np.arange(start, end, PAGE, dtype=np.uint64)


def main() -> None:
    """The child's entry point: argv is total_mb hot_mb pause huge layout seed."""
    total_mb, hot_mb, pause, huge, layout, seed = sys.argv[1:7]
    _child(int(total_mb), int(hot_mb), float(pause), huge == "1", layout, int(seed))
