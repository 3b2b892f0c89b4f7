"""Config files from where no config lives: FIFOs, devices, /proc, /sys and huge files are
refused at once, with the same limits in `etmem config check` and etmemd, and nothing of
what such a file holds is echoed back."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from etmem import config, loader
from etmem.errors import ConfigError
from etmemd_harness import script

GOOD = "[project]\nname=p\nloop=1\ninterval=1\nsleep=1\n"


def check(*paths: str | Path, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """`etmem config check PATH...`, which must end by itself well within `timeout`."""
    return subprocess.run([script("etmem"), "config", "check", *map(str, paths)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture
def fifo(tmp_path):
    """A FIFO nobody writes to; a reader blocked on it is let go when the test ends."""
    path = tmp_path / "etmem.conf"
    os.mkfifo(path)
    yield path
    try:   # a writer that opens and closes at once ends a blocked open or read with EOF
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_config_check_of_a_fifo_says_so_at_once(fifo):
    out = check(fifo, timeout=20)
    assert out.returncode == 1
    assert out.stderr == f"{fifo}: is a FIFO, not a regular file: a config file must be a regular file\n"


def test_reading_a_fifo_in_python_does_not_block(fifo):
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(config.read_config_file, str(fifo))), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "read_config_file blocked on a FIFO"
    assert outcome == [f"{fifo}: is a FIFO, not a regular file: a config file must be a regular file"]


def _error_of(fn, *args) -> str:
    try:
        fn(*args)
    except ConfigError as exc:
        return str(exc)
    return "accepted"


def test_devices_are_refused_without_being_read(need_root, tmp_path):
    out = check("/dev/zero", timeout=20)
    assert out.returncode == 1 and "MemoryError" not in out.stderr
    assert out.stderr == ("/dev/zero: is under /dev: config files are never read from /proc, /sys or /dev "
                          "(kernel and device files, not configuration)\n")
    # The same device under another name: its file type refuses it.
    zero = tmp_path / "zero.conf"
    os.mknod(zero, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    assert _error_of(config.read_config_file, str(zero)) == (
        f"{zero}: is a character device, not a regular file: a config file must be a regular file")
    assert _error_of(config.read_config_file, str(tmp_path)) == (
        f"{tmp_path}: is a directory, not a regular file: a config file must be a regular file")


def test_kernel_files_are_refused_and_their_content_is_not_echoed(tmp_path):
    marker = "ETMEM_SECRET_MARKER_b41d"
    env = dict(os.environ, **{marker: "s3cret"})
    link = tmp_path / "status.conf"
    link.symlink_to("/proc/self/environ")
    for path, tree in [("/proc/self/environ", "/proc"), ("/proc/self/status", "/proc"),
                       ("/sys/kernel/mm/transparent_hugepage/enabled", "/sys"), (str(link), "/proc")]:
        out = check(path, env=env)
        assert out.returncode == 1, out
        assert out.stderr == (f"{path}: is under {tree}: config files are never read from /proc, /sys or /dev "
                              f"(kernel and device files, not configuration)\n")
        assert marker not in out.stdout + out.stderr


def test_a_bind_mount_of_proc_elsewhere_is_still_proc(need_root, tmp_path):
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is needed to bind-mount /proc in a private mount namespace")
    elsewhere = tmp_path / "kernel"
    elsewhere.mkdir()
    run = subprocess.run(["unshare", "--mount", "sh", "-c", 'mount --bind /proc "$1" && exec "$2" config check "$1/1/environ"',
                          "sh", str(elsewhere), script("etmem")], capture_output=True, text=True, timeout=30)
    assert run.returncode == 1, run
    assert run.stderr.startswith(f"{elsewhere}/1/environ: is under /proc: ")


def test_files_above_10_mib_are_refused_before_being_read(tmp_path):
    big = tmp_path / "big.conf"
    with open(big, "wb") as f:
        f.truncate(config.MAX_FILE_BYTES + 1)
    out = check(big)
    assert out.returncode == 1
    assert out.stderr == f"{big}: is 10485761 bytes; a config file may be at most 10485760 bytes (10 MiB)\n"
    edge = tmp_path / "edge.conf"
    edge.write_bytes(GOOD.encode() + b"#" * (config.MAX_FILE_BYTES - len(GOOD) - 1) + b"\n")
    assert os.path.getsize(edge) == config.MAX_FILE_BYTES
    assert check(edge).returncode == 0


def test_a_symlink_to_a_config_file_is_followed_and_a_missing_file_named(tmp_path):
    real = tmp_path / "real.conf"
    real.write_text(GOOD)
    link = tmp_path / "link.conf"
    link.symlink_to(real)
    assert loader.load_config(str(link)).projects[0].name == "p"
    assert _error_of(config.read_config_file, str(tmp_path / "none.conf")) == f"{tmp_path}/none.conf: no such file"
