"""Config text that lies about itself: control characters in names, line breaks only Python
sees, digits of other scripts, a byte-order mark. Lines are numbered as an editor shows them,
numbers are ASCII, names print as what they are, and nothing raw reaches the terminal."""
from __future__ import annotations

import subprocess

import pytest

import etmem
from etmem import loader
from etmem.errors import ConfigError
from etmemd_harness import script

PROJECT = "[project]\nname=p\nloop=1\ninterval=1\nsleep=1\n"
SLIDE = PROJECT + "[engine]\nname=slide\nproject=p\n[task]\nproject=p\nengine=slide\nname=t\ntype=pid\nvalue=1\nT=1\n"


def errors_of(text: str) -> list[ConfigError]:
    with pytest.raises(ConfigError) as info:
        loader.load_text(text, "c.conf")
    return getattr(info.value, "errors", [info.value])


@pytest.mark.parametrize("char", ["\x1b", "\x07", "\x7f", "\x9b", "\u200e", "\u202e"])
def test_a_name_with_a_control_or_format_character_is_refused_and_shown_escaped(char, tmp_path):
    path = tmp_path / "c.conf"
    path.write_text(PROJECT.replace("name=p", f"name=p{char}x"), encoding="utf-8")
    out = subprocess.run([script("etmem"), "config", "check", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert char not in out.stdout + out.stderr
    escaped = repr(char)[1:-1]
    assert f"{path}:2: " in out.stderr and escaped in out.stderr, out.stderr
    with pytest.raises(ConfigError, match="control"):
        etmem.Project(name=f"p{char}x", loop=1, interval=1, sleep=1)


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_only_newline_ends_a_line_so_line_numbers_stay_inside_the_file(char):
    text = PROJECT.replace("loop=1\n", f"loop=1{char}interval=2\n")
    lines = text.count("\n")
    errors = errors_of(text)
    assert all(e.line is not None and 1 <= e.line <= lines for e in errors), [str(e) for e in errors]
    assert errors[0].line == 3, [str(e) for e in errors]
    assert all(char not in str(e) for e in errors)


def test_a_carriage_return_ending_a_line_is_allowed():
    cfg = loader.load_text(SLIDE.replace("\n", "\r\n"), "c.conf")
    assert cfg.projects[0].loop == 1 and cfg.tasks[0].name == "t"


@pytest.mark.parametrize("key,value", [("loop", "\u0663"), ("interval", "\uff11"), ("sleep", "\u09e7"),
                                       ("refault_budget", "\u0665"), ("sysmem_threshold", "5\u0660")])
def test_only_ascii_digits_make_a_number(key, value):
    text = PROJECT.replace(f"{key}=1\n", "") + f"{key}={value}\n"
    errors = errors_of(text)
    assert [e.key for e in errors] == [key]
    assert "written with the digits 0-9 (this value has U+" in str(errors[0]), str(errors[0])


def test_sizes_pids_node_pairs_and_decimals_take_ascii_digits_only():
    assert [e.key for e in errors_of(SLIDE + "swap_threshold=\u0661g\n")] == ["swap_threshold"]
    assert [e.key for e in errors_of(SLIDE.replace("value=1", "value=\u0663"))] == ["value"]
    cslide = PROJECT + ("[engine]\nname=cslide\nproject=p\nnode_pair=\u0660,\u0661\nhot_threshold=1\n"
                        "node_mig_quota=1\nnode_hot_reserve=1\n")
    assert "node_pair" in [e.key for e in errors_of(cslide)]
    psi = ("[project]\nname=p\nscan_type=psi\ninterval=1\n[engine]\nname=psi\nproject=p\n"
           "[task]\nproject=p\nengine=psi\nname=t\ntype=pid\nvalue=1\npressure=\u0661.5\n")
    assert "pressure" in [e.key for e in errors_of(psi)]


def test_a_byte_order_mark_at_the_start_is_read_as_nothing(tmp_path):
    path = tmp_path / "bom.conf"
    path.write_bytes(b"\xef\xbb\xbf" + SLIDE.encode())
    cfg = loader.load_config(str(path))
    assert cfg.projects[0].name == "p" and cfg.tasks[0].name == "t"
    # Anywhere else it is a character like any other, shown escaped.
    errors = errors_of(PROJECT + "\ufeff[engine]\nname=slide\nproject=p\n")
    assert errors[0].line == 6 and "\ufeff" not in str(errors[0]) and "\\ufeff" in str(errors[0])
