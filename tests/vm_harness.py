"""Run `vm`-marked tests inside one QEMU guest with a real second kernel.

The build machines have one NUMA node and no per-page access source, so tests of
DAMON, idle page tracking and cross-node moves run in a virtme-ng guest booted
with two NUMA nodes (node 1 CPU-less, CXL style). On the host this plugin takes
over every `vm` item: at the first one it boots ONE guest that runs all of them
with `python -m pytest`, and then replays the guest's own test reports (outcome,
traceback, captured output, skip reason) into the host's session item by item.
Inside the guest (ETMEM_IN_VM=1) it only writes each report to a results file.

Environment knobs (see docs/testing.md):
  ETMEM_VM_KERNEL   kernel image to boot (default: ../shared/testvm/bzImage-6.12.117-etmem
                    beside the repository, then the cache's kernels/ (what testvm/build-kernel
                    and testvm/fetch-debian-kernel put there), then /boot/vmlinuz-6.12*-amd64)
  ETMEM_CACHE       that cache (default ${XDG_CACHE_HOME:-~/.cache}/etmem)
  ETMEM_VM_TIMEOUT  seconds for boot plus all guest tests (default 1200)
  ETMEM_VM_ARGS     extra vng arguments, split like a shell would
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from _pytest.reports import TestReport

IN_VM = "ETMEM_IN_VM"
RESULTS = "ETMEM_VM_RESULTS"
TEST_KERNEL = "bzImage-6.12.117-etmem"
INSTALLED_KERNELS = "/boot/vmlinuz-6.12*-amd64"  # Debian's, if installed as a host kernel
_GUEST_UP = re.compile(r"^vm: guest up ([0-9.]+) s", re.M)
# The group (21 tests, psi and damon engines included) took 12 minutes on this machine while
# other work loaded both cores; a quiet run took 274 s. The guard leaves room for a
# loaded machine and still ends a hung guest well inside CI's time.
DEFAULT_TIMEOUT = 1200
# Two 1 GiB nodes: room for a 256 MiB workload on each; node 1 has memory but no CPU.
VM_SHAPE = ["--memory", "2G", "--cpus", "2",
            "--numa", "1G,cpus=0-1", "--numa", "1G",
            "--numa-distance", "0,1=30", "--numa-distance", "1,0=30"]
# The host's root is shared read-only over 9p; letting the guest cache it (`cache=loose`,
# the last rootflags= wins) halves the time Python spends importing through it.
ROOT_FS = ["--force-9p", "--append", "rootflags=version=9p2000.L,trans=virtio,access=any,msize=524288,cache=loose"]
# Access-bit sources (DAMON, page_idle) see a page again only when its TLB entry is refilled.
# TCG's software TLB is huge and survives until a CR3 load, so a hot set would stay cached
# for seconds; page-table isolation reloads CR3 on every kernel entry, giving the guest the
# TLB turnover of real hardware.
TLB_TURNOVER = ["--append", "pti=on"]


class VmUnavailable(Exception):
    """QEMU, virtme-ng or a kernel image is not installed: the vm tests skip."""


class VmBroken(Exception):
    """The harness was set up but the guest run went wrong: the vm tests fail."""


VM_TESTS = Path(__file__).parent / "vm"


def is_vm_item(item: pytest.Item) -> bool:
    return item.get_closest_marker("vm") is not None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so `-m vm` selects these
def pytest_collection_modifyitems(items) -> None:
    """Every test under tests/vm runs in the guest, marked or not."""
    for item in items:
        if VM_TESTS in item.path.parents:
            item.add_marker(pytest.mark.vm)


# --- inside the guest: write every report where the host can read it ----------

def pytest_runtest_logreport(report: TestReport) -> None:
    path = os.environ.get(RESULTS)
    if os.environ.get(IN_VM) and path:
        _append_result(report, path)


def pytest_collectreport(report) -> None:
    path = os.environ.get(RESULTS)
    if os.environ.get(IN_VM) and path and report.failed:
        with open(path, "a") as f:
            f.write(json.dumps({"collect_error": report.nodeid, "text": report.longreprtext}) + "\n")


_config: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config
    if not os.environ.get(IN_VM):
        config.stash[_run_key] = GuestRun(config)


def _append_result(report: TestReport, path: str) -> None:
    data = _config.hook.pytest_report_to_serializable(config=_config, report=report)
    with open(path, "a") as f:
        f.write(json.dumps(data) + "\n")


# --- on the host: boot the guest once, replay its reports ----------------------

_run_key = pytest.StashKey["GuestRun"]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    if os.environ.get(IN_VM) or not is_vm_item(item):
        return None
    run = item.config.stash[_run_key]
    run.ensure_started(item.session)
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for report in run.reports_for(item):
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    run = config.stash.get(_run_key, None)
    if run is not None and run.started:
        terminalreporter.write_sep("-", "vm tests")
        for line in run.summary_lines():
            terminalreporter.write_line(line)


def kernel_cache() -> Path:
    """Where testvm/build-kernel and testvm/fetch-debian-kernel leave kernels (kept in step)."""
    cache = os.environ.get("ETMEM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "etmem")
    return Path(cache) / "kernels"


def _newest(pattern: str) -> Path | None:
    """The file matching `pattern` with the highest version numbers in its name."""
    def version(path: str) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", os.path.basename(path))]
    found = sorted(glob.glob(pattern), key=version)
    return Path(found[-1]) if found else None


def find_kernel(rootdir: Path) -> Path:
    """The kernel image to boot: ETMEM_VM_KERNEL, the test kernel (prebuilt beside the
    repository, or built into the cache), Debian's 6.12 (unpacked into the cache, or installed)."""
    override = os.environ.get("ETMEM_VM_KERNEL")
    if override:
        path = Path(override)
        if not path.is_file():
            raise VmBroken(f"ETMEM_VM_KERNEL={override} is not a file")
        return path
    shared = rootdir.parent / "shared" / "testvm" / TEST_KERNEL
    if shared.is_file():
        return shared
    cache = kernel_cache()
    # Debian's image unpacked with its modules beside it (boot/ and lib/modules/ under one
    # root): virtme-ng packs the virtio modules and links the rest into the guest.
    found = (_newest(str(cache / "bzImage-6.12*-etmem"))
             or _newest(str(cache / "debian-6.12*" / "boot" / "vmlinuz-6.12*"))
             or _newest(INSTALLED_KERNELS))
    if found:
        return found
    raise VmUnavailable(f"no kernel image to boot: no {shared}, no kernel in {cache} and no "
                        f"{INSTALLED_KERNELS} (testvm/fetch-debian-kernel unpacks Debian's "
                        "into the cache in a minute, testvm/build-kernel builds the test kernel "
                        "there in 15-20; or set ETMEM_VM_KERNEL)")


