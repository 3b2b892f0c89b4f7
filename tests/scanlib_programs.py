"""The C programs of the scan-library tests: tests/c/scan_standalone.c linked with
-letmemd_scan through upstream's header only, and the scan_target process whose use of
its memory never changes."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from etmem.engines import legacy_abi as abi

C_DIR = Path(__file__).parent / "c"
REGION = 4 << 20   # scan_target's hot and cold regions


def build(directory: Path) -> dict[str, str]:
    """Compile both programs into directory; {name: path}."""
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler"
    (directory / "libetmemd_scan.so").symlink_to(abi.scan_library_path())   # the soname C programs link to
    out = {}
    for name, flags in (("scan_standalone", [f"-I{abi.include_dir()}", f"-L{directory}", "-letmemd_scan",
                                             f"-Wl,-rpath,{directory}"]),
                        ("scan_target", [])):
        built = subprocess.run([cc, "-Wall", "-Werror", "-O1", "-o", str(directory / name), str(C_DIR / f"{name}.c"),
                                *flags], capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        out[name] = str(directory / name)
    return out


def start_target(path: str) -> tuple[subprocess.Popen, tuple[int, int], tuple[int, int]]:
    """Start scan_target; (process, hot range, cold range) once its memory is in place."""
    proc = subprocess.Popen([path], stdout=subprocess.PIPE, text=True)
    ranges = {}
    for _ in range(2):
        kind, start, end = proc.stdout.readline().split()
        ranges[kind] = (int(start, 16), int(end, 16))
    return proc, ranges["hot"], ranges["cold"]


def pages(output: str) -> list[tuple[int, int, int]]:
    """The `page ADDR COUNT TYPE` lines of scan_standalone's output."""
    words = [line.split() for line in output.splitlines()]
    return [(int(w[1], 16), int(w[2]), int(w[3])) for w in words if w[0] == "page"]
