"""Every example in examples/ and every Python block in docs/ runs."""
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_slide_in_code_example_runs(need_root):
    out = subprocess.run([sys.executable, "examples/python/slide_in_code.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "rounds: 3" in out.stdout and "workload data intact: True" in out.stdout
    swapped = int(re.search(r"pages swapped out: (\d+)", out.stdout).group(1))
    source = re.search(r"source: (\w+)", out.stdout).group(1)
    recall, precision = re.search(r"cold pages swapped: (\d+)%, swapped pages that were cold: (\d+)%", out.stdout).groups()
    assert int(precision) >= 95, out.stdout     # what went out was cold
    if source == "refault":                     # samples its way through: a part in three rounds
        assert swapped > 0, out.stdout
    else:                                       # access bits or per-VMA verdicts: the whole cold set
        assert swapped * 4096 >= 100 << 20 and int(recall) >= 90, out.stdout


def test_config_in_code_example_runs():
    out = subprocess.run([sys.executable, "examples/python/config_in_code.py", "examples/slide.conf"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert "project web: loop=3 interval=10s sleep=1s" in out.stdout
    assert "task nginx_workers: name=nginx" in out.stdout
