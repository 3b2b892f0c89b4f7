"""Smoke test of benchmarks/bench_apps.py: its smallest configuration through the real script, so it cannot rot.

Real redis-server, a real etmemd, a real zram device: it checks the JSON lines and that
nothing the benchmark started is left behind, after a full run and after a Ctrl-C.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_apps.py"
SMALL = ["--keys", "20000", "--window", "2", "--windows", "3", "--base-windows", "2", "--interval", "1",
         "--contenders", "unmanaged,slide-refault"]
EVERY = {"rss_mib", "get_rps", "get_p99_ms", "seconds_to_steady_state", "swap_ins", "swap_ins_system_pswpin",
         "manager_cpu_seconds", "manager_cpu_seconds_per_gib", "get_hit_ratio"}
AGAINST_UNMANAGED = {"rss_given_back_mib", "rss_given_back_percent_of_data", "rss_reduced_share", "get_rps_ratio",
                     "get_p99_ratio", "get_rps_ratio_all_windows", "get_p99_ratio_all_windows",
                     "get_rps_vs_reference", "get_p99_vs_reference", "get_rps_vs_reference_all_windows",
                     "get_p99_vs_reference_all_windows"}

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("need_root")]


@pytest.fixture(autouse=True)
def redis_installed():
    missing = [t for t in ("redis-server", "redis-benchmark", "redis-cli") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install redis-server redis-tools)")


def parse(stdout: str) -> list[dict]:
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines and all(obj["bench"] == "apps" and obj["kernel"].startswith("host-") for obj in lines), stdout
    return lines


def processes_naming(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry}: {cmdline}")
    return found


def assert_nothing_left(run: dict, bench_pid: int) -> None:
    assert not os.path.exists(run["tmpdir"]), f"{run['tmpdir']} was left behind"
    assert processes_naming(run["tmpdir"]) == [], "a redis-server of the benchmark (or its reference) is still running"
    assert processes_naming(f"etmem-bench-apps-{bench_pid}-") == [], "an etmemd of the benchmark is still running"
    swaps = Path("/proc/swaps").read_text().splitlines()[1:]
    ours = [line for line in swaps if line.split()[0] == run["zram"] and line.split()[-1] == str(run["zram_priority"])]
    assert ours == [], f"the benchmark's zram device is still swap: {ours}"


def test_smallest_run_names_every_figure_and_leaves_nothing():
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *SMALL], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    lines = parse(stdout)
    run = next(obj["run"] for obj in lines if "run" in obj)
    assert run["keys"] == 20000 and run["hot_keys"] == 2000 and run["windows"] == 3 and run["base_windows"] == 2
    figures: dict[str, dict[str, dict]] = {}
    for obj in lines:
        if "metric" in obj:
            figures.setdefault(obj["contender"], {})[obj["metric"]] = obj
    assert EVERY <= set(figures["unmanaged"]) and not AGAINST_UNMANAGED & set(figures["unmanaged"])
    assert EVERY | AGAINST_UNMANAGED <= set(figures["slide-refault"])
    for contender in ("unmanaged", "slide-refault"):
        # the load reads exactly the keys written: redis-benchmark's key:%012d names
        assert figures[contender]["get_hit_ratio"]["value"] == 1.0
        assert figures[contender]["rss_mib"]["value"] > 20000 * 1000 / (1 << 20)
    assert figures["unmanaged"]["manager_cpu_seconds"]["value"] == 0.0
    assert figures["slide-refault"]["manager_cpu_seconds"]["value"] > 0.0
    assert figures["slide-refault"]["get_rps_vs_reference"]["target"] == ">= 0.95"
    assert figures["slide-refault"]["get_rps_ratio"]["target"] is None    # the reference ratios carry it
    windows = [obj for obj in lines if "window" in obj]
    assert [(obj["contender"], obj["window"]) for obj in windows] == [("unmanaged", 1), ("unmanaged", 2)] + [
        ("slide-refault", k) for k in (1, 2, 3)]
    assert all(obj["reference_rps"] > 0 for obj in windows if obj["contender"] == "slide-refault")
    assert figures["slide-refault"]["swap_ins"]["value"] > 0     # its samples went out, and the hot ones came back
    config = next(obj["config"] for obj in lines if obj.get("contender") == "slide-refault" and "config" in obj)
    assert "scanner=refault" in config and "refault_budget=5" in config
    assert stderr.count("slide-refault window ") == 3
    assert_nothing_left(run, proc.pid)


def test_ctrl_c_mid_run_leaves_nothing():
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *SMALL], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run = None
    try:
        for line in proc.stdout:             # the run line comes once the data set is loaded
            if '"run"' in line:
                run = json.loads(line)["run"]
            if '"slide-refault", "server_pid"' in line:
                break
        assert run is not None
        time.sleep(2)                        # into slide-refault's windows, etmemd running
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert_nothing_left(run, proc.pid)
