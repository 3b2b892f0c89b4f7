"""Sizes read one way everywhere: etmem.units, config keys of type Size, and size flags."""
from __future__ import annotations

import argparse
import subprocess

import pytest

from etmem import config, units

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize("text, size", [
    ("512M", 512 * MiB), ("512m", 512 * MiB), ("512MB", 512 * MiB), ("512MiB", 512 * MiB), ("512 MiB", 512 * MiB),
    ("1g", GiB), ("1GiB", GiB), ("1.5G", 3 * GiB // 2), ("64k", 64 << 10), ("10g", 10 * GiB), ("2T", 2 << 40),
    ("4096", 4096), ("100b", 100), (" 7 ", 7), (4096, 4096), (".5k", 512),
])
def test_sizes_parse(text, size):
    assert units.parse_size(text) == size


@pytest.mark.parametrize("text, message", [
    ("", "must be a size like 10g, 512m, 64k or a number of bytes"),
    ("lots", "must be a size like 10g, 512m, 64k or a number of bytes"),
    ("-1G", "must be a size like"), ("1X", "must be a size like"), ("1 G B", "must be a size like"),
    (-5, "must be a size like 10g, 512m, 64k or a number of bytes"),
    ("1.3k", "must be a whole number of bytes"),
])
def test_what_is_not_a_size_is_refused_saying_what_is(text, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        units.parse_size(text)


def test_a_bare_number_counts_in_the_unit_asked_for():
    assert units.parse_size("512", bare="M") == units.parse_size("512M") == 512 * MiB
    assert units.parse_size("1g", bare="M") == GiB


@pytest.mark.parametrize("size, text", [
    (0, "0 B"), (100, "100 B"), (64 << 10, "64 KiB"), (545 * MiB, "545 MiB"), (3 * GiB // 2, "1.5 GiB"),
    (GiB, "1 GiB"), (10 * GiB, "10 GiB"),
])
def test_sizes_are_shown_in_binary_units_and_read_back(size, text):
    assert units.format_size(size) == text
    assert units.parse_size(text) == size


def test_config_size_keys_use_the_same_parser():
    size = config.Size()
    assert size("1.5G") == units.parse_size("1.5G") and size("1GiB") == GiB and size(4096) == 4096
    with pytest.raises(ValueError, match="must be a size like 10g, 512m, 64k or a number of bytes"):
        size("ten")


def test_a_size_flag_takes_units_and_reads_a_bare_number_in_its_own_unit():
    parser = argparse.ArgumentParser()
    parser.add_argument("--total", "--total-mb", dest="total_mb", type=units.size_arg("M", MiB, "MiB"))
    assert parser.parse_args(["--total", "1.5G"]).total_mb == 1536
    assert parser.parse_args(["--total-mb", "512"]).total_mb == 512
    assert parser.parse_args(["--total", "512M"]).total_mb == 512

def test_a_size_flag_says_which_value_is_wrong_and_why(capsys):
    parser = argparse.ArgumentParser(prog="etmem demo")
    parser.add_argument("--total", type=units.size_arg("M", MiB, "MiB"))
    for value, why in (("100k", "'100k': must be a whole number of MiB"),
                       ("big", "'big': must be a size like 10g, 512m, 64k or a number of bytes")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--total", value])
        assert capsys.readouterr().err.splitlines()[-1] == f"etmem demo: error: argument --total: {why}"


def test_config_keys_shows_size_defaults_in_binary_units():
    out = subprocess.run(["etmem", "config", "keys", "psi"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.strip().startswith("reclaim_max_bytes"))
    assert line.endswith("(default 1 GiB)"), line


def test_demo_sizes_take_units_and_bare_mib_alike():
    def demo(*args):
        return subprocess.run(["etmem", "demo", *args], capture_output=True, text=True, timeout=60)
    # refused before anything starts; the numbers say how the sizes were read
    assert demo("--total", "1.5G", "--hot", "2g").stderr.strip() == \
        "etmem demo: --hot-mb must be above 0 and below --total-mb (1536)"
    assert demo("--total-mb", "512", "--hot", "1g").stderr.strip() == \
        "etmem demo: --hot-mb must be above 0 and below --total-mb (512)"
    assert demo("--total", "100k").stderr.splitlines()[-1] == \
        "etmem demo: error: argument --total/--total-mb: '100k': must be a whole number of MiB"
