"""Test harness for etmemd: a real daemon process on a unique socket, driven by the real
`etmem` command or by raw bytes, plus a probe engine plugin with commands of its own, and
the fixtures `plugin_dir` and `daemon` (a pytest plugin: conftest.py loads it).

Only processes started here are ever signalled, by their own pid.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest


def script(name: str) -> str:
    """Path of an installed console script, preferring the one next to this Python."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    assert found, f"{name} is not installed (pip install -e .)"
    return found


def unique_socket_name(tag: str = "t") -> str:
    return f"etmem-test-{tag}-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def raw_exchange(socket_name: str, data: bytes, *, shutdown: bool = False,
                 timeout: float = 15.0) -> bytes:
    """Send `data` as one write (as upstream's C client does) and read until the tag
    or EOF; returns every byte received."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(b"\0" + socket_name.encode())
        try:
            s.sendall(data)
            if shutdown:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            if out[-1:] in (b"\xff", b"\xfe"):
                break
        return out


PROBE_PLUGIN = '''
"""A test engine: rounds count ticks; commands hello (instant), nap (until the test
creates nap.gate next to this file; nap.started says the nap has begun) and crash (a bug:
an exception no engine should raise)."""
import time
from pathlib import Path

from etmem.hookspecs import hookimpl
from etmem.strategy import Strategy


class Probe(Strategy):
    name = "probe"
    description = "test engine"

    def run_round(self, task, stop):
        task.stats.extra["ticks"] = task.stats.extra.get("ticks", 0) + 1

    def command(self, cmd, task):
        if cmd == "hello":
            who = f" task {task.name}" if task is not None else ""
            return f"hello from {self.engine.name}{who}\\n"
        if cmd == "nap":
            here = Path(__file__).parent
            (here / "nap.started").touch()
            deadline = time.monotonic() + 60
            while not (here / "nap.gate").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            return "awake\\n"
        if cmd == "crash":
            raise ZeroDivisionError("division by zero in the probe")
        return super().command(cmd, task)


@hookimpl
def etmem_engine_types():
    return [Probe]
'''


def install_plugin(directory: Path, engine: str, module: str, source: str) -> Path:
    """A directory that, on PYTHONPATH, provides `engine` from `module` (its `source`)
    through the `etmem` entry-point group, as a pip-installed plugin would."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{module}.py").write_text(source)
    info = directory / f"{module}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[etmem]\n{engine} = {module}\n")
    return directory


def install_probe_plugin(directory: Path) -> Path:
    """The `probe` engine's plugin directory (see install_plugin)."""
    return install_plugin(directory, "probe", "etmem_probe_plugin", PROBE_PLUGIN)


def write_config(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    os.chown(path, 0, 0)
    os.chmod(path, mode)
    return path


def probe_config(project: str, pid: int, engine: str = "probe", task: str = "t1",
                 with_project: bool = True) -> str:
    head = f"""
        [project]
        name={project}
        loop=1
        interval=1
        sleep=1
        """ if with_project else ""
    return head + f"""
        [engine]
        name={engine}
        project={project}

        [task]
        project={project}
        engine={engine}
        name={task}
        type=pid
        value={pid}
        """


class Etmemd:
    """One etmemd process of a test."""

    def __init__(self, workdir: Path, args: tuple[str, ...] = (), plugin_dir: Path | None = None,
                 name: str | None = None):
        self.name = name or unique_socket_name()
        self.workdir = workdir
        self.args = args
        self.log_path = workdir / f"etmemd-{self.name[-10:]}.log"
        self.env = dict(os.environ)
        if plugin_dir is not None:
            self.env["PYTHONPATH"] = os.pathsep.join(
                [str(plugin_dir)] + [p for p in [self.env.get("PYTHONPATH")] if p])
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "Etmemd":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([script("etmemd"), "-s", self.name, "-l", "0", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     cwd="/")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"etmemd exited with {self.proc.returncode}:\n{self.log()}")
            if self.listening():
                return self
            time.sleep(0.05)
        raise AssertionError(f"etmemd did not listen within {timeout} s:\n{self.log()}")

    def listening(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(b"\0" + self.name.encode())
            except OSError:
                return False
            return True

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def etmem(self, *args: str, cwd: Path | str | None = None, socket_name: str | None = None,
              timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the real `etmem` command with `-s NAME` appended."""
        argv = [script("etmem"), *args, "-s", socket_name or self.name]
        return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                              env=self.env)

    def raw(self, data: bytes, **kw) -> bytes:
        return raw_exchange(self.name, data, **kw)

    def rss_kb(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def thread_count(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """A directory providing the probe engine (install_probe_plugin), one per test module."""
    return install_probe_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture
def daemon(request, tmp_path, plugin_dir):
    """A running etmemd with the probe engine; afterwards it must stop with status 0 and,
    unless the test module sets ETMEMD_LOG_MAY_HOLD_TRACEBACKS, have logged no traceback."""
    d = Etmemd(tmp_path, plugin_dir=plugin_dir).start()
    yield d
    assert d.stop() == 0, d.log()
    if not getattr(request.module, "ETMEMD_LOG_MAY_HOLD_TRACEBACKS", False):
        assert "Traceback" not in d.log()
