"""Which processes a task may act on: the process a type=pid task was configured for and
never another that got its pid later; never etmemd itself or its ancestors; pid 1's tree
(every process of the machine) only when the task says allow_init=yes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import etmem
from etmem import procfs
from etmem.errors import EtmemError
from etmem.process import resolve_targets
from etmem.strategy import held_targets

# In a private pid namespace, so that the next fork can be given the pid of a process that
# has just exited (ns_last_pid is the namespace's own): a real reuse, not a simulated one.
_REUSE_SCRIPT = textwrap.dedent("""
    import json, sys
    import etmem
    from etmem.workload import Workload

    sys.path.insert(0, sys.argv[1])
    from conftest import pagemap_bits

    old = Workload(total_mb=32, hot_mb=4, pause=0.05).start()
    project = etmem.Project(name="p", loop=2, interval=1, sleep=1, scanner="smaps")
    task = project.add_engine("slide").add_task("t", "pid", old.pid, T=1)
    manager = etmem.Manager()
    manager.add(project)
    task.run_round()   # smaps: the first round's pass sees every page referenced since the start
    first = task.run_round()
    out = {"first_error": first.last_error, "first_swapped": first.pages_swapped}
    pid = old.pid
    old.stop()
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    new = Workload(total_mb=32, hot_mb=4, pause=0.05).start()
    out["reused"] = new.pid == pid
    task.run_round()
    second = task.run_round()
    out["second_error"] = second.last_error
    out["second_swapped"] = second.pages_swapped - out["first_swapped"]   # the same TaskStats, cumulative
    present, swapped = pagemap_bits(new.pid, *new.cold)
    out["new_swapped"] = int(swapped.sum())
    out["verify"] = new.verify()
    new.stop()
    print(json.dumps(out))
""")


def test_a_pid_task_never_acts_on_another_process_that_got_its_pid(need_root, zram_swap):
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is needed to make a private pid namespace")
    run = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _REUSE_SCRIPT,
                          os.path.dirname(__file__)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["reused"], "the test could not give the new process the old one's pid"
    assert out["first_error"] is None and out["first_swapped"] > 0, out   # the configured process was acted on
    assert out["second_swapped"] == 0 and out["new_swapped"] == 0, out
    assert "is not the process this task was configured for" in out["second_error"], out
    assert out["verify"] is True


def test_a_pid_task_remembers_the_first_process_it_saw_when_added_before_it_ran(tmp_path):
    child = subprocess.Popen(["sleep", "60"])
    try:
        project = etmem.Project(name="p", loop=1, interval=1, sleep=1)
        task = project.add_engine("slide").add_task("t", "pid", child.pid, T=1)
        assert task.view.target_start == procfs.start_time(child.pid)
        errors: dict = {}
        with held_targets([task.view], errors) as held:
            assert [h.pid for _, h in held] == [child.pid] and not errors
        task.view.target_start += 1   # as if configured for an earlier process of that pid
        with held_targets([task.view], errors) as held:
            assert held == []
        assert errors[task.view] == [f"process {child.pid} (sleep) is not the process this task was configured "
                                     f"for: that one has exited, and its pid now belongs to another process, "
                                     f"which is never acted on"]
    finally:
        child.kill()
        child.wait()


def test_etmemd_itself_and_its_ancestors_are_never_targets():
    with pytest.raises(EtmemError, match=f"process {os.getpid()} is etmemd itself"):
        resolve_targets("pid", str(os.getpid()))
    with pytest.raises(EtmemError, match=f"process {os.getppid()} is an ancestor of etmemd"):
        resolve_targets("pid", str(os.getppid()))
    # by name: every other process of the name is a target, this one never
    name = procfs.comm(os.getpid())
    try:
        handles = resolve_targets("name", name)
    except EtmemError as exc:
        assert "are etmemd itself, its ancestors or init" in str(exc)
    else:
        assert os.getpid() not in [h.pid for h in handles]
        for h in handles:
            h.close()


def test_pid_1_is_refused_unless_the_task_allows_init():
    with pytest.raises(EtmemError, match="value=1 is init: its tree is every process of the machine"):
        resolve_targets("pid", "1")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        handles = resolve_targets("pid", "1", allow_init=True)
        pids = {h.pid for h in handles}
        for h in handles:
            h.close()
        assert sleeper.pid in pids
        ancestors = {os.getpid(), os.getppid(), 1}
        assert not ancestors & pids
    finally:
        sleeper.kill()
        sleeper.wait()


def test_allow_init_is_a_task_key_of_the_config_file():
    text = ("[project]\nname=p\nloop=1\ninterval=1\nsleep=1\n[engine]\nname=slide\nproject=p\n"
            "[task]\nproject=p\nengine=slide\nname=t\ntype=pid\nvalue=1\nT=1\n")
    manager = etmem.Manager()
    manager.add_text(text)
    task = manager.project("p").engine("slide").task("t")
    assert task.view.allow_init is False
    assert "value=1 is init" in task.run_round().last_error
    manager.add_text(text.replace("name=p\n", "name=q\n").replace("project=p", "project=q") + "allow_init=yes\n")
    assert manager.project("q").engine("slide").task("t").view.allow_init is True
    with pytest.raises(EtmemError, match="allow_init=maybe: must be yes or no"):
        manager.add_text(text.replace("name=p\n", "name=r\n").replace("project=p", "project=r") + "allow_init=maybe\n")
