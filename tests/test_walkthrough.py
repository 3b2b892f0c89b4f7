"""A newcomer's first session with etmemd, on any Linux: what the daemon says when the
example config is refused, why a round did nothing, and that a plugin installed while
etmemd runs needs a restart, each against a real etmemd (etmemd_harness)."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from etmemd_harness import Etmemd, install_probe_plugin, probe_config, write_config

pytestmark = pytest.mark.usefixtures("need_root")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "slide.conf"


@pytest.fixture
def daemon(tmp_path):
    d = Etmemd(tmp_path).start()
    yield d
    assert d.stop() == 0, d.log()


def test_the_example_as_git_checks_it_out_is_refused_with_the_chmod_that_fixes_it(daemon, tmp_path):
    checked_out = tmp_path / "slide.conf"
    shutil.copyfile(EXAMPLE, checked_out)
    checked_out.chmod(0o644)                     # git's mode for a file that is not executable
    refused = daemon.etmem("obj", "add", "-f", str(checked_out))
    assert (refused.returncode, refused.stderr) == (186, "")
    assert refused.stdout == (
        "error: invalid parameters\n"
        f"config file {checked_out} must have mode 0400 or 0600 (it has 0644): as upstream's, etmemd reads only "
        f"config files no one but root can read or write; chmod 600 {checked_out} (or start etmemd with "
        "--config-perms relaxed)\n"
        "etmem_client_recv failed.\n"
        "etmem: error -70\n")
    checked_out.chmod(0o600)                     # what the message says to do
    added = daemon.etmem("obj", "add", "-f", str(checked_out))
    assert (added.returncode, added.stdout) == (0, "")


def slide_project(name: str, pid: int, project_keys: str = "", task_keys: str = "") -> str:
    return f"""
        [project]
        name={name}
        loop=1
        interval=1
        sleep=1
        {project_keys}

        [engine]
        name=slide
        project={name}

        [task]
        project={name}
        engine=slide
        name=t1
        type=pid
        value={pid}
        T=1
        {task_keys}
        """


def first_round_done(daemon: Etmemd, project: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        shown = daemon.etmem("project", "show", "-n", project, "-o", "json")
        stats = json.loads(shown.stdout)[0]["tasks"][0]["stats"]
        if stats["rounds"] >= 1:
            return stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)


def test_show_v_says_why_a_round_did_nothing_with_the_values_that_decided_it(daemon, tmp_path, target):
    small = write_config(tmp_path / "small.conf", slide_project("small", target, task_keys="swap_threshold=1g"))
    gated = write_config(tmp_path / "gated.conf", slide_project("gated", target, project_keys="sysmem_threshold=0"))
    for conf, project in ((small, "small"), (gated, "gated")):
        assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
        assert daemon.etmem("project", "start", "-n", project).returncode == 0
        first_round_done(daemon, project)

    table = daemon.etmem("project", "show", "-n", "small").stdout
    assert "skipped" not in table and "stats of task" not in table          # upstream's table only
    small_v = daemon.etmem("project", "show", "-n", "small", "-v").stdout
    assert small_v.startswith(table + "\nstats of task t1 (engine slide):\n")
    (line,) = [l for l in small_v.splitlines() if "skipped" in l]
    key, reason = line.split(None, 1)
    assert key == f"last_round.{target}.skipped"
    assert reason.startswith(f"process {target} has ") and reason.endswith(" resident, not above "
                                                                           "swap_threshold=1 GiB")

    gated_v = daemon.etmem("project", "show", "-n", "gated", "-v").stdout
    (line,) = [l for l in gated_v.splitlines() if "skipped" in l]
    key, reason = line.split(None, 1)
    assert key == "skipped"
    assert reason.startswith("free memory is ") and reason.endswith("% of total, not below sysmem_threshold=0%: "
                                                                    "nothing to do")


def test_the_example_swaps_out_cold_pages_once_its_comment_is_followed(daemon, tmp_path, zram_swap,
                                                                        workload_factory):
    w = workload_factory(total_mb=32, hot_mb=4)
    lines = [line for line in EXAMPLE.read_text().splitlines()
             if not line.startswith(("sysmem_threshold=", "swap_threshold="))]
    text = "\n".join(lines).replace("\ntype=name\n", "\ntype=pid\n").replace("\nvalue=nginx\n", f"\nvalue={w.pid}\n")
    assert f"value={w.pid}" in text and "type=pid" in text
    conf = write_config(tmp_path / "slide.conf", text)
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert daemon.etmem("project", "start", "-n", "web").returncode == 0
    deadline = time.monotonic() + 60
    while True:
        stats = first_round_done(daemon, "web")
        if stats["pages_swapped"] > 0:
            break
        assert stats["last_error"] is None and stats["skipped"] is None, stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.5)
    assert w.verify()


def test_a_plugin_installed_while_etmemd_runs_is_named_with_the_restart_that_loads_it(tmp_path, target):
    plugin_dir = tmp_path / "site"
    plugin_dir.mkdir()
    d = Etmemd(tmp_path, plugin_dir=plugin_dir).start()
    try:
        conf = write_config(tmp_path / "probe.conf", probe_config("p1", target))
        before = d.etmem("obj", "add", "-f", str(conf))
        assert before.returncode == 186
        # (the installed engines are the built-ins and whatever else this environment has)
        assert re.search(r"engine 'probe' is not installed \(installed engines: cslide, damon, psi, slide, "
                         r"thirdparty[^;]*; restart etmemd after installing a plugin\)", before.stdout), before.stdout
        install_probe_plugin(plugin_dir)             # as pip install would, while etmemd runs
        after = d.etmem("obj", "add", "-f", str(conf))
        assert after.returncode == 186
        assert re.search(r"engine 'probe' is not installed; plugin (.*, )?probe \(etmem-probe-plugin 0\.1\)(, .*)? was "
                         r"installed after this process started; restart etmemd to load newly installed plugins "
                         r"\(installed engines: cslide, damon, psi, slide, thirdparty[^;]*\)", after.stdout), after.stdout
    finally:
        assert d.stop() == 0, d.log()
    d = Etmemd(tmp_path, plugin_dir=plugin_dir).start()          # the restart the message asks for
    try:
        assert d.etmem("obj", "add", "-f", str(conf)).returncode == 0
    finally:
        assert d.stop() == 0, d.log()
