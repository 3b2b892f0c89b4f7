"""Reports on a task's history (etmem.history): working-set size over time, address x time heat, access ages, and what each round did or would do.

Each function takes a `History` (a task's `stats.history`, or one loaded from a file with
etmem.history.load_file) and returns figures or text; `heatmap_png` draws the heat map
with matplotlib, the optional `plots` extra (`pip install etmem[plots]`). `etmem report`
(cli/report_cmd.py) prints them; docs/observability.md shows each.
"""
from __future__ import annotations

from typing import Sequence

import attrs
import numpy as np

from .errors import EtmemError
from .history import History, RoundRecord
from .pages import PAGE, union
from .units import format_size

PERCENTILES = (0, 25, 50, 75, 90, 95, 99, 100)
COLUMNS = 64
#: Levels of the text heat map: blank where nothing was resident, 0 resident but idle, 1-9 hotter.
HEAT_DIGITS = "0123456789"
#: Ages of the access-age table: pages last accessed at most this long ago (seconds).
AGE_LIMITS = (0, 60, 300, 900, 3600)


class ReportError(EtmemError):
    """A report that cannot be made from the history it was given; says what is missing."""


# -- working-set size ---------------------------------------------------------------------

@attrs.frozen
class WssSeries:
    """Per round that scanned: its number, end time, and the sums over its targets in bytes."""

    rounds: np.ndarray
    times: np.ndarray
    working_set: np.ndarray
    resident: np.ndarray
    swapped: np.ndarray


def wss_series(history: History) -> WssSeries:
    """The working-set size of every round that scanned (bytes accessed at least once in its passes)."""
    rows = []
    for rec in history.rounds():
        scanned = rec.scanned
        if not scanned:
            continue
        rows.append((rec.round, rec.time, sum(t.scan.working_set_bytes for t in scanned),
                     sum(t.resident_bytes if t.resident_bytes is not None else t.scan.resident_bytes for t in scanned),
                     sum(t.swapped_bytes or 0 for t in scanned)))
    if not rows:
        raise ReportError(f"the history holds no round that scanned ({len(history)} rounds kept)")
    cols = list(zip(*rows))
    return WssSeries(np.array(cols[0], np.int64), np.array(cols[1], float), *(np.array(c, np.int64) for c in cols[2:]))


def wss_percentiles(history: History, percentiles: Sequence[float] = PERCENTILES) -> list[tuple[float, int]]:
    """(percentile, working-set bytes) over the rounds, each value one a round really had."""
    wss = wss_series(history).working_set
    return [(p, int(np.percentile(wss, p, method="nearest"))) for p in percentiles]


def wss_text(history: History, title: str = "", percentiles: Sequence[float] = PERCENTILES) -> str:
    """The working-set size per round, then its percentiles over the rounds, as damo's `report wss`."""
    s = wss_series(history)
    lines = [f"# working-set size{' of ' + title if title else ''}: {len(s.rounds)} rounds over "
             f"{s.times[-1] - s.times[0]:.1f} s",
             f"{'round':>7} {'time':>9} {'working set':>13} {'resident':>13} {'swapped':>13}"]
    for r, t, w, res, sw in zip(s.rounds, s.times - s.times[0], s.working_set, s.resident, s.swapped):
        lines.append(f"{r:>7} {t:>8.1f}s {format_size(int(w)):>13} {format_size(int(res)):>13} {format_size(int(sw)):>13}")
    lines += ["", f"{'percentile':>10} {'working set':>13}"]
    lines += [f"{p:>10g} {format_size(v):>13}" for p, v in wss_percentiles(history, percentiles)]
    return "\n".join(lines) + "\n"


# -- heat over address and time ----------------------------------------------------------------

