"""The installed package: version, console scripts, compiled extension."""
import subprocess

import pytest

import etmem


def test_version_is_reported_by_the_etmem_command():
    out = subprocess.run(["etmem", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"etmem {etmem.__version__}"


def test_compiled_scanner_extension_is_importable():
    import etmem._scan as scan

    assert scan.__file__.endswith(".so")


def test_zram_and_workload_fixtures_work(need_root, zram_swap, workload_factory):
    from conftest import pagemap_bits

    w = workload_factory(total_mb=32, hot_mb=4)
    present, swapped = pagemap_bits(w.pid, *w.cold)
    assert present.all() and not swapped.any()
    assert w.verify()


def test_every_public_name_imports_on_first_use_and_nothing_else_does():
    import etmem
    for name in etmem.__all__:
        assert getattr(etmem, name) is not None, name
    assert set(etmem.__all__) == set(etmem._HOME) | {"__version__"}
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        etmem.Nope


def test_version_is_reported_by_the_etmemd_command():
    out = subprocess.run(["etmemd", "--version"], capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip(), out.stderr) == (0, f"etmemd {etmem.__version__}", "")
