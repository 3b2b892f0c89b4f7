"""The Redis benchmark's contenders (benchmarks/app_contenders.py): the configs and parameters
they write, the CPU accounting they read, and that on a build host, whose DAMON and cgroups
are the machine's, each one that needs a guest says why it cannot run and touches nothing."""
from __future__ import annotations

import builtins
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from etmem import kernel, loader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import app_contenders as ac  # noqa: E402


# --- CPU seconds from /proc --------------------------------------------------------------------

def test_stat_cpu_seconds_reads_utime_and_stime_after_a_comm_with_spaces_and_parentheses():
    fields = ["S", "1", "2", "3", "0", "-1", "4194560", "10", "0", "7", "0", "250", "50", "9", "9"]
    line = "4242 (redis) (x y) " + " ".join(fields) + " 20 0 1\n"
    assert ac.stat_cpu_seconds(line, clk_tck=100) == 3.0


def test_read_cpu_seconds_follows_a_busy_process_and_is_none_once_it_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.5\n"
                              "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        seconds = 0.0
        while seconds < 0.4 and time.monotonic() < deadline:
            seconds = ac.read_cpu_seconds(child.pid)
            time.sleep(0.1)
        assert 0.4 <= seconds < 5
    finally:
        child.kill()
        child.wait()
    assert ac.read_cpu_seconds(child.pid) is None


