"""Counters for every kernel call a task makes, in the manner of memtierd's `stats`.

One `CallCounters` per task: for each call name (process_madvise, swap_pages,
move_pages, move_pages_query, ...) the number of calls, pages asked for, pages the
kernel did, bytes done and errors by errno name. Thread-safe.
"""
from __future__ import annotations

import errno as _errno
import threading


def errno_name(err: int) -> str:
    return _errno.errorcode.get(abs(err), f"E{abs(err)}")


class CallCounters:
    """Per-call counters of one task; `as_dict()` for the API, `table()` for people."""

    def __init__(self):
        self._lock = threading.Lock()
        self._calls: dict[str, dict] = {}

    def record(self, call: str, requested_pages: int, done_pages: int, nbytes: int, errno: int = 0) -> None:
        """Count one kernel call; `errno` (or several pages' errnos via record_errors) on failure."""
        with self._lock:
            row = self._row(call)
            row["calls"] += 1
            row["pages_requested"] += int(requested_pages)
            row["pages_done"] += int(done_pages)
            row["bytes"] += int(nbytes)
            if errno:
                name = errno_name(errno)
                row["errors"][name] = row["errors"].get(name, 0) + 1

    def record_errors(self, call: str, by_errno: dict[int, int]) -> None:
        """Add per-page failures (errno → pages) found in one call's status array."""
        with self._lock:
            row = self._row(call)
            for err, n in by_errno.items():
                name = errno_name(err)
                row["errors"][name] = row["errors"].get(name, 0) + int(n)

    def _row(self, call: str) -> dict:
        row = self._calls.get(call)
        if row is None:
            row = self._calls[call] = {"calls": 0, "pages_requested": 0, "pages_done": 0, "bytes": 0, "errors": {}}
        return row

    def as_dict(self) -> dict:
        """{call: {"calls", "pages_requested", "pages_done", "bytes", "errors": {"ENOMEM": n}}} (a copy)."""
        with self._lock:
            return {call: dict(row, errors=dict(row["errors"])) for call, row in self._calls.items()}

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()

    def table(self) -> str:
        """A text table: one row per call, errors as NAME:count."""
        rows = self.as_dict()
        header = ("call", "calls", "pages req", "pages done", "MB", "errors")
        lines = [header]
        for call in sorted(rows):
            r = rows[call]
            errors = " ".join(f"{k}:{v}" for k, v in sorted(r["errors"].items())) or "-"
            lines.append((call, str(r["calls"]), str(r["pages_requested"]), str(r["pages_done"]),
                          f"{r['bytes'] / (1 << 20):.1f}", errors))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = []
        for line in lines:
            cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:5], widths[1:5])] + [line[5]]
            out.append("  ".join(cells).rstrip())
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"<CallCounters {self.as_dict()}>"
