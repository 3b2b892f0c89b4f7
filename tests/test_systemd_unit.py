"""`etmem systemd-unit`: the unit it writes is one systemd accepts as written, and runs this
installation's etmemd in the foreground."""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import pytest

import etmem
from etmem.cli.systemd_cmd import systemd_quote


def systemd_unit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["etmem", "systemd-unit", *args], capture_output=True, text=True, timeout=60)


def exec_start(unit: str) -> str:
    return next(line for line in unit.splitlines() if line.startswith("ExecStart=")).removeprefix("ExecStart=")


def test_the_unit_passes_systemd_analyze_verify_as_written(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd; .ci/run does)")
    out = systemd_unit()
    assert out.returncode == 0, out.stderr
    path = tmp_path / "etmemd.service"
    path.write_text(out.stdout)
    verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    about_ours = [line for line in (verify.stdout + verify.stderr).splitlines() if "etmemd" in line]
    assert verify.returncode == 0 and not about_ours, verify.stdout + verify.stderr


def test_the_unit_runs_the_etmemd_beside_this_etmem_in_the_foreground():
    unit = systemd_unit().stdout
    command = exec_start(unit).split()
    etmemd = command[0]
    assert etmemd == os.path.join(sysconfig.get_path("scripts"), "etmemd")  # this environment's
    assert subprocess.run([etmemd, "--version"], capture_output=True, text=True).stdout.strip() == \
        f"etmemd {etmem.__version__}"
    assert command[1:] == ["-l", "1", "-s", "etmemd_socket"]
    assert "Type=simple" in unit.splitlines() and "PIDFile" not in unit
    assert "Documentation=" not in unit  # upstream's pages do not describe this etmemd


def test_socket_level_and_further_options_go_into_exec_start():
    out = systemd_unit("-s", "tiering", "-l", "2", "--etmemd", "/opt/etmem/bin/etmemd",
                       "--", "--allow-group", "etmem", "--config-perms", "relaxed")
    assert out.returncode == 0, out.stderr
    assert exec_start(out.stdout) == ("/opt/etmem/bin/etmemd -l 2 -s tiering "
                                      "--allow-group etmem --config-perms relaxed")


def test_words_systemd_would_split_or_expand_are_quoted():
    assert systemd_quote("etmemd_socket") == "etmemd_socket"
    assert systemd_quote("my socket") == '"my socket"'
    assert systemd_quote("100%$HOME") == '"100%%$$HOME"'
    assert systemd_quote('say "hi"\\') == '"say \\"hi\\"\\\\"'


@pytest.mark.parametrize("args, message", [
    (["-s", ""], "etmem: socket name must not be empty"),
    (["--", "-m"], "etmem: the unit runs etmemd in the foreground (Type=simple): leave out -m"),
])
def test_bad_arguments_get_one_clear_line(args, message):
    out = systemd_unit(*args)
    assert (out.returncode, out.stdout, out.stderr.strip()) == (1, "", message)