def unpacked_config(kernel: Path) -> Path | None:
    """The build config beside an unpacked distribution kernel (boot/vmlinuz-R, boot/config-R)
    outside /boot. The guest gets it at /boot/config-R, where an installed kernel's config is
    and where etmem.kernel reads it (e.g. DAMON's operations before any kdamond exists)."""
    if kernel.name.startswith("vmlinuz-") and kernel.parent != Path("/boot"):
        config = kernel.parent / f"config-{kernel.name.removeprefix('vmlinuz-')}"
        if config.is_file():
            return config
    return None


def check_tools() -> tuple[str, str]:
    """Paths of vng and qemu-system-x86_64, or VmUnavailable naming what is missing."""
    vng = shutil.which("vng")
    if not vng:
        raise VmUnavailable("virtme-ng is not installed: `vng` is not on PATH (pip install virtme-ng)")
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise VmUnavailable("QEMU is not installed: `qemu-system-x86_64` is not on PATH "
                            "(apt-get install qemu-system-x86)")
    probe = subprocess.run([qemu, "-version"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise VmUnavailable(f"QEMU cannot start here: `{qemu} -version` exited {probe.returncode}: "
                            f"{(probe.stderr or probe.stdout).strip()}")
    return vng, qemu


class GuestRun:
    """One guest boot that runs every selected `vm` item; its reports, by node id."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.started = False
        self.skip_reason: str | None = None
        self.broken: str | None = None
        self.reports: dict[str, list[TestReport]] = {}
        self.collect_errors: list[str] = []
        self.console = ""
        self.dmesg = ""
        self.kernel: Path | None = None
        self.nodeids: list[str] = []
        self.seconds = 0.0
        self.exit_status: int | None = None
        self.workdir: str | None = None
        self.command: list[str] = []
        self.broken_shown = ""

    def ensure_started(self, session: pytest.Session) -> None:
        if self.started:
            return
        self.started = True
        self.nodeids = [i.nodeid for i in session.items if is_vm_item(i)]
        try:
            self.kernel = find_kernel(self.config.rootpath)
            vng, _ = check_tools()
            self._boot(vng)
        except VmUnavailable as exc:
            self.skip_reason = str(exc)
        except VmBroken as exc:
            self.broken = str(exc)

    def _boot(self, vng: str) -> None:
        rootdir = self.config.rootpath
        self.workdir = tempfile.mkdtemp(prefix="etmem-vm-")
        results = os.path.join(self.workdir, "results.jsonl")
        guest_env = {
            IN_VM: "1",
            RESULTS: results,
            "PYTHONDONTWRITEBYTECODE": "1",
            "HYPOTHESIS_STORAGE_DIRECTORY": os.path.join(self.workdir, "hypothesis"),
            "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
        }
        # The guest imports the etmem the host's tests import (a checkout's src/ named by
        # PYTHONPATH is not on the guest's path otherwise: the guest sees only the installed one).
        if os.environ.get("PYTHONPATH"):
            guest_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        # The guest's pytest gets the exact items the host selected; `-m ''` undoes the
        # default `-m 'not slow'` so a slow vm test chosen on the host runs too.
        # Python runs some 30 times slower under TCG: leave out plugins the vm tests do not
        # need (hypothesis alone costs a minute of guest start-up).
        pytest_cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                      "-p", "no:benchmark", "-v", "-rA",
                      "-m", "", "--rootdir", str(rootdir),
                      f"--junitxml={self.workdir}/junit.xml", "-o", "junit_logging=all",
                      *self.nodeids]
        # The command goes in a script file: vng passes --exec on the kernel command line,
        # which is limited to 2 KiB and would overflow with many node ids.
        script = os.path.join(self.workdir, "run.sh")
        config = unpacked_config(self.kernel)
        with open(script, "w") as f:
            f.write(f"cd {shlex.quote(str(rootdir))} || exit 125\n"
                    + "echo \"vm: guest up $(cut -d' ' -f1 /proc/uptime) s, starting pytest\"\n"
                    + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in guest_env.items())
                    # zram is a module in Debian's kernel (built into the test kernel)
                    + "modprobe -q zram 2>/dev/null\n"
                    + (f"cp {shlex.quote(str(config))} /boot/\n" if config else "")
                    + shlex.join(pytest_cmd) + "\n"
                    + f"rc=$?\ndmesg > {shlex.quote(self.workdir)}/dmesg.txt 2>&1\nexit $rc\n")
        cmd = [vng, "--run", str(self.kernel), "--disable-kvm", "--user", "root",
               *VM_SHAPE, *ROOT_FS, *TLB_TURNOVER, f"--rwdir={self.workdir}", "--cwd", str(rootdir),
               *(["--overlay-rwdir=/boot"] if config else []),
               *shlex.split(os.environ.get("ETMEM_VM_ARGS", "")), "--exec", f"sh {shlex.quote(script)}"]
        timeout = float(os.environ.get("ETMEM_VM_TIMEOUT", DEFAULT_TIMEOUT))
        self.command = cmd
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"vm: booting {self.kernel.name} for {len(self.nodeids)} tests; "
                                f"guest console in {self.workdir}/console.txt")
        t0 = time.monotonic()
        self.exit_status, self.console = self._launch(cmd, timeout, "console.txt")
        if self.exit_status is not None and not os.path.exists(results) and not _GUEST_UP.search(self.console):
            # The guest never reached its command (seen once in CI's shape: vng exit 255 after
            # 6 s, an empty console). Boot once more, verbose, so a second failure says why.
            first = f"vng exit status {self.exit_status} after {time.monotonic() - t0:.0f} s"
            if reporter is not None:
                reporter.write_line(f"vm: the guest did not start its command ({first}); booting once more "
                                    "with --verbose (console2.txt)")
            cmd = [cmd[0], "--verbose", *cmd[1:]]   # not between --run and its kernel image
            self.command = cmd
            self.exit_status, second = self._launch(cmd, max(60.0, timeout - (time.monotonic() - t0)), "console2.txt")
            self.console = f"{self.console}\n--- first boot: {first}; second boot, --verbose: ---\n{second}"
        self.seconds = time.monotonic() - t0
        try:
            with open(os.path.join(self.workdir, "dmesg.txt")) as f:
                self.dmesg = f.read()
        except OSError:
            pass
        self._read_results(results)
        if self.exit_status is None:
            self.broken = f"the guest did not finish within ETMEM_VM_TIMEOUT={timeout:.0f} s and was killed"
        elif not os.path.exists(results) and not self.reports:
            self.broken = (f"the guest wrote no test results (vng exit status {self.exit_status}): "
                           "it did not boot or its pytest did not start")

    def _launch(self, cmd: list[str], timeout: float, console_name: str) -> tuple[int | None, str]:
        """Run vng once; (its exit status, or None when killed at the timeout; the console)."""
        # Output goes through a pipe: vng loses the guest's output when stdout is a file.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        chunks: list[bytes] = []
        console_path = os.path.join(self.workdir, console_name)

        def copy_console():  # as it comes, so `tail -f console.txt` shows a running guest
            with open(console_path, "wb") as log:
                for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                    chunks.append(chunk)
                    log.write(chunk)
                    log.flush()

        reader = threading.Thread(target=copy_console, daemon=True)
        reader.start()
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own vng session: vng and its QEMU
            proc.wait()
            status = None
        except BaseException:  # Ctrl-C: the guest is in its own session and did not get it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        reader.join(timeout=10)
        return status, b"".join(chunks).decode(errors="replace")

    def _read_results(self, path: str) -> None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            return
        for line in lines:
            data = json.loads(line)
            if "collect_error" in data:
                self.collect_errors.append(f"{data['collect_error']}: {data['text']}")
                continue
            report = self.config.hook.pytest_report_from_serializable(config=self.config, data=data)
            if isinstance(report.longrepr, list):  # a skip's (path, line, reason); JSON made it a list
                report.longrepr = tuple(report.longrepr)
            self.reports.setdefault(report.nodeid, []).append(report)

    def reports_for(self, item: pytest.Item) -> list[TestReport]:
        if self.skip_reason:
            return [self._report(item, "setup", "skipped", self._skip_longrepr(item)),
                    self._report(item, "teardown", "passed", None)]
        reports = self.reports.get(item.nodeid)
        # A test the guest finished keeps its own result even if the guest died later on.
        if not reports or not any(r.when == "teardown" for r in reports):
            why = ("the guest ran this test only partly (no teardown report)" if reports
                   else "the guest has no result for this test")
            if self.broken:
                why = f"{why}: {self.broken}"
            reports = [r for r in (reports or []) if not r.failed]
            return [*reports, self._report(item, "call", "failed", self._broken_text(item, why))]
        if any(r.failed for r in reports):
            for r in reports:
                if r.failed:
                    r.sections.append(("guest dmesg (last 40 lines)", _tail(self.dmesg, 40)))
        return reports

    def _report(self, item, when, outcome, longrepr) -> TestReport:
        return TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords}, outcome,
                          longrepr, when, sections=[], duration=0.0)

    def _skip_longrepr(self, item):
        path, lineno, _ = item.location
        return (str(path), (lineno or 0) + 1, f"Skipped: {self.skip_reason}")

    def _broken_text(self, item: pytest.Item, why: str) -> str:
        if self.broken_shown:
            return f"vm harness: {why} (guest console under {self.broken_shown})"
        self.broken_shown = item.nodeid
        parts = [f"vm harness: {why}", f"kernel: {self.kernel}", f"command: {shlex.join(self.command)}"]
        if self.collect_errors:
            parts += ["guest collection errors:", *self.collect_errors]
        parts += [f"guest console (last 60 lines, full log in {self.workdir}/console.txt):",
                  _tail(self.console, 60)]
        return "\n".join(parts)

    def summary_lines(self) -> list[str]:
        if self.skip_reason:
            return [f"vm: {len(self.nodeids)} tests skipped: {self.skip_reason}"]
        counts: dict[str, int] = {}
        for nodeid in self.nodeids:
            reports = self.reports.get(nodeid, [])
            outcome = ("failed" if any(r.failed for r in reports) else
                       "skipped" if any(r.skipped for r in reports) else
                       "passed" if reports else "not run")
            counts[outcome] = counts.get(outcome, 0) + 1
        ran = sum(n for k, n in counts.items() if k != "not run")
        detail = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        booted = _GUEST_UP.search(self.console)
        boot = f" (pytest started at {float(booted.group(1)):.0f} s guest time)" if booted else ""
        lines = [f"vm: {ran} tests executed in the guest ({detail}); kernel {self.kernel}; "
                 f"boot and run {self.seconds:.0f} s{boot}; vng exit status {self.exit_status}"]
        if self.broken:
            lines.append(f"vm: harness failure: {self.broken}")
        if self.broken or counts.get("failed"):
            lines.append(f"vm: guest console, dmesg and junit.xml kept in {self.workdir}")
        elif self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return lines


def _tail(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[-n:])


if __name__ == "__main__":  # `python3 tests/vm_harness.py`: the kernel the vm tests would boot
    try:
        print(find_kernel(Path(__file__).resolve().parent.parent))
    except (VmUnavailable, VmBroken) as exc:
        sys.exit(f"vm_harness: {exc}")
