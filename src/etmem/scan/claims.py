"""One scan of a process at a time: `CLAIMS`, the processes this Python process is scanning now."""
from __future__ import annotations

import threading

from .. import procfs


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
