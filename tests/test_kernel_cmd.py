"""`etmem kernel`: the running kernel's offer, as the library's own probes see it."""
import json
import os
import subprocess

from etmem import kernel, procfs, zram
from etmem.scan import SOURCES, available_sources, choose_source


def run(*args):
    out = subprocess.run(["etmem", "kernel", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out.stdout


def test_json_reports_what_the_probes_say():
    r = json.loads(run("-o", "json"))
    # facts read here independently of etmem's probes
    assert r["kernel"] == os.uname().release and r["root"] == (os.geteuid() == 0)
    with open("/proc/swaps") as f:
        assert [d["name"] for d in r["swap_devices"]] == [line.split()[0] for line in f.read().splitlines()[1:]]
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    assert (r["swap_out"]["process_madvise"] is None) == ((major, minor) >= (5, 10))
    # and the same answers as the library's probes
    assert r["scanner_sources"] == available_sources()
    assert r["scanner_auto"] == choose_source("auto")
    assert (r["swap_out"]["process_madvise"] is None) == kernel.has_process_madvise()
    assert (r["swap_out"]["swap_pages"] is None) == kernel.has_swap_pages()
    assert [d["name"] for d in r["swap_devices"]] == [d["name"] for d in procfs.swap_devices()]
    assert r["numa_nodes"] == procfs.memory_nodes()
    assert (r["migration"] is None) == (len(procfs.memory_nodes()) > 1)
    assert r["zram"] == zram.missing_reason()


def test_text_names_every_source_and_the_reason_each_missing_one_needs():
    text = run()
    sources = available_sources()
    assert f"auto picks {choose_source('auto')}" in text
    for name in SOURCES:
        line = next(l for l in text.splitlines() if l.strip().startswith(name + " "))
        assert ("yes" in line.split()[1]) == (sources[name] is None)
        if sources[name]:
            assert sources[name] in line
