"""What tasks did: a round's typed results, the task's running totals, and per-call kernel counters.

Engines return a `RoundResult` (one `TargetResult` per target) from each round;
`merge_round` is the one function that folds it into the task's `TaskStats`, which
`project show`, `-o json`, the demo and the Python API all read. `CallCounters`
counts every kernel call a task makes, in the manner of memtierd's `stats`. Every
round also goes into the task's bounded `history` (etmem.history), read by the reports.
"""
from __future__ import annotations

import errno as _errno
import threading

import attrs

from .history import History, ScanSummary


@attrs.define
class TargetResult:
    """What one round did to one target (a process; `pid` is None for other kinds of target).

    Page figures are in 4 KiB pages. `detail` holds an engine's own figures about the
    target (the refault source's sampling figures, a cgroup's pressure), shown as they are.
    In a dry run (`dry_run`) `chosen` is what the engine would have acted on, and nothing
    was done. `scan` is the round's etmem.history.ScanSummary, kept in the task's history.
    """

    pid: int | None = None
    scanned: int = 0      # pages seen resident by the scan
    cold: int = 0         # of those, pages the engine's rule calls cold
    chosen: int = 0       # pages chosen for action after limits (cslide: pages it plans to move)
    swapped: int = 0      # pages the kernel swapped out
    refaulted: int = 0    # pages swapped out earlier that are resident again
    source: str | None = None
    skipped: str | None = None   # why nothing was done to this target
    error: str | None = None
    detail: dict = attrs.field(factory=dict)
    dry_run: bool = False
    resident_bytes: int | None = None   # the target's resident and swapped memory after the round
    swapped_bytes: int | None = None
    scan: ScanSummary | None = None


@attrs.define
class RoundResult:
    """What one round did for one task: its targets, or why the whole round did nothing."""

    targets: list = attrs.field(factory=list)     # TargetResult
    skipped: str | None = None
    errors: list = attrs.field(factory=list)      # messages that are not about one target

    def error_text(self) -> str | None:
        """Every error of the round in one line, or None."""
        texts = list(self.errors)
        texts += [f"process {t.pid}: {t.error}" if t.pid is not None else t.error for t in self.targets if t.error]
        return "; ".join(texts) or None


@attrs.define
class TaskStats:
    """What a task has done so far; `merge_round` keeps it, engines may add to `extra`."""

    rounds: int = 0
    targets: int = 0
    pages_scanned: int = 0
    cold_pages: int = 0
    pages_chosen: int = 0
    pages_swapped: int = 0
    refaults: int = 0
    round_seconds: float = 0.0          # time spent in rounds so far
    last_error: str | None = None
    skipped: str | None = None
    source: str | None = None
    last_round_seconds: float | None = None
    # of the last round that ran, summed over the targets that measured them (None: none did)
    working_set_bytes: int | None = None
    resident_bytes: int | None = None
    swapped_bytes: int | None = None
    last_round: list = attrs.field(factory=list)   # TargetResult of the last round
    extra: dict = attrs.field(factory=dict)        # an engine's own figures, shown as extra.KEY
    calls: "CallCounters" = attrs.field(factory=lambda: CallCounters())
    history: History = attrs.field(factory=History)

    def as_dict(self) -> dict:
        """Plain data for show and JSON; the call counters as a dict, no history or scan summaries."""
        out = attrs.asdict(self, filter=lambda a, v: a.name not in _NOT_SHOWN)
        out["calls"] = self.calls.as_dict()
        return out


_NOT_SHOWN = ("calls", "history", "scan")


def merge_round(stats: TaskStats, result: "RoundResult | None", seconds: float,
                error: str | None = None) -> TaskStats:
    """Fold one round into the task's totals (None: the engine kept its own figures) and its history."""
    stats.rounds += 1
    stats.last_round_seconds = round(seconds, 3)
    stats.round_seconds = round(stats.round_seconds + seconds, 6)
    stats.history.record(stats.rounds, result, seconds, error)
    if result is None:
        stats.last_error = error
        return stats
    stats.skipped = result.skipped
    if result.skipped is None:
        targets = result.targets
        stats.targets = len(targets)
        stats.pages_scanned += sum(t.scanned for t in targets)
        stats.cold_pages += sum(t.cold for t in targets)
        stats.pages_chosen += sum(t.chosen for t in targets)
        stats.pages_swapped += sum(t.swapped for t in targets)
        stats.refaults += sum(t.refaulted for t in targets)
        sources = sorted({t.source for t in targets if t.source})
        if sources:
            stats.source = ",".join(sources)
        stats.last_round = list(targets)
        _keep_measured(stats, "working_set_bytes", [t.scan.working_set_bytes for t in targets if t.scan is not None])
        _keep_measured(stats, "resident_bytes", [t.resident_bytes for t in targets if t.resident_bytes is not None])
        _keep_measured(stats, "swapped_bytes", [t.swapped_bytes for t in targets if t.swapped_bytes is not None])
    stats.last_error = error or result.error_text()
    return stats


def _keep_measured(stats: TaskStats, name: str, values: list) -> None:
    """A last-round figure: the sum over the targets that measured it, None when none did."""
    setattr(stats, name, int(sum(values)) if values else None)


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
