"""The tables of docs/performance.md's Redis section, from bench_apps.py's JSON lines.

    python benchmarks/app_table.py RESULTS.jsonl [...]

One block per kernel: a row per contender (in the order they ran), its figures as columns,
then the goal's two readings: etmem's best row against the best peer's (>= 1.2x the memory
at no worse GET/s and p99), and the most memory each side gave back inside the service's
targets (GET >= 0.95x and p99 <= 1.2x the reference).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

GET_TARGET = 0.95
P99_TARGET = 1.2
GOAL = 1.2
NOTHING_MIB = 1.0   # given back less than this is nothing (VmRSS moves by that much on its own)


@dataclass
class Row:
    contender: str
    figures: dict = field(default_factory=dict)
    windows: list = field(default_factory=list)
    skipped: str | None = None
    failed: str | None = None
    etmem: bool = False

    def get(self, metric: str):
        return self.figures.get(metric)

    @property
    def given(self) -> float | None:
        return self.get("rss_given_back_mib")

    def within_targets(self) -> bool:
        get, p99 = self.get("get_rps_vs_reference"), self.get("get_p99_vs_reference")
        return get is not None and p99 is not None and get >= GET_TARGET and p99 <= P99_TARGET


def read_rows(lines: list[dict]) -> dict[str, list[Row]]:
    """kernel label -> its rows, in the order the contenders ran."""
    kernels: dict[str, dict[str, Row]] = {}
    for obj in lines:
        if obj.get("bench") != "apps" or "contender" not in obj:
            continue
        rows = kernels.setdefault(obj["kernel"], {})
        row = rows.setdefault(obj["contender"], Row(obj["contender"]))
        if "metric" in obj:
            row.figures[obj["metric"]] = obj["value"]
            # etmem's own rows are the ones whose RSS figure carries the service's target
            row.etmem = row.etmem or (obj["metric"] == "rss_reduced_share" and obj.get("target") is not None)
        elif "window" in obj:
            row.windows.append(obj)
        elif "skipped" in obj:
            row.skipped = obj["skipped"]
        elif "failed" in obj:
            row.failed = obj["failed"]
    return {kernel: list(rows.values()) for kernel, rows in kernels.items()}


def _num(value, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}".replace(",", " ")


def row_line(row: Row) -> str:
    if row.skipped or row.failed:
        why = f"skipped: {row.skipped}" if row.skipped else f"failed: {row.failed}"
        return f"| {row.contender} | {why} |" + " |" * 7
    if not row.figures:
        return f"| {row.contender} | no figures: the run ended after {len(row.windows)} of its windows |" + " |" * 7
    steady = row.get("seconds_to_steady_state")
    last = row.windows[-1] if row.windows else {}
    cut = row.get("windows_cut_short") or 0
    ran = f"{_num(last.get('t_s'), 0)} s ({len(row.windows)}" + (f", {cut} cut short)" if cut else ")")
    given = row.given
    share = row.get("rss_given_back_percent_of_data")
    return " | ".join([
        f"| {row.contender}",
        _num(row.get("rss_mib"), 1, " MiB"),
        "-" if given is None else f"{_num(given, 1)} MiB ({_num(share, 1)}%)",
        _num(row.get("get_rps_vs_reference")) if given is not None else f"({_num(row.get('get_rps'), 0)} GET/s)",
        _num(row.get("get_p99_vs_reference"), 2) if given is not None else f"(p99 {_num(row.get('get_p99_ms'), 2)} ms)",
        _num(row.get("swap_ins"), 0),
        _num(row.get("manager_cpu_seconds"), 1, " s"),
        "not reached" if steady is None else f"{_num(steady, 0)} s",
        ran + " |",
    ])


def goal_lines(rows: list[Row]) -> list[str]:
    """The goal's two readings for one kernel's rows."""
    measured = [r for r in rows if r.given is not None and r.get("get_rps_vs_reference") is not None]
    ours = [r for r in measured if r.etmem]
    peers = [r for r in measured if not r.etmem]
    if not ours or not peers:
        return ["- No goal reading: it needs an etmem row and a peer's row, both with figures against the reference."]
    best_peer = max(peers, key=lambda r: r.given)
    peer_get, peer_p99 = best_peer.get("get_rps_vs_reference"), best_peer.get("get_p99_vs_reference")
    no_worse = [r for r in ours if r.get("get_rps_vs_reference") >= peer_get
                and (peer_p99 is None or (r.get("get_p99_vs_reference") or float("inf")) <= peer_p99)]
    lines = [f"- Best peer by memory: {best_peer.contender}, {_num(best_peer.given, 1)} MiB at "
             f"{_num(peer_get)}x GET and {_num(peer_p99, 2)}x p99."]
    if no_worse:
        best = max(no_worse, key=lambda r: r.given)
        if best_peer.given < NOTHING_MIB:   # a ratio to next to nothing says nothing
            verdict = "met" if best.given >= NOTHING_MIB else "not met"
            lines.append(f"- etmem's most at no worse GET and p99: {best.contender}, {_num(best.given, 1)} MiB, "
                         f"where the best peer gave back less than {NOTHING_MIB} MiB: goal of {GOAL}x {verdict}.")
        else:
            ratio = best.given / best_peer.given
            verdict = "met" if ratio >= GOAL else "not met"
            lines.append(f"- etmem's most at no worse GET and p99: {best.contender}, {_num(best.given, 1)} MiB, "
                         f"{_num(ratio, 2)}x the peer's: goal of {GOAL}x {verdict}.")
    else:
        lines.append(f"- No etmem row kept GET and p99 at least as good as {best_peer.contender}'s: goal not met.")
    inside = [r for r in measured if r.within_targets()]
    ours_in = max((r for r in inside if r.etmem), key=lambda r: r.given, default=None)
    peers_in = max((r for r in inside if not r.etmem), key=lambda r: r.given, default=None)

    def say(r: Row | None) -> str:
        if r is None:
            return "none"
        return (f"{r.contender}, {_num(r.given, 1)} MiB at {_num(r.get('get_rps_vs_reference'))}x GET "
                f"and {_num(r.get('get_p99_vs_reference'), 2)}x p99")
    lines.append(f"- Most given back inside the targets (GET >= {GET_TARGET}x, p99 <= {P99_TARGET}x): "
                 f"etmem {say(ours_in)}; peers {say(peers_in)}.")
    return lines


HEADER = ("| contender | VmRSS at end | given back (of data set) | GET vs reference | p99 vs reference | swap-ins "
          "| manager CPU | steady state after | ran for (windows) |\n|" + "---|" * 9)


def tables(lines: list[dict]) -> str:
    blocks = []
    for kernel, rows in read_rows(lines).items():
        blocks.append("\n".join([f"**{kernel}**", "", HEADER, *map(row_line, rows), "", *goal_lines(rows)]))
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    lines = []
    for path in argv:
        try:
            with open(path) as f:
                for number, text in enumerate(f, 1):
                    if text.strip():
                        try:
                            lines.append(json.loads(text))
                        except json.JSONDecodeError as exc:
                            print(f"{path}:{number}: not a JSON line ({exc.msg})", file=sys.stderr)
                            return 2
        except OSError as exc:
            print(f"{path}: {exc.strerror}", file=sys.stderr)
            return 2
    sys.stdout.write(tables(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
