"""`etmem demo`, the README's main job: run for real, and refused clearly without root."""
import os
import re
import subprocess
import sys

import pytest


def test_demo_moves_the_scattered_cold_pages_out_and_keeps_the_hot_set(need_root):
    out = subprocess.run(["etmem", "demo", "--total-mb", "160", "--hot-mb", "32", "--seconds", "150"],
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "scattered through one mapping" in text
    assert len(re.findall(r"^  round \d+/\?: ", text, re.M)) >= 2
    assert re.search(r"^  settled: round \d+ swapped out less than", text, re.M), text
    cold = re.search(r"^cold pages swapped\s+(\d+)%\s+(\d+)%$", text, re.M)
    precision = re.search(r"^swapped pages cold\s+-\s+(\d+)%$", text, re.M)
    hot = re.search(r"^hot set resident\s+(\d+)%\s+(\d+)%$", text, re.M)
    assert cold and int(cold.group(1)) == 0 and int(cold.group(2)) >= 90, text
    assert precision and int(precision.group(1)) >= 95, text
    assert hot and int(hot.group(2)) >= 99, text
    assert re.search(r"^workload ops/s\s+[\d,]+\s+[\d,]+ \(\d+\.\d\dx\)$", text, re.M), text
    assert "every byte checked, all intact" in text
    assert "Traceback" not in out.stderr


def test_demo_with_a_fixed_number_of_rounds_on_the_split_layout(need_root):
    out = subprocess.run(["etmem", "demo", "--total-mb", "96", "--hot-mb", "16", "--rounds", "2", "--layout", "split"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(re.findall(r"^  round \d/2: ", out.stdout, re.M)) == 2 and "in a mapping of its own" in out.stdout
    assert "every byte checked, all intact" in out.stdout


def test_demo_dry_run_says_what_it_would_swap_and_swaps_nothing(need_root):
    out = subprocess.run(["etmem", "demo", "--dry-run", "--total", "64M", "--hot", "16M", "--layout", "split"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "dry run: nothing is swapped out, so no swap device is made" in text and "swap: " not in text
    would = [int(n) for n in re.findall(r"^  round \d+/\?: .*would swap out (\d+) MiB; .*, swap 0 MiB,", text, re.M)]
    assert len(would) >= 3 and 47 <= would[-1] <= 50, text     # the 48 MiB cold mapping
    assert re.search(r"^  steady: rounds \d+ and \d+ would swap out the same", text, re.M), text
    assert re.search(r"^swapped out\s+0 MiB\s+0 MiB$", text, re.M), text
    assert "the workload's cold set is 48 MiB; swapped out: 0 MiB before, 0 MiB after" in text
    assert "every byte checked, all intact" in text


def test_demo_dry_run_with_the_refault_source_is_refused_clearly(need_root):
    out = subprocess.run(["etmem", "demo", "--dry-run", "--scanner", "refault", "--total", "32M", "--hot", "8M"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "a dry run cannot use scanner=refault" in out.stderr, out.stdout + out.stderr
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
    for knob in ("--total-mb", "--hot-mb", "--layout", "--rounds", "--seconds", "--refault-budget", "--scanner", "--zram-mb",
                 "--dry-run"):
        assert knob in out


@pytest.mark.parametrize("args, says", [
    (["--total-mb", "0"], "--total-mb must be at least 1"),
    (["--total", "-5"], "argument --total/--total-mb: '-5': must be a size like 10g"),
    (["--hot-mb", "600"], "--hot-mb must be above 0 and below --total-mb (512)"),
    (["--rounds", "-1"], "--rounds must be 0 (until settled) or more"),
    (["--seconds", "0"], "--seconds must be at least 1"),
    (["--refault-budget", "0"], "[project] refault_budget=0"),
    (["--zram-mb", "0"], "--zram-mb must be at least 1"),
    (["--total-mb", str(1 << 40), "--hot-mb", "8"], "does not fit"),
    (["--loop", "200"], "[project] loop=200: must be an integer from 1 to 120"),
    (["--sleep", "0"], "[project] sleep=0: must be an integer from 1 to 1200"),
])
def test_bad_knobs_get_one_clear_line_and_leave_nothing_behind(need_root, args, says):
    zram_before = sorted(os.listdir("/sys/block"))
    out = subprocess.run(["etmem", "demo", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode in (1, 2), out.stdout + out.stderr
    assert says in out.stderr and "Traceback" not in out.stderr and "internal error" not in out.stderr, out.stderr
    assert sorted(os.listdir("/sys/block")) == zram_before, "a zram device was left behind"
