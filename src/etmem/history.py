"""A task's recent rounds, kept small: what each round saw of each target and what it did or would do.

`summarize_scan(refs)` condenses one scan into a `ScanSummary` (bytes per access count,
and per region of the scanned address space its resident, accessed and access figures);
engines attach it to their `TargetResult.scan`. `stats.merge_round` adds every round to
the task's `History`, a bounded list of `RoundRecord`s, which `etmem engine history`
sends as JSON lines (`dump_jsonl` / `load_jsonl`, the format of docs/observability.md)
and etmem.report turns into working-set and heat reports.
"""
from __future__ import annotations

import collections
import io
import json
import threading
import time
from typing import IO, Iterable

import attrs
import numpy as np

from .errors import EtmemError
from .pages import PAGE

#: Regions a scan's address space is cut into (more where VMAs end inside a region's span).
REGIONS = 64
#: Rounds a task's history keeps; an hour of rounds 5 s apart.
HISTORY_ROUNDS = 720
#: Memory a task's history may take at most: fewer rounds are kept of a task with many targets.
HISTORY_BYTES = 16 << 20
#: What a target record and an array take besides the array data, roughly.
_RECORD_BYTES, _ARRAY_BYTES = 400, 112
#: The `etmem_history` value of the header line this module writes and reads.
FORMAT_VERSION = 1


class HistoryFormatError(EtmemError):
    """A history file that is not in the format of docs/observability.md; says where."""


