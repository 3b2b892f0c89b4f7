"""Reports on a task's history: golden files for the history format and each report, the PNG heat map
of a real workload, and `etmem report` against a real etmemd and a recorded file."""
from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import etmem
from etmem import report
from etmem.history import History, RoundRecord, TargetRecord, TaskHistory, dumps_jsonl, load_file, summarize_scan
from etmem.procfs import Vma
from etmem.scan import PageRefs
from etmem.workload import Workload
from etmemd_harness import Etmemd, script, write_config

DATA = Path(__file__).parent / "data"
MiB = 1 << 20
PAGE = 4096
HOT = (0x7F0000000000, 0x7F0000000000 + 16 * MiB)
COLD = (0x7F0001000000, 0x7F0001000000 + 48 * MiB)


def scan_of(hot_count: int, cold_count: int, cold_resident_pages: int | None = None):
    """A two-mapping scan: every hot page counted hot_count times, the resident cold pages cold_count times."""
    n_hot, n_cold = 16 * MiB // PAGE, 48 * MiB // PAGE
    resident = n_cold if cold_resident_pages is None else cold_resident_pages
    addr = np.concatenate([np.arange(*HOT, PAGE), np.arange(COLD[0], COLD[0] + resident * PAGE, PAGE)]).astype(np.uint64)
    count = np.r_[np.full(n_hot, hot_count), np.full(resident, cold_count)].astype(np.int32)
    vma = np.r_[np.zeros(n_hot), np.ones(resident)].astype(np.int32)
    maps = [Vma(*HOT, "rw-p", 0, "00:00", 0, ""), Vma(*COLD, "rw-p", 0, "00:00", 0, "")]
    refs = PageRefs(addr, count, np.full(len(addr), PAGE, np.uint64), vma, maps, "smaps", per_vma=True, passes=2)
    return summarize_scan(refs, regions=8)


