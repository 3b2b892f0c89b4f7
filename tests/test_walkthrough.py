"""A newcomer's first session with etmemd, on any Linux: the walkthroughs of README.md and
docs/cli.md run as written, what the daemon says when the example config is refused, why a
round did nothing, and that a plugin installed while etmemd runs needs a restart, each
against a real etmemd (etmemd_harness)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import docblocks
from conftest import pagemap_bits
from etmem import procfs
from etmemd_harness import Etmemd, install_probe_plugin, probe_config, script, unique_socket_name, write_config

pytestmark = pytest.mark.usefixtures("need_root")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "slide.conf"


@pytest.fixture
def daemon(tmp_path):
    d = Etmemd(tmp_path).start()
    yield d
    assert d.stop() == 0, d.log()


# -- the walkthroughs, as written ----------------------------------------------------------

class Session:
    """Where a walkthrough runs: a mount and network namespace of its own, whose /etc is an
    overlay with its changes in a temporary directory (the walkthrough installs into
    /etc/etmem) and whose abstract sockets are private (`etmemd_socket` is free whatever runs
    here). Where namespaces cannot be made, the blocks run here with the socket name and
    /etc/etmem/ replaced by names of the test's own."""

    def __init__(self, tmp_path: Path):
        self.env = dict(os.environ, PATH=os.pathsep.join([str(Path(script("etmem")).parent),
                                                          os.environ.get("PATH", "")]))
        upper, work = tmp_path / "etc-upper", tmp_path / "etc-work"
        upper.mkdir()
        work.mkdir()
        mount = f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc"
        self.holder = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c",
                                        f"{mount} && echo ready && exec sleep 3600"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.isolated = self.holder.stdout.readline() == "ready\n"
        if not self.isolated:
            self.holder.wait()
            self.holder = None
            self.replacements = {"etmemd_socket": unique_socket_name("walk"), "/etc/etmem/": f"{tmp_path}/etc/etmem/"}
        self.config_dir = upper / "etmem" if self.isolated else tmp_path / "etc" / "etmem"

    def argv(self, text: str) -> list[str]:
        """bash running `text`, in the session's namespaces."""
        if not self.isolated:
            for old, new in self.replacements.items():
                text = text.replace(old, new)
        # setns() into a mount namespace moves to its root directory: --wd comes back to the checkout
        enter = ["nsenter", "-t", str(self.holder.pid), "-m", "-n", f"--wd={ROOT}", "--"] if self.isolated else []
        return [*enter, "bash", "-e", "-c", text]

    def run(self, text: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(text), capture_output=True, text=True, cwd=ROOT, env=self.env, timeout=120)

    def close(self) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()


@pytest.fixture
def session(tmp_path):
    s = Session(tmp_path)
    yield s
    s.close()


#: The ```sh blocks of each walkthrough, in order.
WALKTHROUGHS = {
    "README.md": lambda: docblocks.runnable("README.md", "tests/test_walkthrough.py"),
    "docs/cli.md": lambda: docblocks.runnable("docs/cli.md", "tests/test_walkthrough.py"),
}


def walk(doc: str, session: Session, log_path: Path) -> list[tuple[str, subprocess.CompletedProcess]]:
    """Run the walkthrough of `doc`: its first block (etmemd) in the background, as in a
    terminal of its own, then each other block in turn, as typed in a second terminal;
    before `project show` the project has had its first round, as it has for a reader.
    Returns each block's text and result, and stops etmemd as Ctrl-C does."""
    daemon_block, *blocks = WALKTHROUGHS[doc]()
    assert daemon_block.text.startswith("etmemd ") and daemon_block.text.count("\n") == 1, daemon_block
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(session.argv("exec " + daemon_block.text), stdout=log, stderr=subprocess.STDOUT,
                                  cwd=ROOT, env=session.env)
    try:
        deadline = time.monotonic() + 30
        while "etmemd started" not in log_path.read_text():
            assert daemon.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        results = []
        for block in blocks:
            if block.text.startswith("etmem project show"):
                wait_for_a_round(session)
            result = session.run(block.text)
            assert (result.returncode, result.stderr) == (0, ""), (doc, block.line, result, log_path.read_text())
            results.append((block.text, result))
    finally:
        daemon.send_signal(signal.SIGINT)
        status = daemon.wait(30)
    assert status == 0, log_path.read_text()
    return results


def wait_for_a_round(session: Session, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        shown = session.run("etmem project show -n web -o json -s etmemd_socket")
        if json.loads(shown.stdout)[0]["tasks"][0]["stats"]["rounds"] >= 1:
            return
        assert time.monotonic() < deadline, shown.stdout
        time.sleep(0.2)


#: What an idle machine's `project show -v` says held the example's round back.
IDLE_REASONS = re.compile(r"^  (skipped +free memory is \d+% of total, not below sysmem_threshold=80%: nothing to do"
                          r"|last_error +no process named nginx is running)$", re.M)
UPSTREAM_TABLE = ("project: web\n"
                  "number   type     value            name             engine           started \n"
                  "1        name     nginx            nginx_workers    slide            true    \n")


@pytest.fixture
def no_nginx():
    if procfs.pids_by_comm("nginx"):
        pytest.skip("a process named nginx runs here: the walkthrough's project would swap its pages out")


@pytest.mark.parametrize("doc", sorted(WALKTHROUGHS))
def test_the_walkthrough_runs_as_written_and_says_why_the_idle_example_does_nothing(doc, session, no_nginx,
                                                                                     tmp_path):
    had_etc_etmem = os.path.exists("/etc/etmem")
    results = walk(doc, session, tmp_path / "etmemd.log")
    (show,) = [r.stdout for text, r in results if "etmem project show -v" in text]
    assert show.startswith(UPSTREAM_TABLE + "\nstats of task nginx_workers (engine slide):\n"), show
    if doc == "docs/cli.md":            # shown after the first round, as the page does
        assert IDLE_REASONS.search(show), show
        sample = next(b.text for b in docblocks.blocks(ROOT / doc) if b.lang == "text" and "nginx_workers" in b.text)
        assert sample.startswith(UPSTREAM_TABLE), sample
        assert IDLE_REASONS.search(sample), sample
    installed = session.config_dir / "slide.conf"
    assert installed.read_text() == EXAMPLE.read_text() and installed.stat().st_mode & 0o777 == 0o600
    log = (tmp_path / "etmemd.log").read_text()
    assert "added project web, engine slide, task nginx_workers" in log and "etmemd stopped" in log, log
    assert os.path.exists("/etc/etmem") == had_etc_etmem          # the machine's own /etc is untouched


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
    # Whatever the source (the refault source swaps its samples out itself, so slide's own
    # count can stay 0), the workload's cold pages leave for swap and its hot ones stay.
    deadline = time.monotonic() + 60
    while True:
        stats = first_round_done(daemon, "web")
        assert stats["last_error"] is None and stats["skipped"] is None, stats
        _, cold_swapped = pagemap_bits(w.pid, *w.cold)
        if cold_swapped.any():
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.5)
    hot_present, _ = pagemap_bits(w.pid, *w.hot)
    assert hot_present.mean() > 0.9, hot_present.mean()
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
