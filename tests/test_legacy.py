"""Legacy C engines (`[engine] name=thirdparty`): real engines compiled with the system
compiler from tests/c, loaded through config files into a real etmemd and driven with
the real `etmem` command."""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from etmem.engines import legacy_abi as abi
from etmem.errors import EtmemError
from etmem.model import Manager
from etmemd_harness import Etmemd, write_config

pytestmark = pytest.mark.usefixtures("need_root")

C_DIR = Path(__file__).parent / "c"
INCLUDE = abi.include_dir()


def _glib_flags() -> list[str]:
    pkg = subprocess.run(["pkg-config", "--cflags", "--libs", "glib-2.0"], capture_output=True, text=True)
    assert pkg.returncode == 0, f"GLib development files are missing (apt-get install libglib2.0-dev): {pkg.stderr}"
    return pkg.stdout.split()


def compile_engine(out_dir: Path, source: str, *extra: str, name: str | None = None, mode: int = 0o500) -> Path:
    """Build tests/c/SOURCE.c into OUT_DIR/NAME.so, owned by root with `mode`."""
    out = out_dir / f"{name or source}.so"
    cmd = ["cc", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(out), str(C_DIR / f"{source}.c"),
           f"-I{INCLUDE}", *_glib_flags(), *extra, "-lpthread"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    os.chown(out, 0, 0)
    os.chmod(out, mode)
    return out


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cengines")
    os.chmod(d, 0o755)
    return {
        "full": compile_engine(d, "full_engine"),
        "failing": compile_engine(d, "start_fails"),
        "null": compile_engine(d, "null_ops", "-Wl,--defsym=null_ops=0"),
        "scan": compile_engine(d, "scan_engine", abi.scan_library_path()),
    }


@pytest.fixture
def daemon(tmp_path):
    d = Etmemd(tmp_path).start()
    yield d
    assert d.stop() == 0, d.log()
    assert "Traceback" not in d.log()


def thirdparty_config(lib: Path, ops: str, target: int, *, eng: str = "c1", engine_keys: str = "",
                      task_keys: str = "", project: str = "p1", project_keys: str = "") -> str:
    """A config file's text: a project, a thirdparty engine and a task on `target`."""
    return "\n".join([
        "[project]", f"name={project}", "loop=1", "interval=1", "sleep=1", project_keys, "",
        "[engine]", "name=thirdparty", f"project={project}", f"eng_name={eng}", f"libname={lib}",
        f"ops_name={ops}", engine_keys, "",
        "[task]", f"project={project}", f"engine={eng}", "name=t1", "type=pid", f"value={target}", task_keys, "",
    ])


def error_of(result) -> str:
    assert result.returncode == 186, result
    return result.stdout


def events(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_abi_structures_match_the_c_header(tmp_path):
    exe = tmp_path / "layout"
    built = subprocess.run(["cc", "-o", str(exe), str(C_DIR / "layout.c"), f"-I{INCLUDE}", *_glib_flags()],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    c_side = dict(line.rsplit(" ", 1) for line in subprocess.check_output([str(exe)], text=True).splitlines())
    types = {"engine": abi.Engine, "task": abi.Task, "task_pid": abi.TaskPid, "project": abi.Project,
             "page_refs": abi.PageRefs, "vma": abi.Vma, "vmas": abi.Vmas, "engine_ops": abi.EngineOps,
             "page_scan": abi.PageScan}
    for name, value in c_side.items():
        struct, _, field = name.partition(".")
        py = getattr(types[struct], field).offset if field else ctypes.sizeof(types[struct])
        assert py == int(value), f"{name}: ctypes {py}, C {value}"
    assert len(c_side) > 40


def test_all_nine_ops_are_called_in_upstream_order(daemon, libs, target, tmp_path):
    log = tmp_path / "engine.log"
    conf = write_config(tmp_path / "c.conf", thirdparty_config(
        libs["full"], "full_ops", target, engine_keys=f"log_file={log}\nengine_private_key=engine_private_value",
        task_keys="task_private_key=task_private_value"))
    added = daemon.etmem("obj", "add", "-f", str(conf))
    assert added.returncode == 0, added.stderr
    assert events(log) == ["fill_eng_params c1 type=7", "project p1 private=engine_private_value",
                           "fill_task_params t1 private=task_private_value"]

    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    assert events(log)[3:] == [f"alloc_pid_params {target} task=t1", f"start_task pids={target} loop=1",
                               "start_task started=yes task=t1"]
    shown = daemon.etmem("project", "show", "-n", "p1")
    assert re.search(rf"^1\s+pid\s+{target}\s+t1\s+c1\s+true\s*$", shown.stdout, re.M), shown.stdout

    assert daemon.etmem("project", "stop", "-n", "p1").returncode == 0
    assert events(log)[6:] == ["stop_task t1", f"free_pid_params {target}"]
    assert daemon.etmem("obj", "del", "-f", str(conf)).returncode == 0
    assert events(log)[8:] == ["clear_task_params t1", "clear_eng_params c1"]
    assert daemon.etmem("project", "show").stdout == "no project exists\n\n"


def test_engine_commands_reach_the_client_through_the_fd(daemon, libs, target, tmp_path):
    log = tmp_path / "engine.log"
    conf = write_config(tmp_path / "c.conf", thirdparty_config(
        libs["full"], "full_ops", target, engine_keys=f"log_file={log}\nengine_private_key=secret",
        task_keys="task_private_key=tv"))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    time.sleep(0.1)  # the task's thread ticks every 10 ms

    with_task = daemon.etmem("engine", "show", "-n", "p1", "-e", "c1", "-t", "t1")
    # the engine wrote 0xFF 0xFE before " end": dropped, so the reply tag stays unambiguous
    assert (with_task.returncode, with_task.stdout) == (
        0, "engine c1 cmd show private secret task t1 private tv ticking yes end\n")
    no_task = daemon.etmem("engine", "hello", "-n", "p1", "-e", "c1")
    assert (no_task.returncode, no_task.stdout) == (0, "engine c1 cmd hello private secret end\n")
    raw = daemon.raw(b"proj_name p1 file_name - cmd 5 eng_name c1 eng_cmd show task_name t1")
    assert raw.endswith(b" end\n\xff") and raw.count(b"\xff") == 1 and b"\xfe" not in raw

    big = daemon.etmem("engine", "big", "-n", "p1", "-e", "c1")
    lines = big.stdout.splitlines()
    assert big.returncode == 0 and len(lines) == 20000 and lines[-1] == "line 19999 of a long reply"

    failed = error_of(daemon.etmem("engine", "fail", "-n", "p1", "-e", "c1"))
    assert failed.startswith("error: invalid parameters\ncannot do that\n")
    assert f"engine c1 ({libs['full']}, full_ops.eng_mgt_func) failed for command 'fail' (returned -1)" in failed
    assert daemon.etmem("project", "stop", "-n", "p1").returncode == 0


def test_several_c_engines_share_a_project(daemon, libs, target, tmp_path):
    log = tmp_path / "engine.log"
    both = thirdparty_config(libs["full"], "full_ops", target, eng="a", engine_keys=f"log_file={log}")
    both += "\n".join(["[engine]", "name=thirdparty", "project=p1", "eng_name=b", f"libname={libs['full']}",
                       "ops_name=full_ops", f"log_file={log}", ""])
    assert daemon.etmem("obj", "add", "-f", str(write_config(tmp_path / "both.conf", both))).returncode == 0
    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    listed = daemon.etmem("engine", "engines", "-n", "p1", "-e", "a")
    assert (listed.returncode, listed.stdout) == (0, "b a\n")  # proj->engs, newest first as upstream

    only_b = "\n".join(["[engine]", "name=thirdparty", "project=p1", "eng_name=b", f"libname={libs['full']}",
                        "ops_name=full_ops", ""])
    assert daemon.etmem("obj", "del", "-f", str(write_config(tmp_path / "b.conf", only_b))).returncode == 0
    assert "clear_eng_params b" in events(log)
    # the library stays loaded for engine a, which still answers
    listed = daemon.etmem("engine", "engines", "-n", "p1", "-e", "a")
    assert (listed.returncode, listed.stdout) == (0, "a\n")
    assert daemon.etmem("project", "stop", "-n", "p1").returncode == 0


def test_a_failing_start_task_is_named_and_leaves_the_task_stopped(daemon, libs, target, tmp_path):
    conf = write_config(tmp_path / "c.conf", thirdparty_config(libs["failing"], "failing_ops", target))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    failed = error_of(daemon.etmem("project", "start", "-n", "p1"))
    assert f"engine c1 ({libs['failing']}, failing_ops.start_task) failed for task t1 (returned -22)" in failed
    shown = daemon.etmem("project", "show", "-n", "p1")
    assert re.search(r"^1\s+pid\s+\d+\s+t1\s+c1\s+false\s*$", shown.stdout, re.M), shown.stdout
    assert daemon.etmem("obj", "del", "-f", str(conf)).returncode == 0


def test_a_failing_fill_adds_nothing_from_the_file(daemon, libs, target, tmp_path):
    log = tmp_path / "engine.log"
    refused = write_config(tmp_path / "refuse.conf", thirdparty_config(libs["failing"], "failing_ops", target,
                                                                       engine_keys="refuse=yes"))
    failed = error_of(daemon.etmem("obj", "add", "-f", str(refused)))
    assert f"engine c1 ({libs['failing']}, failing_ops.fill_eng_params) failed (returned -1)" in failed
    assert daemon.etmem("project", "show").stdout == "no project exists\n\n"

    # a task the engine refuses: the engine of the same file is cleared again, nothing stays
    task_refused = write_config(tmp_path / "task.conf", thirdparty_config(
        libs["full"], "full_ops", target, engine_keys=f"log_file={log}", task_keys="task_private_key=refuse"))
    failed = error_of(daemon.etmem("obj", "add", "-f", str(task_refused)))
    assert f"engine c1 ({libs['full']}, full_ops.fill_task_params) failed for task t1 (returned -1)" in failed
    assert events(log)[-2:] == ["fill_task_params t1 private=refuse", "clear_eng_params c1"]
    assert daemon.etmem("project", "show").stdout == "no project exists\n\n"

    fine = write_config(tmp_path / "fine.conf", thirdparty_config(libs["failing"], "failing_ops", target))
    assert daemon.etmem("obj", "add", "-f", str(fine)).returncode == 0


def test_null_ops_where_upstream_allows_them(daemon, libs, target, tmp_path):
    conf = write_config(tmp_path / "min.conf", thirdparty_config(libs["null"], "minimal_ops", target))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    no_cmd = error_of(daemon.etmem("engine", "show", "-n", "p1", "-e", "c1"))
    assert f"engine c1 has no private commands (minimal_ops.eng_mgt_func is NULL in {libs['null']})" in no_cmd
    assert daemon.etmem("project", "stop", "-n", "p1").returncode == 0
    assert daemon.etmem("obj", "del", "-f", str(conf)).returncode == 0

    empty = write_config(tmp_path / "empty.conf", thirdparty_config(libs["null"], "empty_ops", target, project="p2"))
    assert daemon.etmem("obj", "add", "-f", str(empty)).returncode == 0
    cannot = error_of(daemon.etmem("project", "start", "-n", "p2"))
    assert f"engine c1 ({libs['null']}, empty_ops.start_task) is NULL: the engine cannot start tasks" in cannot


@pytest.mark.parametrize("ops, message", [
    ("null_ops", "ops_name null_ops is a NULL ops table"),
    ("no_such_ops", "no symbol no_such_ops (ops_name)"),
])
def test_a_missing_or_null_ops_table_is_refused(daemon, libs, target, tmp_path, ops, message):
    conf = write_config(tmp_path / "c.conf", thirdparty_config(libs["null"], ops, target))
    failed = error_of(daemon.etmem("obj", "add", "-f", str(conf)))
    assert f"libname {libs['null']}: {message}" in failed
    assert daemon.etmem("project", "show").stdout == "no project exists\n\n"


def test_library_file_checks(libs, target, tmp_path, monkeypatch):
    good = tmp_path / "good.so"
    shutil.copy(libs["null"], good)

    def add(path: Path) -> str:
        m = Manager()
        text = thirdparty_config(path, "minimal_ops", target)
        try:
            m.add_text(text)
        except EtmemError as exc:
            assert m.projects == {}
            return str(exc)
        assert list(m.projects) == ["p1"]
        m.delete_project("p1")
        return ""

    for mode in (0o500, 0o700):
        os.chmod(good, mode)
        assert add(good) == ""
    for mode, problem in [(0o775, "mode 0775 lets group or others write it"),
                          (0o707, "mode 0707 lets group or others write it"),
                          (0o755, "mode 0755; it must be 0500 or 0700"),
                          (0o600, "mode 0600; it must be 0500 or 0700"),
                          (0o555, "mode 0555; it must be 0500 or 0700")]:
        os.chmod(good, mode)
        assert problem in add(good)
    monkeypatch.setenv("ETMEM_LEGACY_LIB_MODES", "any")
    os.chmod(good, 0o555)
    assert add(good) == ""
    os.chmod(good, 0o775)
    assert "lets group or others write it" in add(good)
    monkeypatch.delenv("ETMEM_LEGACY_LIB_MODES")

    os.chmod(good, 0o500)
    os.chown(good, 65534, 0)
    assert f"libname {good}: owned by 65534:0; it must be owned by root:root" in add(good)
    os.chown(good, 0, 1)   # root:daemon, as upstream refuses too
    os.chmod(good, 0o500)
    assert f"libname {good}: owned by 0:1; it must be owned by root:root" in add(good)
    os.chown(good, 0, 0)
    os.chmod(good, 0o500)
    assert "not a regular file" in add(tmp_path)
    assert f"libname {tmp_path}/missing.so: cannot open" in add(tmp_path / "missing.so")
    not_elf = tmp_path / "text.so"
    not_elf.write_text("not a library")
    os.chmod(not_elf, 0o500)
    assert f"libname {not_elf}: cannot load:" in add(not_elf)
    relative = Manager()
    with pytest.raises(EtmemError, match="libname=lib/x.so: must be an absolute path"):
        relative.add_text(thirdparty_config(Path("lib/x.so"), "minimal_ops", target))


def test_an_engine_written_for_upstream_builds_unchanged_and_runs(daemon, target, tmp_path):
    """tests/c/sample_engine.c includes only upstream's etmemd_thirdparty_export.h and relies
    on it for GLib, free() and the structures; -Wall -Werror."""
    lib = compile_engine(tmp_path, "sample_engine")
    conf = write_config(tmp_path / "s.conf", thirdparty_config(lib, "sample_ops", target, eng="my_engine",
                                                               engine_keys="limit=10g", task_keys="weight=3"))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    report = daemon.etmem("engine", "report", "-n", "p1", "-e", "my_engine", "-t", "t1")
    assert (report.returncode, report.stdout) == (0, "my_engine limit=10g task=t1 weight=3 project=p1\n")
    assert daemon.etmem("project", "stop", "-n", "p1").returncode == 0
    assert daemon.etmem("obj", "del", "-f", str(conf)).returncode == 0
    refused = write_config(tmp_path / "r.conf", thirdparty_config(lib, "sample_ops", target, eng="my_engine"))
    failed = error_of(daemon.etmem("obj", "add", "-f", str(refused)))
    assert failed.startswith("error: etmemd has internal error, see reason details in messages\n")
    assert "sample_ops.fill_eng_params) failed (returned -1)" in failed


def test_a_c_engine_scans_through_libetmemd_scan(daemon, libs, tmp_path, workload_factory):
    w = workload_factory(total_mb=24, hot_mb=4)
    ranges = f"hot={w.hot[0]:x}-{w.hot[1]:x}\ncold={w.cold[0]:x}-{w.cold[1]:x}"
    # the counts below are the smaps source's (one verdict per VMA; the workload's hot and cold
    # regions are VMAs of their own): the engine's passes use the project's scanner
    conf = write_config(tmp_path / "scan.conf", thirdparty_config(libs["scan"], "scan_ops", w.pid, task_keys=ranges,
                                                                  project_keys="scanner=smaps"))
    assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
    assert daemon.etmem("project", "start", "-n", "p1").returncode == 0
    deadline = time.monotonic() + 60
    while True:
        out = daemon.etmem("engine", "stats", "-n", "p1", "-e", "c1", "-t", "t1")
        assert out.returncode == 0, out.stderr
        if "done=1" in out.stdout:
            break
        assert time.monotonic() < deadline, out.stdout
        time.sleep(0.2)
    stats = dict(item.split("=") for item in out.stdout.split())
    assert stats["init"] == "0" and stats["vmas_ok"] == "1" and stats["refs"] == "0,0"
    assert int(stats["vma_bytes"]) >= 24 << 20
    assert stats["sorted"] == "1" and stats["in_vmas"] == "1"
    hot_pages = (w.hot[1] - w.hot[0]) // 4096
    cold_pages = (w.cold[1] - w.cold[0]) // 4096
    # two passes merged into one list: the hot region was used in both, the cold one at most
    # in the first (which reports accesses since the workload filled it)
    assert int(stats["hot_pages"]) == hot_pages and stats["hot_min"] == "2"
    assert int(stats["cold_pages"]) == cold_pages and int(stats["cold_max"]) <= 1
    assert int(stats["pages"]) == int(stats["pte"]) + int(stats["huge"]) >= hot_pages + cold_pages
    assert daemon.etmem("project", "stop", "-n", "p1").returncode == 0