def golden_sections() -> list[TaskHistory]:
    """Two tasks: `cache` watched in a dry run, `db` swapping its cold mapping out over three rounds."""
    t0 = 1700000000.0
    cache = History()
    for n in range(1, 5):
        scan = scan_of(2, 1 if n == 1 else 0)
        cold = 0 if n == 1 else 48 * MiB // PAGE
        cache.add(RoundRecord(n, t0 + 10 * n, 2.0, [TargetRecord(4242, "smaps", 64 * MiB // PAGE, cold, cold, 0, 0, True,
                                                                  70 * MiB, 0, scan=scan)]))
    cache.add(RoundRecord(5, t0 + 50, 0.0, skipped="free memory is 80% of total, not below sysmem_threshold=50%: nothing to do"))
    db = History()
    resident = [48 * MiB // PAGE, 0, 0]
    for n, (left, swapped) in enumerate(zip(resident, [0, 48 * MiB // PAGE, 0]), start=1):
        scan = scan_of(2, 0, left)
        db.add(RoundRecord(n, t0 + 5 * n, 3.5, [TargetRecord(5151, "smaps", (16 * MiB + left * PAGE) // PAGE,
                                                              left, left, left, 0, False,
                                                              16 * MiB + left * PAGE, 48 * MiB - left * PAGE,
                                                              scan=scan)]))
    return [TaskHistory("web", "slide", "cache", cache), TaskHistory("web", "slide", "db", db)]


def test_the_history_file_format_is_what_a_history_dumps_byte_for_byte():
    assert dumps_jsonl(golden_sections()) == (DATA / "history-v1.jsonl").read_text()
    loaded = load_file(str(DATA / "history-v1.jsonl"))
    assert dumps_jsonl(loaded) == (DATA / "history-v1.jsonl").read_text()


@pytest.mark.parametrize("name, render", [
    ("wss", lambda h: report.wss_text(h, "web/slide/cache")),
    ("heatmap", lambda h: report.heatmap_text(h, 16, title="web/slide/cache")),
    ("age", lambda h: report.age_text(h, 16, title="web/slide/cache")),
    ("rounds", lambda h: report.rounds_text(h, "web/slide/cache")),
])
def test_each_report_of_the_golden_history_matches_its_golden_file(name, render):
    cache = load_file(str(DATA / "history-v1.jsonl"))[0].history
    assert render(cache) == (DATA / f"report-{name}.txt").read_text()


def test_the_wss_percentiles_are_values_rounds_had():
    cache = golden_sections()[0].history
    assert report.wss_percentiles(cache, (0, 50, 100)) == [(0, 16 * MiB), (50, 16 * MiB), (100, 64 * MiB)]


def test_the_heat_map_puts_the_hot_mapping_in_the_hot_columns():
    hm = report.heat_map(golden_sections()[0].history, 16)
    hot, cold = hm.columns_within(*HOT), hm.columns_within(*COLD)
    assert hot.tolist() == [0, 1, 2, 3] and cold.tolist() == list(range(4, 16))
    assert (hm.heat[:, hot] == 2).all() and (hm.heat[1:, cold] == 0).all() and (hm.heat[0, cold] == 1).all()


def test_swapped_out_memory_leaves_the_heat_map_blank_and_the_age_table_empty_of_it():
    db = golden_sections()[1].history
    hm = report.heat_map(db, 16)
    cold = hm.columns_within(*COLD)
    assert np.isnan(hm.heat[1:, cold]).all() and (hm.resident[-1, cold] == 0).all()
    ages = dict(report.age_table(db, 16))
    assert ages["accessed in the last round"] == 16 * MiB and sum(ages.values()) == 16 * MiB


def test_a_history_that_never_scanned_has_no_report():
    h = History()
    h.add(RoundRecord(1, 0.0, 0.0, skipped="nothing"))
    with pytest.raises(report.ReportError, match="no round that scanned"):
        report.wss_text(h)
    with pytest.raises(report.ReportError, match="no scan of process 7"):
        report.heat_map(golden_sections()[0].history, pid=7)


def test_png_without_matplotlib_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(report.ReportError) as err:
        report.heatmap_png(golden_sections()[0].history, str(tmp_path / "h.png"))
    assert "pip install 'etmem[plots]'" in str(err.value)
    assert not (tmp_path / "h.png").exists()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_png_of_a_real_workload_is_brighter_where_its_hot_mapping_is(need_root, tmp_path):
    pytest.importorskip("matplotlib", reason="the PNG needs the plots extra: pip install 'etmem[plots]'")
    from matplotlib import image

    with Workload(total_mb=64, hot_mb=16, layout="split") as w:
        project = etmem.Project(name="p", loop=2, interval=1, sleep=1, scanner="smaps")
        task = project.add_engine("slide").add_task("t", "pid", w.pid, T=1, dry_run="yes")
        for _ in range(3):
            task.run_round()
            time.sleep(1)   # the project's sleep, as etmemd waits between rounds: else a round's
                            # first pass sees only the milliseconds since the previous one ended
        hot, cold = w.hot, w.cold
    path = tmp_path / "heat.png"
    pic = report.heatmap_png(task.stats.history, str(path), columns=64)
    assert png_size(path) == pic.size
    pixels = image.imread(str(path))[..., :3].mean(axis=2)     # brightness 0..1; inferno: brighter is hotter
    left, top, right, bottom = pic.box
    rows_per_column = (bottom - top) / 64

    def band(columns):     # the middle pixel row of each column (address up), over the last rounds' time
        ys = [int(bottom - (c + 0.5) * rows_per_column) for c in columns]
        return pixels[ys, (left + right) // 2: right - 2].mean()

    hot_cols, cold_cols = pic.heat.columns_within(*hot), pic.heat.columns_within(*cold)
    assert len(hot_cols) >= 4 and len(cold_cols) >= 4
    later = pic.heat.heat[1:]       # the first round also counts the cold mapping's initial writes
    hot_heat, cold_heat = np.nanmean(later[:, hot_cols]), np.nanmean(later[:, cold_cols])
    assert hot_heat > 0 and cold_heat == 0, (hot_heat, cold_heat)
    # inferno: 0.88 at the hottest cell, 0.43 at half of it, 0.004 at 0
    assert band(hot_cols) > band(cold_cols) + 0.5, (band(hot_cols), band(cold_cols), later[:, hot_cols])


def test_etmem_report_reads_a_running_etmemd_and_the_file_it_saved(need_root, tmp_path):
    with Workload(total_mb=32, hot_mb=8, layout="split") as w:
        daemon = Etmemd(tmp_path).start()
        try:
            conf = write_config(tmp_path / "dry.conf", f"""
                [project]
                name=obs
                loop=1
                interval=1
                sleep=1
                scanner=smaps

                [engine]
                name=slide
                project=obs

                [task]
                project=obs
                engine=slide
                name=w
                type=pid
                value={w.pid}
                T=1
                dry_run=yes
                """)
            assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
            assert daemon.etmem("project", "start", "-n", "obs").returncode == 0
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                out = daemon.etmem("report", "wss", "-n", "obs", "-t", "w", "--save", str(tmp_path / "h.jsonl"))
                if out.returncode == 0 and out.stdout.count("\n") >= 14:    # three rounds and the percentiles
                    break
                time.sleep(0.5)
            assert out.returncode == 0, out.stdout + out.stderr
            assert out.stdout.startswith("# working-set size of obs/slide/w: ")
            raw = daemon.etmem("engine", "history", "-n", "obs", "-e", "slide", "-t", "w")
            assert raw.returncode == 0 and raw.stdout.startswith('{"etmem_history": 1, "project": "obs"')
            rounds = daemon.etmem("report", "rounds", "-n", "obs", "-t", "w")
            assert rounds.returncode == 0 and "(dry run)" in rounds.stdout and "would swap out" in rounds.stdout
            missing = daemon.etmem("report", "wss", "-n", "obs", "-t", "nope")
            assert missing.returncode == 1 and missing.stderr == "etmem report: project obs has no task nope\n"
        finally:
            daemon.stop()
    again = subprocess.run([script("etmem"), "report", "wss", "--input", str(tmp_path / "h.jsonl")],
                           capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == out.stdout


@pytest.mark.parametrize("content, message", [
    (None, "etmem report: cannot read history file {path}: No such file or directory\n"),
    ('{"etmem_history": 1, "project": "p", "engine": "e", "task": "t"}\n[1]\n',
     "etmem report: {path}:2: expected a JSON object, got list\n"),
])
def test_etmem_report_refuses_a_bad_file_without_a_traceback(tmp_path, content, message):
    path = tmp_path / "h.jsonl"
    if content is not None:
        path.write_text(content)
    out = subprocess.run([script("etmem"), "report", "heatmap", "--input", str(path)], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr == message.format(path=path) and out.stdout == ""


def test_etmem_report_asks_which_task_of_a_file_with_several():
    out = subprocess.run([script("etmem"), "report", "wss", "--input", str(DATA / "history-v1.jsonl")],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "holds the history of several tasks (web/slide/cache, web/slide/db): choose one with -n, -e and -t" in out.stderr
    one = subprocess.run([script("etmem"), "report", "wss", "--input", str(DATA / "history-v1.jsonl"), "-t", "cache"],
                         capture_output=True, text=True)
    assert one.returncode == 0 and one.stdout == (DATA / "report-wss.txt").read_text()
