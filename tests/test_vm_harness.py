"""The vm harness itself: it skips only when no guest can be had, and fails otherwise.

Each test runs an inner pytest session on a one-test project with the harness plugin,
so nothing here boots a full guest.
"""
from __future__ import annotations

import os
import re
import shutil
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
    # a kernel image is there (the harness looks for one first), vng is not
    image = tmp_path / "bzImage"
    image.write_bytes(b"an image the harness never gets to boot\n")
    inner = run_inner(tmp_path, PATH="/nonexistent", ETMEM_VM_KERNEL=str(image))
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
        kernel = vm_harness.find_kernel(TESTS.parent)
    except (vm_harness.VmUnavailable, vm_harness.VmBroken) as exc:
        pytest.skip(f"no guest here to time out: {exc}")
    # the inner project lives in tmp_path, beside no test kernel of its own: name this checkout's
    inner = run_inner(tmp_path, ETMEM_VM_TIMEOUT="3", ETMEM_VM_KERNEL=str(kernel))
    assert inner.returncode == 1, inner.stdout
    assert "1 failed" in inner.stdout
    assert "the guest did not finish within ETMEM_VM_TIMEOUT=3 s and was killed" in inner.stdout


@pytest.fixture
def kernel_places(tmp_path, monkeypatch):
    """A repository beside an empty shared/testvm, an empty cache, no installed kernel."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "shared" / "testvm").mkdir(parents=True)
    monkeypatch.delenv("ETMEM_VM_KERNEL", raising=False)
    monkeypatch.setenv("ETMEM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(vm_harness, "INSTALLED_KERNELS", str(tmp_path / "boot" / "vmlinuz-6.12*-amd64"))
    return repo


def put(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"kernel")
    return path


def test_the_harness_names_the_scripts_that_get_a_kernel_when_it_finds_none(kernel_places, tmp_path):
    with pytest.raises(vm_harness.VmUnavailable) as exc:
        vm_harness.find_kernel(kernel_places)
    assert "testvm/fetch-debian-kernel" in str(exc.value) and "testvm/build-kernel" in str(exc.value)
    assert str(tmp_path / "cache" / "kernels") in str(exc.value)
    for script in ("fetch-debian-kernel", "build-kernel"):
        assert os.access(TESTS.parent / "testvm" / script, os.X_OK), script


def test_kernel_lookup_order_prebuilt_then_built_then_debians_unpacked_then_installed(kernel_places, tmp_path,
                                                                                       monkeypatch):
    kernels = tmp_path / "cache" / "kernels"
    installed = put(tmp_path / "boot" / "vmlinuz-6.12.9-amd64")
    assert vm_harness.find_kernel(kernel_places) == installed
    put(kernels / "debian-6.12.9+deb12-amd64" / "boot" / "vmlinuz-6.12.9+deb12-amd64")
    newer = put(kernels / "debian-6.12.10+deb12-amd64" / "boot" / "vmlinuz-6.12.10+deb12-amd64")
    assert vm_harness.find_kernel(kernel_places) == newer  # 10 > 9, not as text
    built = put(kernels / "bzImage-6.12.117-etmem")
    assert vm_harness.find_kernel(kernel_places) == built
    prebuilt = put(tmp_path / "shared" / "testvm" / vm_harness.TEST_KERNEL)
    assert vm_harness.find_kernel(kernel_places) == prebuilt
    mine = put(tmp_path / "my-bzImage")
    monkeypatch.setenv("ETMEM_VM_KERNEL", str(mine))
    assert vm_harness.find_kernel(kernel_places) == mine


def test_the_cache_is_under_xdg_cache_home_unless_etmem_cache_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("ETMEM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert vm_harness.kernel_cache() == tmp_path / "etmem" / "kernels"
    monkeypatch.setenv("ETMEM_CACHE", str(tmp_path / "c"))
    assert vm_harness.kernel_cache() == tmp_path / "c" / "kernels"


def test_fetch_debian_kernel_leaves_the_image_where_the_harness_looks(kernel_places, tmp_path):
    # An image already unpacked is reused (no download here): the path the script prints is
    # the harness's pick, so the two agree on the cache.
    meta = subprocess.run(["apt-cache", "depends", "linux-image-6.12-amd64"], capture_output=True, text=True) \
        if shutil.which("apt-cache") else None
    package = re.search(r"Depends: (linux-image-\S+)", meta.stdout) if meta else None
    if package is None:
        pytest.skip("apt knows no linux-image-6.12-amd64 here (not Debian 12, or no apt-get update)")
    release = package.group(1).removeprefix("linux-image-")
    image = put(tmp_path / "cache" / "kernels" / f"debian-{release}" / "boot" / f"vmlinuz-{release}")
    (image.parent.parent / ".unpacked").touch()
    out = subprocess.run([str(TESTS.parent / "testvm" / "fetch-debian-kernel")], capture_output=True, text=True,
                         env={**os.environ, "ETMEM_CACHE": str(tmp_path / "cache")}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == image == vm_harness.find_kernel(kernel_places)