@attrs.define(eq=False)
class ScanSummary:
    """One scan of one target: bytes per access count, and per address region what it found.

    by_count[c] is the bytes of pages counted c times over the round's passes. Regions
    are contiguous address ranges inside one VMA each, sorted: `starts`/`ends`, and per
    region `resident` (bytes the scan saw resident), `accessed` (bytes counted at least
    once) and `accesses` (sum of count x pages, for heat).
    """

    passes: int
    per_vma: bool
    by_count: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    resident: np.ndarray
    accessed: np.ndarray
    accesses: np.ndarray

    @property
    def working_set_bytes(self) -> int:
        """Bytes of pages accessed at least once during the round's passes."""
        return int(self.by_count[1:].sum())

    @property
    def resident_bytes(self) -> int:
        return int(self.by_count.sum())

    @property
    def nbytes(self) -> int:
        """About the memory the summary takes."""
        arrays = (self.by_count, self.starts, self.ends, self.resident, self.accessed, self.accesses)
        return sum(a.nbytes + _ARRAY_BYTES for a in arrays)

    def as_json(self) -> dict:
        columns = (self.starts, self.ends, self.resident, self.accessed, self.accesses)
        regions = np.stack([np.asarray(c, dtype=np.int64) for c in columns], axis=1)
        return {"passes": self.passes, "per_vma": self.per_vma, "by_count": self.by_count.tolist(),
                "regions": regions.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "ScanSummary":
        regions = np.asarray(data["regions"], dtype=np.int64).reshape(-1, 5)
        return cls(int(data["passes"]), bool(data["per_vma"]), np.asarray(data["by_count"], dtype=np.int64),
                   regions[:, 0].astype(np.uint64), regions[:, 1].astype(np.uint64),
                   regions[:, 2], regions[:, 3], regions[:, 4])


def summarize_scan(refs, regions: int = REGIONS) -> ScanSummary:
    """The ScanSummary of a PageRefs: its VMAs cut into about `regions` equal spans.

    Each VMA gets as many spans of the common length as it needs, so a small VMA is one
    region of its own and a large one several; every page falls in the region holding
    its address.
    """
    vmas = sorted((int(v.start), int(v.end)) for v in refs.vmas)
    count = np.asarray(refs.count, dtype=np.int64)
    size = np.asarray(refs.size, dtype=np.int64)
    by_count = np.bincount(count, weights=size, minlength=1).astype(np.int64) if len(count) else np.zeros(1, np.int64)
    if not vmas:
        empty = np.zeros(0, np.int64)
        return ScanSummary(refs.passes, refs.per_vma, by_count, empty.astype(np.uint64), empty.astype(np.uint64),
                           empty, empty, empty)
    vstart = np.array([a for a, _ in vmas], dtype=np.int64)
    vend = np.array([b for _, b in vmas], dtype=np.int64)
    total = int((vend - vstart).sum())
    span = max(PAGE, -(-total // max(1, regions) // PAGE) * PAGE)
    pieces = -(-(vend - vstart) // span)
    first = np.repeat(np.cumsum(pieces) - pieces, pieces)
    starts = np.repeat(vstart, pieces) + (np.arange(int(pieces.sum())) - first) * span
    ends = np.minimum(starts + span, np.repeat(vend, pieces))
    n = len(starts)
    where = np.clip(np.searchsorted(starts, np.asarray(refs.addr, dtype=np.int64), side="right") - 1, 0, n - 1)
    resident = np.bincount(where, weights=size, minlength=n).astype(np.int64)
    accessed = np.bincount(where, weights=size * (count > 0), minlength=n).astype(np.int64)
    accesses = np.bincount(where, weights=count * (size // PAGE), minlength=n).astype(np.int64)
    return ScanSummary(refs.passes, refs.per_vma, by_count, starts.astype(np.uint64), ends.astype(np.uint64),
                       resident, accessed, accesses)


@attrs.define(eq=False)
class TargetRecord:
    """One target in one round: the TargetResult's figures (pages of 4 KiB) and its scan summary."""

    pid: int | None = None
    source: str | None = None
    scanned: int = 0
    cold: int = 0
    chosen: int = 0        # pages acted on, or in a dry run pages it would act on
    swapped: int = 0
    refaulted: int = 0
    dry_run: bool = False
    resident_bytes: int | None = None
    swapped_bytes: int | None = None
    skipped: str | None = None
    error: str | None = None
    detail: dict = attrs.field(factory=dict)
    scan: ScanSummary | None = None

    @classmethod
    def of(cls, result) -> "TargetRecord":
        """The record of a stats.TargetResult."""
        return cls(result.pid, result.source, result.scanned, result.cold, result.chosen, result.swapped,
                   result.refaulted, result.dry_run, result.resident_bytes, result.swapped_bytes,
                   result.skipped, result.error, dict(result.detail), result.scan)

    def as_json(self) -> dict:
        out = attrs.asdict(self, recurse=False)
        out["scan"] = None if self.scan is None else self.scan.as_json()
        return out

    @classmethod
    def from_json(cls, data: dict) -> "TargetRecord":
        names = {a.name for a in attrs.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if values.get("scan") is not None:
            values["scan"] = ScanSummary.from_json(values["scan"])
        return cls(**values)


@attrs.define(eq=False)
class RoundRecord:
    """One round of a task: when it ended (Unix time), how long it took, and its targets."""

    round: int
    time: float
    seconds: float
    targets: list = attrs.field(factory=list)   # TargetRecord
    skipped: str | None = None
    error: str | None = None

    @property
    def scanned(self) -> list:
        """The targets of this round that have a scan summary."""
        return [t for t in self.targets if t.scan is not None]

    @property
    def nbytes(self) -> int:
        """About the memory the record takes."""
        return _RECORD_BYTES + sum(_RECORD_BYTES + (t.scan.nbytes if t.scan is not None else 0) for t in self.targets)

    def as_json(self) -> dict:
        return {"round": self.round, "time": self.time, "seconds": self.seconds, "skipped": self.skipped,
                "error": self.error, "targets": [t.as_json() for t in self.targets]}

    @classmethod
    def from_json(cls, data: dict) -> "RoundRecord":
        return cls(int(data["round"]), float(data["time"]), float(data["seconds"]),
                   [TargetRecord.from_json(t) for t in data.get("targets") or []],
                   data.get("skipped"), data.get("error"))


class History:
    """The last `maxlen` rounds of one task, oldest first, in at most about `max_bytes` of memory
    (the newest round is always kept); safe to read while rounds add to it."""

    def __init__(self, maxlen: int = HISTORY_ROUNDS, rounds: Iterable[RoundRecord] = (),
                 max_bytes: int | None = HISTORY_BYTES):
        self._rounds: collections.deque = collections.deque(maxlen=maxlen)
        self._bytes = 0
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        for rec in rounds:
            self.add(rec)

    def __len__(self) -> int:
        return len(self._rounds)

    def __repr__(self) -> str:
        return f"<History {len(self)} rounds>"

    @property
    def maxlen(self) -> int:
        return self._rounds.maxlen

    def rounds(self) -> list[RoundRecord]:
        """A copy of the kept rounds, oldest first."""
        with self._lock:
            return list(self._rounds)

    def add(self, record: RoundRecord) -> None:
        with self._lock:
            if len(self._rounds) == self._rounds.maxlen:
                self._bytes -= self._rounds[0].nbytes
            self._rounds.append(record)
            self._bytes += record.nbytes
            while self.max_bytes is not None and self._bytes > self.max_bytes and len(self._rounds) > 1:
                self._bytes -= self._rounds.popleft().nbytes

    def record(self, number: int, result, seconds: float, error: str | None = None) -> RoundRecord:
        """Keep one finished round (a stats.RoundResult, or None when the engine kept its own figures)."""
        if result is None:
            rec = RoundRecord(number, time.time(), round(seconds, 3), error=error)
        else:
            targets = [] if result.skipped else [TargetRecord.of(t) for t in result.targets]
            rec = RoundRecord(number, time.time(), round(seconds, 3), targets, result.skipped,
                              error or result.error_text())
        self.add(rec)
        return rec


@attrs.frozen
class TaskHistory:
    """The history of one named task, as one section of a history file holds it."""

    project: str
    engine: str
    task: str
    history: History

    @property
    def label(self) -> str:
        return f"{self.project}/{self.engine}/{self.task}"


def dump_jsonl(sections: Iterable[TaskHistory], out: IO[str]) -> None:
    """Write histories as JSON lines: per task a header line, then one line per round."""
    for s in sections:
        header = {"etmem_history": FORMAT_VERSION, "project": s.project, "engine": s.engine, "task": s.task,
                  "page_size": PAGE}
        out.write(json.dumps(header) + "\n")
        for rec in s.history.rounds():
            out.write(json.dumps(rec.as_json(), default=str) + "\n")


def dumps_jsonl(sections: Iterable[TaskHistory]) -> str:
    buf = io.StringIO()
    dump_jsonl(sections, buf)
    return buf.getvalue()


def load_jsonl(lines: Iterable[str], name: str = "<history>") -> list[TaskHistory]:
    """Read what dump_jsonl wrote; HistoryFormatError names the file and line of a bad one."""
    sections: list[TaskHistory] = []
    rounds: list[RoundRecord] = []
    current: dict | None = None

    def close():
        if current is not None:
            sections.append(TaskHistory(current["project"], current["engine"], current["task"],
                                        History(max(HISTORY_ROUNDS, len(rounds)), rounds, max_bytes=None)))

    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise HistoryFormatError(f"{name}:{number}: not a JSON line: {exc}") from None
        if not isinstance(data, dict):
            raise HistoryFormatError(f"{name}:{number}: expected a JSON object, got {type(data).__name__}")
        if "etmem_history" in data:
            if data["etmem_history"] != FORMAT_VERSION:
                raise HistoryFormatError(f"{name}:{number}: history format version {data['etmem_history']!r}; "
                                         f"this etmem reads version {FORMAT_VERSION}")
            missing = [k for k in ("project", "engine", "task") if not isinstance(data.get(k), str)]
            if missing:
                raise HistoryFormatError(f"{name}:{number}: the header line has no {', '.join(missing)}")
            if data.get("page_size", PAGE) != PAGE:
                raise HistoryFormatError(f"{name}:{number}: page_size {data['page_size']} is not {PAGE}")
            close()
            current, rounds = data, []
            continue
        if current is None:
            raise HistoryFormatError(f"{name}:{number}: a round before any header line "
                                     f'(the file must start with {{"etmem_history": {FORMAT_VERSION}, ...}})')
        try:
            rounds.append(RoundRecord.from_json(data))
        except (KeyError, TypeError, ValueError) as exc:
            what = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise HistoryFormatError(f"{name}:{number}: not a round record: {what}") from None
    close()
    if not sections:
        raise HistoryFormatError(f"{name}: holds no history (no header line)")
    return sections


def load_file(path: str) -> list[TaskHistory]:
    """The histories of a file dump_jsonl (or `etmem engine history`) wrote."""
    try:
        with open(path, encoding="utf-8") as f:
            return load_jsonl(f, path)
    except OSError as exc:
        raise HistoryFormatError(f"cannot read history file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise HistoryFormatError(f"{path}: not UTF-8 text (byte {exc.start})") from None
