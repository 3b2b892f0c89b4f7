"""A C engine's `libname` that is no library file (a FIFO, a device, a symlink to one) is
refused at once: the check opens without blocking and looks at the file before reading it,
so one hostile config cannot hang obj add, the Manager or etmemd."""
from __future__ import annotations

import os
import stat
import threading

import pytest

from etmem.engines.legacy import check_library_file
from etmem.errors import EtmemError, LegacyLoadError
from etmem.model import Manager
from etmemd_harness import Etmemd, write_config

pytestmark = pytest.mark.usefixtures("need_root")


def thirdparty_config(lib, target: int) -> str:
    return "\n".join(["[project]", "name=p1", "loop=1", "interval=1", "sleep=1",
                      "[engine]", "name=thirdparty", "project=p1", "eng_name=c1", f"libname={lib}", "ops_name=ops",
                      "[task]", "project=p1", "engine=c1", "name=t1", "type=pid", f"value={target}", ""])


@pytest.fixture
def fifo(tmp_path):
    """A root-owned FIFO of mode 0500 (as a library must be) that nobody writes to; a reader
    still blocked on it when the test ends is let go."""
    path = tmp_path / "engine.so"
    os.mkfifo(path, 0o500)
    yield path
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def _release(path) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_as_libname_is_refused_without_blocking_the_manager(fifo, target):
    manager = Manager()
    outcome: list[str] = []

    def add():
        try:
            manager.add_text(thirdparty_config(fifo, target))
            outcome.append("added")
        except EtmemError as exc:
            outcome.append(str(exc))

    adder = threading.Thread(target=add, daemon=True)
    adder.start()
    adder.join(10)
    blocked = adder.is_alive()
    if blocked:
        _release(fifo)
        adder.join(10)
    assert not blocked, "obj add blocked opening a FIFO as libname"
    assert len(outcome) == 1 and f"libname {fifo}: is a FIFO, not a regular file" in outcome[0]
    assert manager.projects == {}


def test_etmemd_answers_a_fifo_libname_and_every_request_after_it(fifo, target, tmp_path):
    daemon = Etmemd(tmp_path).start()
    try:
        conf = write_config(tmp_path / "c.conf", thirdparty_config(fifo, target))
        added = daemon.etmem("obj", "add", "-f", str(conf), timeout=20)
        assert added.returncode != 0 and f"libname {fifo}: is a FIFO, not a regular file" in added.stdout + added.stderr
        shown = daemon.etmem("project", "show", timeout=20)
        assert shown.returncode == 0, shown
    finally:
        _release(fifo)   # let a daemon blocked on the FIFO go, so that it can be stopped
        assert daemon.stop(timeout=20) == 0, daemon.log()


def test_a_symlink_is_resolved_and_the_file_it_names_is_checked(tmp_path):
    lib = tmp_path / "libengine.so.1"
    lib.write_bytes(b"\x7fELF not really")
    os.chmod(lib, 0o500)
    link = tmp_path / "libengine.so"
    link.symlink_to(lib.name)
    fd = check_library_file(str(link))
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(lib))
    finally:
        os.close(fd)
    os.chmod(lib, 0o755)
    with pytest.raises(LegacyLoadError, match=f"libname {link}: mode 0755"):
        check_library_file(str(link))


def _refusal(path, fifo) -> str:
    """check_library_file's refusal of path, run on a thread so that a blocking open fails the test."""
    outcome: list[str] = []

    def check():
        try:
            os.close(check_library_file(str(path)))
            outcome.append("accepted")
        except LegacyLoadError as exc:
            outcome.append(str(exc))

    checker = threading.Thread(target=check, daemon=True)
    checker.start()
    checker.join(10)
    if checker.is_alive():
        _release(fifo)
        checker.join(10)
        pytest.fail(f"check_library_file({path}) blocked")
    return outcome[0]


def test_a_symlink_to_a_fifo_or_a_device_is_refused_at_once(fifo, tmp_path):
    to_fifo = tmp_path / "fifo-link.so"
    to_fifo.symlink_to(fifo)
    assert _refusal(to_fifo, fifo) == f"libname {to_fifo}: is a FIFO, not a regular file"
    zero = tmp_path / "zero.so"
    os.mknod(zero, stat.S_IFCHR | 0o500, os.makedev(1, 5))
    assert _refusal(zero, fifo) == f"libname {zero}: is a character device, not a regular file"
    assert _refusal("/dev/null", fifo) == "libname /dev/null: is a character device, not a regular file"