@attrs.frozen
class HeatMap:
    """Access heat of one target: `heat[round, column]` is the mean access count per page of
    the column's address range in that round (NaN where nothing was resident there).

    Columns cut the target's scanned address space into equal parts with the gaps between
    mappings left out: `segments` are the (start, end) address ranges placed side by side,
    `column_bytes` the address range each column covers.
    """

    pid: int | None
    rounds: np.ndarray
    times: np.ndarray
    heat: np.ndarray
    resident: np.ndarray         # bytes resident per round and column
    segments: np.ndarray         # (n, 2) uint64 address ranges, in address order
    column_bytes: float

    def packed(self, addr: int) -> int:
        """Where address addr lies on the column axis, in bytes from its start (addr in a segment)."""
        starts, ends = self.segments[:, 0].astype(np.int64), self.segments[:, 1].astype(np.int64)
        i = int(np.searchsorted(starts, addr, side="right")) - 1
        if i < 0 or addr >= ends[i]:
            raise ReportError(f"address {addr:#x} is outside the scanned address space")
        return int((ends[:i] - starts[:i]).sum()) + addr - int(starts[i])

    def columns_within(self, start: int, end: int) -> np.ndarray:
        """The columns whose whole address range lies inside the mapping [start, end)."""
        lo, hi = self.packed(start), self.packed(end - PAGE) + PAGE
        return np.arange(int(np.ceil(lo / self.column_bytes)), int(hi // self.column_bytes))


def _target_rounds(history: History, pid: int | None) -> tuple[int | None, list[tuple[RoundRecord, object]]]:
    """(pid, [(round, target record)]) of the target to draw: pid, or the one most rounds scanned."""
    by_pid: dict = {}
    for rec in history.rounds():
        for t in rec.scanned:
            by_pid.setdefault(t.pid, []).append((rec, t))
    if not by_pid:
        raise ReportError(f"the history holds no round that scanned ({len(history)} rounds kept)")
    if pid is None:
        pid = max(by_pid, key=lambda p: (len(by_pid[p]), -(p or 0)))   # a tie: the lower pid
    elif pid not in by_pid:
        raise ReportError(f"the history has no scan of process {pid} (it has: "
                          f"{', '.join(str(p) for p in by_pid)})")
    return pid, by_pid[pid]


def heat_map(history: History, columns: int = COLUMNS, pid: int | None = None) -> HeatMap:
    """The HeatMap of one target (pid, or the target most rounds scanned) over the kept rounds."""
    if columns < 1:
        raise ReportError("a heat map needs at least 1 column")
    pid, rows = _target_rounds(history, pid)
    starts = np.concatenate([t.scan.starts for _, t in rows]).astype(np.int64)
    ends = np.concatenate([t.scan.ends for _, t in rows]).astype(np.int64)
    order = np.argsort(starts, kind="stable")
    seg_starts, seg_ends = union(starts[order], ends[order])
    lengths = seg_ends - seg_starts
    offsets = np.cumsum(lengths) - lengths
    total = int(lengths.sum())
    edges = np.linspace(0, total, columns + 1)
    column_pages = np.diff(edges) / PAGE
    heat = np.zeros((len(rows), columns))
    resident = np.zeros((len(rows), columns))
    for i, (_, t) in enumerate(rows):
        s = t.scan
        lo = s.starts.astype(np.int64)
        seg = np.searchsorted(seg_starts, lo, side="right") - 1
        packed_lo = offsets[seg] + lo - seg_starts[seg]
        packed_hi = packed_lo + (s.ends.astype(np.int64) - lo)
        xs = np.column_stack([packed_lo, packed_hi]).ravel().astype(float)
        heat[i] = np.diff(np.interp(edges, xs, _steps(s.accesses)))
        resident[i] = np.diff(np.interp(edges, xs, _steps(s.resident)))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(resident > 0, heat / column_pages, np.nan)
    return HeatMap(pid, np.array([r.round for r, _ in rows]), np.array([r.time for r, _ in rows]), mean,
                   np.rint(resident).astype(np.int64), np.column_stack([seg_starts, seg_ends]).astype(np.uint64),
                   total / columns)


def _steps(values: np.ndarray) -> np.ndarray:
    """The running total at each region's start and end, for np.interp over (start, end) pairs."""
    total = np.cumsum(values, dtype=float)
    return np.column_stack([total - values, total]).ravel()


def heatmap_text(history: History, columns: int = COLUMNS, pid: int | None = None, title: str = "") -> str:
    """The heat map in the terminal: a row per round (time going down), a column per address range.

    Digits 0-9 scale the mean access count per page from idle to the hottest cell; a blank
    means nothing of that range was resident (never touched, or swapped out).
    """
    hm = heat_map(history, columns, pid)
    top = np.nanmax(hm.heat) if np.isfinite(hm.heat).any() else 0.0
    scale = top if top > 0 else 1.0
    lines = [f"# access heat{' of ' + title if title else ''}, process {hm.pid}: {len(hm.rounds)} rounds x "
             f"{columns} columns of {format_size(int(hm.column_bytes))}; 0 idle .. 9 = {top:.3g} accesses per page "
             "a round, blank: not resident"]
    for r, t, row in zip(hm.rounds, hm.times - hm.times[0], hm.heat):
        cells = "".join(" " if np.isnan(v) else HEAT_DIGITS[min(9, int(np.ceil(9 * v / scale)))] for v in row)
        lines.append(f"{r:>6} {t:>7.1f}s |{cells}|")
    lines.append("# columns, low addresses left:")
    lengths = (hm.segments[:, 1] - hm.segments[:, 0]).astype(np.int64)
    offsets = np.cumsum(lengths) - lengths
    for (start, end), off in zip(hm.segments.tolist(), offsets.tolist()):
        first = int(off // hm.column_bytes)
        last = min(columns - 1, int((off + (end - start) - 1) // hm.column_bytes))
        lines.append(f"#   {first:>3}-{last:<3} {start:#x}-{end:#x} ({format_size(end - start)})")
    return "\n".join(lines) + "\n"


@attrs.frozen
class HeatPicture:
    """What heatmap_png drew: the HeatMap and where its image lies in the PNG (pixels from top-left)."""

    heat: HeatMap
    box: tuple          # (left, top, right, bottom)
    size: tuple         # (width, height)


def heatmap_png(history: History, path: str, columns: int = COLUMNS, pid: int | None = None,
                title: str = "") -> HeatPicture:
    """Draw the heat map into a PNG file: time across, address up, brighter is hotter, grey not resident."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError("drawing a PNG needs matplotlib, which is not installed: pip install 'etmem[plots]' "
                          "(or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    hm = heat_map(history, columns, pid)
    cmap = matplotlib.colormaps["inferno"].with_extremes(bad="#9a9a9a")
    times = hm.times - hm.times[0]
    right = times[-1] if len(times) > 1 and times[-1] > 0 else 1.0
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
    try:
        image = ax.imshow(np.ma.masked_invalid(hm.heat.T), origin="lower", aspect="auto", cmap=cmap,
                          interpolation="nearest", extent=(0, right, 0, columns), vmin=0)
        ax.set_xlabel("seconds since the first round kept")
        ax.set_ylabel("address (gaps between mappings left out)")
        lengths = (hm.segments[:, 1] - hm.segments[:, 0]).astype(np.int64)
        offsets = (np.cumsum(lengths) - lengths) / hm.column_bytes
        ticks = [(o, f"{int(s):#x}") for o, s, n in zip(offsets, hm.segments[:, 0], lengths) if n >= hm.column_bytes]
        ax.set_yticks([o for o, _ in ticks], [label for _, label in ticks], fontsize=7)
        ax.set_title(f"access heat{' of ' + title if title else ''}, process {hm.pid}")
        fig.colorbar(image, ax=ax, label="accesses per page a round")
        fig.canvas.draw()
        width, height = fig.canvas.get_width_height()
        x0, y0, x1, y1 = ax.get_window_extent().extents
        fig.savefig(path, format="png")
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return HeatPicture(hm, (int(round(x0)), int(round(height - y1)), int(round(x1)), int(round(height - y0))),
                       (width, height))


# -- access ages -----------------------------------------------------------------------------

def age_table(history: History, columns: int = COLUMNS, pid: int | None = None,
              limits: Sequence[int] = AGE_LIMITS) -> list[tuple[str, int]]:
    """Resident bytes of the last round by how long ago their address range was last accessed.

    An address range's age is the time from the last round that saw it accessed to the last
    round kept (0: accessed in the last round); ranges never seen accessed in the history
    are "idle in every round kept". As memtierd's access-age tables, at column granularity.
    """
    hm = heat_map(history, columns, pid)
    accessed = np.nan_to_num(hm.heat) > 0
    seen = accessed.any(axis=0)
    last = np.where(seen, len(hm.rounds) - 1 - np.argmax(accessed[::-1], axis=0), 0)
    age = hm.times[-1] - hm.times[last]
    resident = hm.resident[-1]
    rows, lower = [], None
    for limit in limits:
        mask = seen & (age <= limit) if lower is None else seen & (age > lower) & (age <= limit)
        rows.append((f"accessed {'in the last round' if limit == 0 else f'up to {_duration(limit)} ago'}",
                     int(resident[mask].sum())))
        lower = limit
    rows.append((f"accessed more than {_duration(lower)} ago", int(resident[seen & (age > lower)].sum())))
    rows.append((f"idle in every round kept ({_duration(hm.times[-1] - hm.times[0])})", int(resident[~seen].sum())))
    return rows


def age_text(history: History, columns: int = COLUMNS, pid: int | None = None, title: str = "") -> str:
    rows = age_table(history, columns, pid)
    total = sum(n for _, n in rows) or 1
    width = max(len(name) for name, _ in rows)
    lines = [f"# resident memory by access age{' of ' + title if title else ''} (last round kept)"]
    lines += [f"{name:<{width}} {format_size(n):>12} {100 * n / total:>5.1f}%" for name, n in rows]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:.0f} s"


# -- what each round did ---------------------------------------------------------------------------

def rounds_text(history: History, title: str = "", last: int | None = None) -> str:
    """Per round and target: scanned, cold, and what was done, or in a dry run would have been."""
    records = history.rounds()
    if last is not None:
        records = records[-last:] if last > 0 else []
    lines = [f"# rounds{' of ' + title if title else ''}: {len(records)} of {len(history)} kept"]
    for rec in records:
        head = f"round {rec.round} ({rec.seconds:.1f} s)"
        if rec.skipped:
            lines.append(f"{head}: skipped: {rec.skipped}")
            continue
        if not rec.targets:
            lines.append(f"{head}: no target{': ' + rec.error if rec.error else ''}")
            continue
        lines.append(f"{head}:")
        for t in rec.targets:
            lines.append(f"  {_target_line(t)}")
    return "\n".join(lines) + "\n"


def _target_line(t) -> str:
    if "cgroup" in t.detail and not t.skipped:
        return _cgroup_line(t)
    if t.source == "damon" and t.pid is not None and not t.skipped:
        return _damon_process_line(t)
    who = f"process {t.pid}" if t.pid is not None else (t.detail.get("cgroup") or "target")
    if t.skipped:
        return f"{who}: skipped: {t.skipped}"
    parts = [f"scanned {format_size(t.scanned * PAGE)}", f"cold {format_size(t.cold * PAGE)}"]
    planned = t.detail.get("planned")
    if t.dry_run:
        if planned:
            parts.append(f"would move {_pages(t.chosen)}" + _moves(planned))
        else:
            parts.append(f"would swap out {_pages(t.chosen)}")
    elif planned:
        parts.append(f"planned to move {_pages(t.chosen)}" + _moves(planned))
    else:
        parts.append(f"swapped out {_pages(t.swapped)} of {_pages(t.chosen)} chosen")
    if t.refaulted:
        parts.append(f"{_pages(t.refaulted)} came back")
    if t.resident_bytes is not None:
        parts.append(f"resident {format_size(t.resident_bytes)}, swapped {format_size(t.swapped_bytes or 0)}")
    line = f"{who}{' (dry run)' if t.dry_run else ''}: " + ", ".join(parts)
    return line + (f"; error: {t.error}" if t.error else "")


def _cgroup_line(t) -> str:
    """A psi cgroup's round: its size, the floor it keeps, what was (or would be) reclaimed."""
    d = t.detail
    parts = [f"current {format_size(d.get('current') or 0)}"]
    if d.get("floor") is not None:
        parts.append(f"floor {format_size(d['floor'])}")
    if t.dry_run:
        parts.append(f"would reclaim {_pages(t.chosen)}")
    else:
        parts.append(f"reclaimed {format_size(d.get('reclaimed') or 0)} of {format_size(d.get('requested') or 0)} asked")
    line = f"cgroup {d['cgroup']}{' (dry run)' if t.dry_run else ''}: " + ", ".join(parts)
    return line + (f"; error: {t.error}" if t.error else "")


def _damon_process_line(t) -> str:
    """A process DAMON monitors: its memory, and in a dry run what the scheme's action would take."""
    d = t.detail
    parts = [f"resident {format_size((d.get('rss_kb') or 0) << 10)}", f"swapped {format_size((d.get('swap_kb') or 0) << 10)}"]
    if t.dry_run:
        parts.append(f"would apply {d.get('action')} to {_pages(t.chosen)}")
    line = f"process {t.pid}{' (dry run)' if t.dry_run else ''}: " + ", ".join(parts)
    return line + (f"; error: {t.error}" if t.error else "")


def _pages(n: int) -> str:
    return f"{n:,} pages ({format_size(n * PAGE)})"


def _moves(planned: dict) -> str:
    where = ", ".join(f"{n:,} to node {d}" for d, n in sorted(planned.get("to_node", {}).items()))
    return f" ({where})" if where else ""
