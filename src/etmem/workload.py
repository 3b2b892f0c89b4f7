"""A workload with a known hot and cold set, for `etmem demo`, tests and benchmarks.

The child process maps two anonymous regions, each its own VMA: a *cold* one
filled once with a checkable pattern and never touched again, and a *hot* one
whose every page is read and written in a loop. The parent talks to it with
one-line JSON commands on stdin/stdout: `stats`, `verify`, `quit`.

    with Workload(total_mb=512, hot_mb=64) as w:
        w.pid, w.hot, w.cold          # (start, end) address ranges
        w.stats()["ops_per_s"]        # page touches per second, recent window
        w.verify()                    # every byte of both regions still right
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

PAGE = mmap.PAGESIZE
MADV_NOHUGEPAGE = 15
MADV_HUGEPAGE = 14


def _pattern(n_words: int, seed: int) -> np.ndarray:
    """Deterministic 8-byte words: cheap to write and to check again."""
    words = np.arange(n_words, dtype=np.uint64)
    return words * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)


_libc = ctypes.CDLL(None, use_errno=True)
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

    def verify(self, hot_rounds: int | None = None) -> bool:
        expect = _pattern(len(self.words), self.seed)
        if hot_rounds is not None:
            expect[:: PAGE // 8] += np.uint64(hot_rounds)
        return bool(np.array_equal(self.words, expect))


def _child(total_mb: int, hot_mb: int, pause: float, huge: bool) -> None:
    cold = _Region((total_mb - hot_mb) << 20, seed=1, huge=huge)
    hot = _Region(hot_mb << 20, seed=2, huge=huge)
    hot_pages = hot.words[:: PAGE // 8]
    state = {"rounds": 0, "stop": False, "pause": pause}
    recent: list[tuple[float, int]] = [(time.monotonic(), 0)]
    lock = threading.Lock()

    def touch_loop():
        while not state["stop"]:
            hot_pages[:] += np.uint64(1)  # reads and writes every hot page
            with lock:
                state["rounds"] += 1
                recent.append((time.monotonic(), state["rounds"]))
                del recent[:-200]
            if state["pause"]:
                time.sleep(state["pause"])

    worker = threading.Thread(target=touch_loop, daemon=True)
    worker.start()
    print(json.dumps({"pid": os.getpid(), "hot": [hot.start, hot.start + hot.size],
                      "cold": [cold.start, cold.start + cold.size], "page_size": PAGE}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            with lock:
                (t0, r0), (t1, r1) = recent[0], recent[-1]
                rounds = state["rounds"]
            rate = (r1 - r0) * len(hot_pages) / (t1 - t0) if t1 > t0 else 0.0
            print(json.dumps({"rounds": rounds, "ops": rounds * len(hot_pages), "ops_per_s": rate}), flush=True)
        elif cmd == "reset":
            with lock:
                recent[:] = [(time.monotonic(), state["rounds"])]
            print("{}", flush=True)
        elif cmd == "verify":
            state["stop"] = True
            worker.join()
            ok_cold = cold.verify()
            ok_hot = hot.verify(hot_rounds=state["rounds"])
            print(json.dumps({"cold_ok": ok_cold, "hot_ok": ok_hot}), flush=True)
        elif cmd == "quit":
            break
    state["stop"] = True


class WorkloadError(EtmemError):
    """The workload child could not be started."""


class Workload:
    """Parent-side handle of a workload child process."""

    def __init__(self, total_mb: int = 512, hot_mb: int = 64, pause: float = 0.01, huge: bool = False):
        if not 0 < hot_mb < total_mb:
            raise ValueError("need 0 < hot_mb < total_mb")
        self.total_mb, self.hot_mb, self.pause, self.huge = total_mb, hot_mb, pause, huge
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Workload":
        cmd = [sys.executable, "-m", "etmem.workload", str(self.total_mb), str(self.hot_mb), str(self.pause), "1" if self.huge else "0"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = json.loads(self.proc.stdout.readline() or "null")
        if not hello:
            raise WorkloadError(f"the workload process ({self.total_mb} MiB) failed to start "
                                f"(exit status {self.proc.wait()}; see its message above)")
        self.pid = hello["pid"]
        self.hot = tuple(hello["hot"])
        self.cold = tuple(hello["cold"])
        return self

    def _ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        return self._ask("stats")

    def reset_rate(self) -> None:
        self._ask("reset")

    def verify(self) -> bool:
        """Stop touching and check every byte of both regions; True when all are intact."""
        result = self._ask("verify")
        return result["cold_ok"] and result["hot_ok"]

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


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1")
