"""`etmem demo`, the README's main job: run for real, and refused clearly without root."""
import re
import subprocess
import sys


def test_demo_moves_the_cold_set_out_and_keeps_the_hot_set(need_root):
    out = subprocess.run(["etmem", "demo", "--total-mb", "160", "--hot-mb", "32", "--rounds", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert len(re.findall(r"^  round \d/3: scanned", text, re.M)) == 3
    cold = re.search(r"^cold set swapped\s+(\d+)%\s+(\d+)%$", text, re.M)
    hot = re.search(r"^hot set resident\s+(\d+)%\s+(\d+)%$", text, re.M)
    assert cold and int(cold.group(1)) == 0 and int(cold.group(2)) >= 90, text
    assert hot and int(hot.group(2)) == 100, text
    assert "every byte checked, all intact" in text
    assert "Traceback" not in out.stderr


def test_demo_without_root_says_what_is_missing(need_root, tmp_path):
    # Import first: the interpreter's files may not be readable by nobody.
    code = ("import os, sys, etmem.cli, etmem.cli.demo; os.setgid(65534); os.setuid(65534); "
            "sys.exit(etmem.cli.main(['demo']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "etmem demo needs root" in out.stderr and "sudo etmem demo" in out.stderr and "Traceback" not in out.stderr


def test_demo_help_lists_its_knobs():
    out = subprocess.run(["etmem", "demo", "--help"], capture_output=True, text=True, check=True).stdout
    for knob in ("--total-mb", "--hot-mb", "--rounds", "--scanner", "--zram-mb"):
        assert knob in out
