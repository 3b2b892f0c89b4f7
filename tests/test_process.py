"""Process handles: pidfd-held targets that refuse to act once their process is gone or its pid reused."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from etmem import procfs
from etmem.errors import EtmemError, ProcessGone
from etmem.process import ProcessHandle, resolve_targets


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_handle_of_a_live_process_knows_its_pid_name_and_start_time():
    proc = _sleeper()
    try:
        with ProcessHandle.open(proc.pid) as h:
            assert h.pid == proc.pid
            assert h.comm == "sleep"
            assert h.start_time == procfs.start_time(proc.pid)
            assert h.fd >= 0
            assert h.alive()
            h.check()
        assert h.fd == -1
        with pytest.raises(ProcessGone, match="closed"):
            h.check()
    finally:
        _reap(proc)


def test_opening_a_pid_that_does_not_exist_says_so():
    proc = _sleeper()
    pid = proc.pid
    _reap(proc)
    with pytest.raises(ProcessGone, match=f"process {pid} does not exist"):
        ProcessHandle.open(pid)


def test_handle_is_dead_once_its_process_exits_even_before_it_is_reaped():
    proc = _sleeper()
    h = ProcessHandle.open(proc.pid)
    try:
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while h.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        # Not reaped yet: /proc/PID still exists as a zombie, the pidfd already says it exited.
        assert os.path.exists(f"/proc/{proc.pid}")
        assert not h.alive()
        with pytest.raises(ProcessGone, match="has exited"):
            h.check()
    finally:
        _reap(proc)
        h.close()


_REUSE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from etmem.actions import move_pages, page_nodes, swap_out, set_swapcache_watermarks
    from etmem.errors import ProcessGone
    from etmem.process import ProcessHandle
    from etmem.workload import Workload

    sys.path.insert(0, sys.argv[1])
    from conftest import pagemap_bits

    old = Workload(total_mb=16, hot_mb=4, pause=0.2).start()
    handle = ProcessHandle.open(old.pid)
    pid, start = old.pid, handle.start_time
    old.stop()
    # The next fork in this (private) pid namespace gets the same pid number.
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    new = Workload(total_mb=16, hot_mb=4, pause=0.2).start()
    out = {"old_pid": pid, "new_pid": new.pid, "alive": handle.alive(), "refused": []}
    s, e = new.cold
    addrs = np.arange(s, e, 4096, dtype=np.uint64)
    actions = {"check": lambda: handle.check(),
               "swap_out": lambda: swap_out(handle, addrs, method="process_madvise"),
               "move_pages": lambda: move_pages(handle, addrs, 0),
               "page_nodes": lambda: page_nodes(handle, addrs),
               "watermarks": lambda: set_swapcache_watermarks(handle, 10, 20)}
    for name, act in actions.items():
        try:
            act()
        except ProcessGone as exc:
            out["refused"].append(name)
            out["message"] = str(exc)
    present, swapped = pagemap_bits(new.pid, s, e)
    out["new_swapped"] = int(swapped.sum())
    out["new_present"] = int(present.sum())
    out["new_pages"] = int(present.size)
    fresh = ProcessHandle.open(new.pid)
    out["fresh_alive"] = fresh.alive()
    out["verify"] = new.verify()
    new.stop()
    print(json.dumps(out))
""")


def test_handle_refuses_to_act_when_its_pid_is_reused_by_another_process(need_root, zram_swap):
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is needed to make a private pid namespace")
    tests_dir = os.path.dirname(__file__)
    run = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _REUSE_SCRIPT, tests_dir],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["new_pid"] == out["old_pid"], "the test could not force pid reuse"
    assert out["alive"] is False
    assert out["refused"] == ["check", "swap_out", "move_pages", "page_nodes", "watermarks"]
    assert "has exited" in out["message"]
    # The new owner of the pid was never touched: nothing swapped, all memory present and intact.
    assert out["new_swapped"] == 0
    assert out["new_present"] == out["new_pages"]
    assert out["verify"] is True
    assert out["fresh_alive"] is True


@pytest.fixture
def process_tree(tmp_path):
    """root sh → (sleep, sh → sleep): a tree with a grandchild; all killed afterwards."""
    script = tmp_path / "tree.sh"
    script.write_text("sleep 60 &\nsh -c 'sleep 60 & wait' &\nwait\n")
    root = subprocess.Popen(["sh", str(script)], start_new_session=True)
    deadline = time.monotonic() + 5
    while len(procfs.descendants(root.pid)) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    yield root
    os.killpg(root.pid, signal.SIGKILL)
    root.wait()


def test_resolve_by_pid_takes_the_whole_descendant_tree(process_tree):
    tree = procfs.descendants(process_tree.pid)
    grandchildren = [p for p in tree if procfs.parent(p) != process_tree.pid]
    assert grandchildren, "the fixture should have made a grandchild"
    handles = resolve_targets("pid", str(process_tree.pid))
    try:
        assert [h.pid for h in handles] == sorted([process_tree.pid] + tree)
        assert all(h.alive() for h in handles)
    finally:
        for h in handles:
            h.close()


def test_resolve_by_pid_without_descendants_takes_only_that_process(process_tree):
    handles = resolve_targets("pid", str(process_tree.pid), descendants=False)
    assert [h.pid for h in handles] == [process_tree.pid]
    handles[0].close()


def test_resolve_by_name_matches_comm_exactly_and_takes_every_match(tmp_path):
    name = f"etm{os.getpid() % 100000}x"
    exe = tmp_path / name
    exe.symlink_to(shutil.which("sleep"))
    longer = tmp_path / (name + "y")
    longer.symlink_to(shutil.which("sleep"))
    procs = [subprocess.Popen([str(exe), "60"]) for _ in range(2)] + [subprocess.Popen([str(longer), "60"])]
    try:
        deadline = time.monotonic() + 5
        while len(procfs.pids_by_comm(name)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        handles = resolve_targets("name", name)
        assert sorted(h.pid for h in handles) == sorted(p.pid for p in procs[:2])
        assert all(h.comm == name for h in handles)
        for h in handles:
            h.close()
        assert resolve_targets("name", name[:-1]) == []
    finally:
        for p in procs:
            _reap(p)


def test_resolving_a_missing_pid_or_a_bad_task_type_is_a_clear_error():
    proc = _sleeper()
    pid = proc.pid
    _reap(proc)
    with pytest.raises(ProcessGone, match=str(pid)):
        resolve_targets("pid", str(pid))
    with pytest.raises(EtmemError, match="is not a pid"):
        resolve_targets("pid", "firefox")
    with pytest.raises(EtmemError, match="unknown task type 'cgroup'"):
        resolve_targets("cgroup", "x")
