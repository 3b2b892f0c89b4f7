"""benchmarks/app_table.py: the Redis tables and the goal's two readings, from bench_apps' JSON lines."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import app_table  # noqa: E402

KERNEL = "guest-6.12.117+deb12-amd64"


def figures(contender: str, etmem: bool, given: float | None, get: float | None, p99: float | None, **more) -> list[dict]:
    values = {"rss_mib": 180.0 - (given or 0), "get_rps": 3000.0, "get_p99_ms": 9.0, "swap_ins": 10,
              "manager_cpu_seconds": 2.5, "seconds_to_steady_state": None, "windows_cut_short": 0,
              "rss_given_back_mib": given, "rss_given_back_percent_of_data": None if given is None else given / 1.43,
              "rss_reduced_share": None if given is None else given / 180, "get_rps_vs_reference": get,
              "get_p99_vs_reference": p99, **more}
    lines = [{"bench": "apps", "kernel": KERNEL, "contender": contender, "window": k, "t_s": 30.0 * k}
             for k in (1, 2)]
    for metric, value in values.items():
        if metric.startswith(("rss_given", "rss_reduced", "get_rps_vs", "get_p99_vs")) and given is None:
            continue
        target = ">= 0.5" if etmem and metric == "rss_reduced_share" else None
        lines.append({"bench": "apps", "kernel": KERNEL, "contender": contender, "metric": metric, "value": value,
                      "unit": "", "target": target})
    return lines


def run(*rows: list[dict]) -> list[dict]:
    return [line for row in rows for line in row]


def test_rows_keep_the_order_the_contenders_ran_and_say_why_one_was_skipped():
    lines = run(figures("unmanaged", False, None, None, None), figures("psi", True, 100.0, 1.0, 1.0),
                [{"bench": "apps", "kernel": KERNEL, "contender": "slide-page_idle", "skipped": "no idle page tracking"}],
                figures("damo", False, 140.0, 0.6, 2.3))
    text = app_table.tables(lines)
    body = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| contender")]
    assert [line.split(" | ")[0][2:] for line in body] == ["unmanaged", "psi", "slide-page_idle", "damo"]
    assert "| slide-page_idle | skipped: no idle page tracking |" in text
    assert "| psi | 80.0 MiB | 100.0 MiB (69.9%) | 1.000 | 1.00 | 10 | 2.5 s | not reached | 60 s (2) |" in text
    assert text.startswith(f"**{KERNEL}**")


def test_the_goal_is_met_only_by_an_etmem_row_with_1_2x_the_best_peers_memory_at_no_worse_get_and_p99():
    peer = figures("memory.high", False, 80.0, 0.90, 1.30)
    met = app_table.goal_lines(app_table.read_rows(run(peer, figures("psi", True, 100.0, 0.96, 1.10)))[KERNEL])
    assert "psi, 100.0 MiB, 1.25x the peer's: goal of 1.2x met." in met[1]
    short = app_table.goal_lines(app_table.read_rows(run(peer, figures("psi", True, 90.0, 0.96, 1.10)))[KERNEL])
    assert "1.12x the peer's: goal of 1.2x not met." in short[1]
    # more memory, but a slower service than the peer's: it does not count
    slower = app_table.goal_lines(app_table.read_rows(run(peer, figures("damon", True, 130.0, 0.70, 1.9)))[KERNEL])
    assert "No etmem row kept GET and p99 at least as good as memory.high's: goal not met." in slower[1]


def test_inside_the_targets_each_side_shows_its_most_memory_given_back():
    lines = run(figures("psi", True, 100.0, 0.96, 1.10), figures("damon", True, 130.0, 0.70, 1.9),
                figures("damo", False, 140.0, 0.6, 2.3), figures("damon_reclaim", False, 0.5, 0.99, 1.0))
    last = app_table.goal_lines(app_table.read_rows(lines)[KERNEL])[-1]
    assert last == ("- Most given back inside the targets (GET >= 0.95x, p99 <= 1.2x): etmem psi, 100.0 MiB at 0.960x "
                    "GET and 1.10x p99; peers damon_reclaim, 0.5 MiB at 0.990x GET and 1.00x p99.")


def test_a_kernel_without_a_peer_gets_no_goal_reading_and_a_bad_line_names_its_file_and_line(tmp_path, capsys):
    lines = app_table.goal_lines(app_table.read_rows(run(figures("slide-refault", True, 500.0, 0.97, 1.02)))[KERNEL])
    assert lines[0].startswith("- No goal reading")
    bad = tmp_path / "r.jsonl"
    bad.write_text(json.dumps({"bench": "apps"}) + "\n{oops\n")
    assert app_table.main([str(bad)]) == 2
    assert f"{bad}:2: not a JSON line" in capsys.readouterr().err
    assert app_table.main([str(tmp_path / "missing.jsonl")]) == 2


def test_against_a_peer_that_gave_back_nothing_the_goal_is_met_by_any_memory_without_a_ratio():
    lines = run(figures("damon_reclaim", False, 0.1, 1.03, 0.94), figures("slide-page_idle", True, 100.0, 1.04, 0.91))
    goal = app_table.goal_lines(app_table.read_rows(lines)[KERNEL])[1]
    assert goal == ("- etmem's most at no worse GET and p99: slide-page_idle, 100.0 MiB, where the best peer gave back "
                    "less than 1.0 MiB: goal of 1.2x met.")
