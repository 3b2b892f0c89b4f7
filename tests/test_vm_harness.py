"""The vm harness itself: it skips only when no guest can be had, and fails otherwise.

Each test runs an inner pytest session on a one-test project with the harness plugin,
so nothing here boots a full guest.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import vm_harness

TESTS = Path(__file__).parent


def run_inner(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_one.py").write_text(
        "import pytest\n\n@pytest.mark.vm\ndef test_in_guest():\n    assert True\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    vm: in the guest\n")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ETMEM_")}
    full_env.update(PYTHONPATH=str(TESTS), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "vm_harness", "-p", "no:cacheprovider",
                           "-rA", str(tmp_path / "test_one.py")],
                          cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=120)


def test_vm_tests_skip_with_the_reason_when_virtme_ng_is_missing(tmp_path):
    inner = run_inner(tmp_path, PATH="/nonexistent")
    assert inner.returncode == 0, inner.stdout
    assert "1 skipped" in inner.stdout
    assert "virtme-ng is not installed: `vng` is not on PATH (pip install virtme-ng)" in inner.stdout


def test_a_kernel_image_named_but_missing_fails_the_vm_tests(tmp_path):
    inner = run_inner(tmp_path, ETMEM_VM_KERNEL=str(tmp_path / "no-such-bzImage"))
    assert inner.returncode == 1, inner.stdout
    assert "1 failed" in inner.stdout
    assert "is not a file" in inner.stdout


def test_a_guest_that_cannot_boot_fails_the_vm_tests_instead_of_skipping(tmp_path):
    try:
        vm_harness.check_tools()
    except vm_harness.VmUnavailable as exc:
        pytest.skip(f"no QEMU here to fail with: {exc}")
    not_a_kernel = tmp_path / "bzImage"
    not_a_kernel.write_bytes(b"this is not a kernel image\n" * 100)
    inner = run_inner(tmp_path, ETMEM_VM_KERNEL=str(not_a_kernel), ETMEM_VM_TIMEOUT="60")
    assert inner.returncode == 1, inner.stdout
    assert "1 failed" in inner.stdout and "skipped" not in inner.stdout
    assert "vm harness: " in inner.stdout
    # a guest that never reaches its command is booted once more, verbose, and both consoles shown
    assert "booting once more with --verbose" in inner.stdout
    assert "second boot, --verbose" in inner.stdout and "--verbose" in inner.stdout.split("command: ", 1)[1]


def test_a_guest_past_its_time_limit_is_killed_and_fails_the_vm_tests(tmp_path):
    try:
        vm_harness.check_tools()
        vm_harness.find_kernel(TESTS.parent)
    except (vm_harness.VmUnavailable, vm_harness.VmBroken) as exc:
        pytest.skip(f"no guest here to time out: {exc}")
    inner = run_inner(tmp_path, ETMEM_VM_TIMEOUT="3")
    assert inner.returncode == 1, inner.stdout
    assert "1 failed" in inner.stdout
    assert "the guest did not finish within ETMEM_VM_TIMEOUT=3 s and was killed" in inner.stdout
