"""A newcomer's path, on this machine as on a stock Debian or Ubuntu: the README's first
line as written, and the sdist and wheel, built and installed into venvs of the system's own
Python (whose site-packages PEP 668 closes to pip).

Each test works on a copy of the project in a temporary directory, so the checkout gets no
build/, .venv or egg-info. The README's second line, `sudo .ci/run`, is what CI runs.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import docblocks
import etmem

ROOT = docblocks.ROOT
# The interpreter a newcomer has: the distribution's, else (no /usr/bin/python3) ours.
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys._base_executable
NOT_PROJECT = shutil.ignore_patterns(".git", "build", "dist", ".venv", "venv", "*.egg-info", "__pycache__",
                                     "*.so", "_scan.c", ".hypothesis", ".pytest_cache", ".benchmarks")
BUILD_TIMEOUT = 900  # a build from scratch: pip fetches setuptools, Cython and numpy, then compiles


def project_copy(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=NOT_PROJECT)
    return dest


def run(cmd, cwd=None, timeout=BUILD_TIMEOUT, shell=False) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, shell=shell,
                         executable="/bin/bash" if shell else None)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def make_venv(path: Path) -> Path:
    """A venv of the system interpreter; skips when that interpreter cannot make one."""
    made = subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"{SYSTEM_PYTHON} cannot make a venv (Debian, Ubuntu: apt-get install python3-venv): "
                    f"{made.stderr.strip().splitlines()[-1] if made.stderr.strip() else made.returncode}")
    return path / "bin"


def readme_lines() -> list[str]:
    """The README's first two lines, the commands without their comments."""
    (block,) = docblocks.runnable("README.md", "tests/test_newcomer.py")
    assert block.line == 3, "the README opens with this block"
    return [re.sub(r"\s+#.*$", "", line) for line in block.text.splitlines()]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict:
    """The sdist, and the wheel built from that sdist, by `python -m build` in a system-Python venv."""
    work = tmp_path_factory.mktemp("dists")
    bin_dir = make_venv(work / "venv")
    run([bin_dir / "pip", "install", "--quiet", "--disable-pip-version-check", "build"], timeout=300)
    source = project_copy(work / "etmem")
    built = run([bin_dir / "python", "-m", "build", "--outdir", str(work / "dist"), str(source)])
    (sdist,) = (work / "dist").glob("etmem-*.tar.gz")
    (wheel,) = (work / "dist").glob("etmem-*.whl")
    return {"sdist": sdist, "wheel": wheel, "log": built.stdout + built.stderr, "work": work}


def test_the_sdist_carries_the_license_the_readmes_links_and_the_whole_test_suite(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\(((?:docs|examples)/[^)#]+)\)", readme))
    assert linked, "the README links to docs/"
    wanted = linked | {"LICENSE", "README.md", ".ci/run", "tests/conftest.py", "tests/vm_harness.py",
                       "tests/docblocks.py", "tests/data/upstream-sample.conf", "examples/slide.conf",
                       "testvm/config-6.12.117-etmem", "testvm/build-kernel", "testvm/fetch-debian-kernel"}
    assert wanted <= names, sorted(wanted - names)
    tests_here = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")}
    assert tests_here <= names, sorted(tests_here - names)
    assert not [n for n in names if n.endswith((".so", ".pyc")) or "__pycache__" in n or "/build/" in n]


def test_the_wheel_has_py_typed_the_license_and_both_compiled_libraries(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        metadata = whl.read(f"etmem-{etmem.__version__}.dist-info/METADATA").decode()
    assert {"etmem/py.typed", f"etmem-{etmem.__version__}.dist-info/licenses/LICENSE"} <= names
    assert any(re.fullmatch(r"etmem/_scan\.cpython-.*\.so", n) for n in names)
    assert any(re.fullmatch(r"etmem/libetmemd_scan\.cpython-.*\.so", n) for n in names)
    assert "etmem/_scan.c" not in names  # generated at build time: the sdist has it, the wheel need not
    assert "License-Expression: MIT" in metadata.splitlines()


def test_the_build_gives_no_setuptools_deprecation_warning(dists):
    # the old `license = {text = ...}` table drew a SetuptoolsDeprecationWarning from setuptools >= 77
    assert "SetuptoolsDeprecationWarning" not in dists["log"], dists["log"][-3000:]


def test_the_wheel_installs_into_a_system_python_venv_and_its_commands_run(dists):
    bin_dir = make_venv(dists["work"] / "user-venv")
    run([bin_dir / "pip", "install", "--quiet", "--disable-pip-version-check", str(dists["wheel"])], timeout=300)
    assert run([bin_dir / "etmem", "--version"]).stdout.strip() == f"etmem {etmem.__version__}"
    assert run([bin_dir / "etmemd", "--version"]).stdout.strip() == f"etmemd {etmem.__version__}"
    check = run([bin_dir / "etmem", "config", "check", str(ROOT / "examples" / "slide.conf")])
    assert check.stdout.startswith(f"{ROOT / 'examples' / 'slide.conf'}: ok: ")
    typed = run([bin_dir / "python", "-c", "import etmem, pathlib; print(pathlib.Path(etmem.__file__).parent)"])
    assert (Path(typed.stdout.strip()) / "py.typed").is_file()


def test_the_readmes_install_line_works_as_written(tmp_path):
    install, _, demo = readme_lines()[0].partition(" && sudo ")
    assert demo == ".venv/bin/etmem demo"
    copy = project_copy(tmp_path / "etmem")
    run(install, cwd=copy, shell=True)
    assert run([copy / ".venv" / "bin" / "etmem", "--version"]).stdout.strip() == f"etmem {etmem.__version__}"


def test_the_readmes_second_line_is_what_ci_runs_and_ci_runs_the_test_command_of_the_docs():
    assert readme_lines()[1] == "sudo .ci/run"
    assert (ROOT / ".ci" / "run").read_text().splitlines()[-1] == "python3 -m pytest"
    testing = docblocks.blocks(ROOT / "docs" / "testing.md")[0].text
    assert re.search(r"^sudo \.ci/run .*then python3 -m pytest$", testing, re.M), testing


@pytest.mark.slow
def test_the_readmes_first_line_installs_and_runs_the_demo(need_root, tmp_path):
    # The whole line, sudo included: sudo's secure_path does not hold the venv, the path does.
    if shutil.which("sudo") is None:
        pytest.skip("sudo is not installed (apt-get install sudo; .ci/run does)")
    copy = project_copy(tmp_path / "etmem")
    out = run(readme_lines()[0], cwd=copy, shell=True, timeout=BUILD_TIMEOUT + 300)
    assert "every byte checked, all intact" in out.stdout, out.stdout[-2000:]


def test_the_demos_root_hint_names_the_etmem_that_ran_by_its_path(need_root):
    # sudo's secure_path holds no venv, so `sudo etmem demo` would not find a venv's etmem
    code = ("import os, sys, etmem.cli.demo as demo; os.setgid(65534); os.setuid(65534); "
            "sys.argv[0] = '/home/me/etmem/.venv/bin/etmem'; print(demo.missing_requirements())")
    out = run([sys.executable, "-c", code], cwd="/")
    assert out.stdout.strip().endswith("Run: sudo /home/me/etmem/.venv/bin/etmem demo")