def test_kdamond_pids_are_the_threads_named_kdamond(tmp_path):
    for pid, comm in ((7, "kdamond.0\n"), (8, "python3\n"), (9, "kdamond.12\n")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(comm)
    (tmp_path / "self").mkdir()
    (tmp_path / "10").mkdir()   # gone between the listing and the read
    assert sorted(ac.kdamond_pids(str(tmp_path))) == [7, 9]


def test_kdamond_meter_counts_a_thread_from_its_start_and_keeps_the_time_of_one_that_ended(monkeypatch):
    seen = {"pids": [5], "cpu": {5: 10.0}}
    monkeypatch.setattr(ac, "kdamond_pids", lambda: list(seen["pids"]))
    monkeypatch.setattr(ac, "read_cpu_seconds", lambda pid: seen["cpu"].get(pid))
    meter = ac.KdamondMeter(period=3600)   # sampled by hand here
    meter.start()
    seen["cpu"][5] = 12.5                  # ran before the meter: only what follows counts
    seen["pids"].append(6)
    seen["cpu"][6] = 1.0                   # a scan's kdamond, started after
    meter.sample()
    seen["pids"], seen["cpu"] = [5], {5: 13.0}   # the scan's kdamond ended
    meter.stop()
    assert meter.seconds() == pytest.approx(3.0 + 1.0)


# --- what the etmem contenders load into etmemd -----------------------------------------------

def test_slide_config_is_a_valid_slide_project_on_the_pid_with_the_given_source():
    cfg = loader.load_text(ac.slide_config(4242, "page_idle", loop=3, sleep=2, interval=7, T=2), "slide.conf")
    project, = cfg.projects
    task, = cfg.tasks
    assert (project.scanner, project.loop, project.sleep, project.interval) == ("page_idle", 3, 2, 7)
    assert (task.common.type, task.common.value, task.keys.T) == ("pid", "4242", 2)


def test_slide_contenders_take_the_benchmark_settings_and_name_their_source():
    options = SimpleNamespace(loop=4, sleep=1, interval=9, T=1)
    text = ac.SlideDamon(options).config_text(SimpleNamespace(pid=77))
    assert "scanner=damon\n" in text and "loop=4\n" in text and "interval=9\n" in text and "value=77\n" in text
    assert "scanner=page_idle\n" in ac.SlidePageIdle().config_text(SimpleNamespace(pid=77))


def test_the_host_slide_contenders_carry_the_refault_budget_and_one_thread():
    options = SimpleNamespace(loop=2, sleep=1, interval=5, T=1, refault_budget=7.5)
    cfg = loader.load_text(ac.SlideRefault(options).config_text(SimpleNamespace(pid=99)), "slide.conf")
    project, = cfg.projects
    task, = cfg.tasks
    assert (project.name, project.scanner, task.common.value) == ("bench", "refault", "99")
    assert project.refault_budget == 7.5 and task.common.max_threads == 1
    smaps = ac.SlideSmaps(options).config_text(SimpleNamespace(pid=99))
    assert "scanner=smaps\n" in smaps and "refault_budget" not in smaps and "max_threads=1\n" in smaps


def test_psi_config_names_the_cgroup_relative_to_the_mount(monkeypatch):
    monkeypatch.setattr(kernel, "cgroup_mounts", lambda: {"cgroup2": "/sys/fs/cgroup"})
    server = SimpleNamespace(pid=1, cgroup="/sys/fs/cgroup/etmem-bench-1-psi")
    cfg = loader.load_text(ac.Psi().config_text(server), "psi.conf")
    assert cfg.projects[0].scan_type == "psi"
    assert cfg.tasks[0].keys.cg_dir == "etmem-bench-1-psi"
    with pytest.raises(RuntimeError, match="not under the cgroup2 mount"):
        ac.cgroup_dir("/tmp/elsewhere")
    with pytest.raises(RuntimeError, match="needs the server in a cgroup"):
        ac.Psi().config_text(SimpleNamespace(pid=1, cgroup=None))


def test_damon_config_pages_out_regions_unaccessed_for_the_cold_age():
    cfg = loader.load_text(ac.damon_config(4242, cold_age_s=10), "damon.conf")
    keys = cfg.engines[0].keys
    assert cfg.projects[0].aggr_interval == 100_000
    assert (keys.action, keys.min_acc, keys.max_acc) == ("pageout", 0, 0)
    assert keys.min_age * cfg.projects[0].aggr_interval == 10_000_000   # 10 s in aggregation intervals
    assert cfg.tasks[0].common.value == "4242"


# --- the peers ----------------------------------------------------------------------------------

def test_damo_start_args_are_a_pageout_scheme_for_the_pid():
    args = ac.damo_start_args(4242, cold_age_s=10)
    text = " ".join(args)
    assert args[0] == "start"
    assert "--ops vaddr --target_pid 4242" in text
    assert "--damos_action pageout" in text and "--damos_access_rate 0% 0%" in text
    assert "--damos_age 10s max" in text


def test_tracefs_problem_says_whether_to_mount_it_or_that_the_kernel_lacks_it(tmp_path):
    mounts, filesystems = tmp_path / "mounts", tmp_path / "filesystems"
    mounts.write_text("sysfs /sys sysfs rw 0 0\n")
    filesystems.write_text("nodev\tsysfs\nnodev\ttracefs\n")
    assert "mount -t tracefs" in ac.tracefs_problem(str(mounts), str(filesystems))
    filesystems.write_text("nodev\tsysfs\n")
    assert "CONFIG_TRACING" in ac.tracefs_problem(str(mounts), str(filesystems))
    mounts.write_text("tracefs /sys/kernel/tracing tracefs rw 0 0\n")
    assert ac.tracefs_problem(str(mounts), str(filesystems)) is None


def test_damon_reclaim_params_reclaim_what_is_unaccessed_for_the_cold_age_whatever_is_free():
    params = ac.damon_reclaim_params(cold_age_s=10)
    assert params["min_age"] == "10000000"   # microseconds
    high, mid, low = (int(params[f"wmarks_{n}"]) for n in ("high", "mid", "low"))
    assert 1000 >= high >= mid > low >= 0 and mid >= 999   # active unless memory is nearly all free


def fake_params(tmp_path) -> Path:
    params = tmp_path / "parameters"
    params.mkdir()
    before = {"min_age": "120000000", "quota_ms": "10", "quota_sz": "134217728", "quota_reset_interval_ms": "1000",
              "wmarks_interval": "5000000", "wmarks_high": "500", "wmarks_mid": "400", "wmarks_low": "200",
              "enabled": "N"}
    for name, value in before.items():
        (params / name).write_text(value + "\n")
    return params


def test_damon_reclaim_sets_its_parameters_enables_it_and_stop_restores_them_once(tmp_path, monkeypatch):
    params = fake_params(tmp_path)
    before = {p.name: p.read_text() for p in params.iterdir()}
    monkeypatch.setattr(ac, "kdamond_pids", lambda: [])
    contender = ac.DamonReclaim()
    contender.params_dir = params
    contender.start(SimpleNamespace(pid=1, cgroup=None, data_bytes=0))
    assert (params / "enabled").read_text() == "Y\n"
    assert (params / "min_age").read_text() == "10000000\n"
    assert (params / "wmarks_mid").read_text() == "999\n"
    assert "enabled=Y" in contender.config()
    contender.stop()
    assert {p.name: p.read_text() for p in params.iterdir()} == before
    (params / "min_age").write_text("5\n")    # someone else's setting after our stop
    contender.stop()
    assert (params / "min_age").read_text() == "5\n"


def test_damon_reclaim_is_unavailable_while_someone_else_has_it_enabled(tmp_path):
    params = fake_params(tmp_path)
    (params / "enabled").write_text("Y\n")
    contender = ac.DamonReclaim()
    contender.params_dir = params
    assert "enabled already" in contender.unavailable(None)


def test_vm_rss_bytes_reads_this_process_status():
    assert 1 * ac.MiB < ac.vm_rss_bytes(os.getpid()) < 64 * 1024 * ac.MiB


def test_memory_high_is_the_hot_set_plus_a_margin_in_whole_pages():
    current = 300 * ac.MiB
    high = ac.memory_high_bytes(current, 0.1)
    assert high % 4096 == 0
    assert current * 0.1 < high < current / 2


def test_memory_high_writes_the_cgroup_file_from_the_server_rss_and_stop_restores_it(tmp_path, monkeypatch):
    (tmp_path / "memory.high").write_text("max\n")
    monkeypatch.setattr(ac, "vm_rss_bytes", lambda pid: 300 * ac.MiB if pid == 4242 else None)
    contender = ac.MemoryHigh(SimpleNamespace(hot_percent=10.0))
    contender.start(SimpleNamespace(pid=4242, cgroup=str(tmp_path), data_bytes=250 * ac.MiB))
    assert int((tmp_path / "memory.high").read_text()) == ac.memory_high_bytes(300 * ac.MiB, 0.1)
    contender.stop()
    contender.stop()
    assert (tmp_path / "memory.high").read_text() == "max\n"
    with pytest.raises(RuntimeError, match="cgroup of its own"):
        ac.MemoryHigh().start(SimpleNamespace(pid=1, cgroup=None, data_bytes=0))


# --- on a build host: every guest-only contender declines, read-only ---------------------------

BUILD_HOST = "memory" in kernel.cgroup_mounts() and not kernel.has_cgroup2_memory()


@pytest.mark.skipif(not BUILD_HOST, reason="needs a machine whose memory cgroups are v1, the machine's own "
                    "(the build hosts); elsewhere these contenders may well run")
@pytest.mark.parametrize("cls", [c for c in ac.CONTENDERS if c not in (ac.SlideRefault, ac.SlideSmaps)], ids=lambda cls: cls.name)
def test_on_a_build_host_each_guest_only_contender_gives_a_one_line_reason_and_writes_nothing(cls, monkeypatch):
    real_open, real_os_open = builtins.open, os.open
    writes = []

    def checked_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            writes.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    def checked_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(str(path))
        return real_os_open(path, flags, *args, **kwargs)

    def no_process(*args, **kwargs):
        raise AssertionError(f"unavailable() started a process: {args}")

    monkeypatch.setattr(builtins, "open", checked_open)
    monkeypatch.setattr(os, "open", checked_os_open)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    reason = cls().unavailable(None)
    assert writes == []
    assert isinstance(reason, str) and reason and "\n" not in reason, reason


# --- the guest run (benchmarks/app_guest.py): what the guest is told to do ---------------------

def test_the_guest_script_sets_up_the_guest_and_runs_bench_apps_into_the_shared_folder(monkeypatch, tmp_path):
    import app_guest

    monkeypatch.setenv("PYTHONPATH", "/work/x/src")
    config = tmp_path / "config-6.12.117+deb12-amd64"
    script = app_guest.guest_script("/tmp/rw", "/tmp/rw/results.jsonl", ["--keys", "150000"], config)
    lines = script.splitlines()
    assert "export PYTHONPATH=/work/x/src" in lines      # the guest imports the host's etmem
    assert "modprobe -q zram 2>/dev/null" in lines
    assert f"cp {config} /boot/" in lines                # DAMON's operations, read from the kernel config
    # the benchmark's zram device is the only swap on both kernels
    assert "[ -w /sys/module/zswap/parameters/enabled ] && echo N > /sys/module/zswap/parameters/enabled" in lines
    bench = next(line for line in lines if "bench_apps.py" in line)
    assert bench.split()[0] == sys.executable
    assert "--in-guest --out /tmp/rw/results.jsonl --keys 150000" in bench
    assert lines[-3:] == ["rc=$?", "dmesg > /tmp/rw/dmesg.txt 2>&1", "exit $rc"]
    assert "cp " not in app_guest.guest_script("/tmp/rw", "/tmp/rw/r.jsonl", [], None)


def test_guest_kernel_refuses_a_kernel_it_does_not_know():
    import app_guest

    with pytest.raises(ValueError, match="test or debian"):
        app_guest.guest_kernel("fedora")


def test_bench_apps_guest_option_hands_the_run_to_app_guest_without_the_host_only_options(monkeypatch):
    import app_guest
    import bench_apps

    seen = []
    monkeypatch.setattr(app_guest, "main", lambda argv: seen.append(argv) or 0)
    argv = ["--guest", "debian", "--keys", "150000", "--out=/tmp/host.jsonl", "--guest-timeout", "900", "--window", "15"]
    assert bench_apps.main(argv) == 0
    assert seen == [["--kernel", "debian", "--timeout", "900.0", "--out", "/tmp/host.jsonl",
                     "--", "--keys", "150000", "--window", "15"]]


def test_a_window_on_a_stalled_server_is_cut_short_and_counted_by_the_server(tmp_path):
    import shutil
    import signal
    import threading

    import bench_apps
    if not all(shutil.which(t) for t in ("redis-server", "redis-benchmark", "redis-cli")):
        pytest.skip("redis-server and redis-tools not installed (apt-get install redis-server redis-tools)")
    server = bench_apps.RedisServer(tmp_path, "stall", 0).start()
    try:
        server.cli("SET", "key:000000000000", "x")
        whole = bench_apps.run_load(server, 1, 2000, 5)
        assert not whole.get("cut_short") and whole["p99_latency_ms"] is not None and whole["rps"] > 0
        # a server stopped for 3 s cannot finish 2000 GETs inside a 1 s timeout
        threading.Timer(0.3, os.kill, (server.pid, signal.SIGSTOP)).start()
        threading.Timer(3.0, os.kill, (server.pid, signal.SIGCONT)).start()
        cut = bench_apps.run_load(server, 1, 10_000_000, 5, timeout=1.0)
        assert cut["cut_short"] and cut["p99_latency_ms"] is None
        assert cut["seconds"] >= 1.0 and cut["rps"] >= 0
        assert cut["rps"] * cut["seconds"] < 10_000_000
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.stop()


def test_the_report_leaves_cut_short_windows_out_of_the_p99_figures():
    import bench_apps

    lines = []
    out = SimpleNamespace(figure=lambda name, metric, value, unit, target=None: lines.append((metric, value)))
    base = {"windows": [{"rss": 100 << 20, "rps": 1000.0, "p99_latency_ms": 2.0, "load": 1.0, "faults": 0,
                         "pswpin": 0, "t": 10.0}] * 3, "cpu": 0.0, "hit_ratio": 1.0, "zram": {"orig_data_size": 0}}
    windows = [{"rss": 60 << 20, "rps": r, "p99_latency_ms": p, "ref_rps": 1000.0, "ref_p99": 2.0, "load": 1.0,
                "faults": 5, "pswpin": 5, "t": 10.0 * (i + 1), "cut_short": p is None}
               for i, (r, p) in enumerate([(900.0, 3.0), (10.0, None), (950.0, 2.0), (960.0, 2.2)])]
    seen = {"windows": windows, "cpu": 1.0, "hit_ratio": 1.0, "zram": {"orig_data_size": 0}}
    bench_apps.report(out, "memory.high", False, seen, base, 100 << 20)
    figures = dict(lines)
    assert figures["windows_cut_short"] == 1
    assert figures["get_p99_vs_reference_all_windows"] == 1.1       # median of 1.5, 1.0, 1.1
    assert figures["get_rps_vs_reference_all_windows"] == round((0.9 + 0.01 + 0.95 + 0.96) / 4, 3)
    assert figures["get_p99_ms"] == 2.2                             # steady from the first: 3.0, 2.0, 2.2


def test_the_cold_age_option_reaches_etmems_damon_engine_and_damo():
    server = SimpleNamespace(pid=4242)
    assert "min_age=300\n" in ac.DamonEngine(SimpleNamespace(cold_age=30)).config_text(server)
    assert "min_age=100\n" in ac.DamonEngine(SimpleNamespace()).config_text(server)    # the 10 s default
    assert ac.damo_start_args(4242, 30) != ac.damo_start_args(4242, 10)
