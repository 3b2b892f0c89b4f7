"""A task's history: scan summaries from page sets built here, rounds kept by merge_round, the JSON-lines format."""
from __future__ import annotations

import io

import numpy as np
import pytest

import etmem
from etmem.history import (HistoryFormatError, History, RoundRecord, TaskHistory, dump_jsonl, load_jsonl,
                           summarize_scan)
from etmem.procfs import Vma
from etmem.scan import PageRefs
from etmem.stats import RoundResult, TargetResult, TaskStats, merge_round

PAGE = 4096
MiB = 1 << 20


def refs_of(vmas, counts):
    """PageRefs over whole VMAs, one 4 KiB entry per page, with the given per-page counts."""
    addr = np.concatenate([np.arange(a, b, PAGE, dtype=np.uint64) for a, b in vmas])
    vma = np.concatenate([np.full((b - a) // PAGE, i, np.int32) for i, (a, b) in enumerate(vmas)])
    maps = [Vma(a, b, "rw-p", 0, "00:00", 0, "") for a, b in vmas]
    return PageRefs(addr, np.asarray(counts, np.int32), np.full(len(addr), PAGE, np.uint64), vma, maps, "test",
                    passes=2)


def test_a_summary_counts_bytes_per_access_count_and_per_region_within_each_vma():
    cold = (0x10000000, 0x10000000 + 48 * MiB)
    hot = (0x7F0000000000, 0x7F0000000000 + 16 * MiB)
    n_cold, n_hot = 48 * MiB // PAGE, 16 * MiB // PAGE
    counts = np.concatenate([np.zeros(n_cold, int), np.full(n_hot, 2)])
    s = summarize_scan(refs_of([cold, hot], counts), regions=64)
    assert s.by_count.tolist() == [48 * MiB, 0, 16 * MiB]
    assert s.working_set_bytes == 16 * MiB and s.resident_bytes == 64 * MiB
    # 64 MiB in 64 regions: 1 MiB each, none across the gap between the VMAs
    assert len(s.starts) == 64 and (s.ends - s.starts == MiB).all()
    in_hot = s.starts >= hot[0]
    assert in_hot.sum() == 16 and (s.accessed[in_hot] == MiB).all() and (s.accessed[~in_hot] == 0).all()
    assert (s.accesses[in_hot] == 2 * MiB // PAGE).all() and (s.resident == MiB).all()


def test_a_vma_shorter_than_a_region_is_a_region_of_its_own():
    small, big = (0x1000000, 0x1000000 + 2 * PAGE), (0x4000000, 0x4000000 + 64 * MiB)
    counts = np.r_[[1, 1], np.zeros(64 * MiB // PAGE, int)]
    s = summarize_scan(refs_of([small, big], counts), regions=64)
    assert s.starts[0] == small[0] and s.ends[0] == small[1] and s.accessed[0] == 2 * PAGE
    assert len(s.starts) == 65 and s.accessed[1:].sum() == 0


def test_merge_round_keeps_every_round_and_the_last_rounds_measured_figures():
    stats = TaskStats()
    cold = (0x10000000, 0x10000000 + 4 * MiB)
    summary = summarize_scan(refs_of([cold], np.r_[np.zeros(768, int), np.ones(256, int)]))
    merge_round(stats, RoundResult([TargetResult(7, scanned=1024, cold=768, chosen=768, dry_run=True,
                                                 resident_bytes=4 * MiB, swapped_bytes=0, scan=summary)]), 1.5)
    merge_round(stats, RoundResult(skipped="free memory is high"), 0.1)
    assert stats.pages_chosen == 768 and stats.pages_swapped == 0 and stats.round_seconds == pytest.approx(1.6)
    assert stats.working_set_bytes == MiB and stats.resident_bytes == 4 * MiB and stats.swapped_bytes == 0
    first, second = stats.history.rounds()
    assert (first.round, second.round) == (1, 2) and second.skipped == "free memory is high" and not second.targets
    assert first.targets[0].dry_run and first.targets[0].chosen == 768 and first.targets[0].scan is summary
    shown = stats.as_dict()
    assert "history" not in shown and "scan" not in shown["last_round"][0] and shown["last_round"][0]["dry_run"]


def test_the_history_keeps_only_its_last_rounds():
    h = History(maxlen=3)
    for n in range(1, 6):
        h.record(n, RoundResult([TargetResult(1)]), 0.0)
    assert [r.round for r in h.rounds()] == [3, 4, 5]


def test_json_lines_round_trip_keeps_every_figure():
    h = History()
    s = summarize_scan(refs_of([(0x10000000, 0x10000000 + MiB)], np.arange(256) % 3))
    h.add(RoundRecord(4, 1700000000.5, 2.25, [TargetRecordFactory(s)], None, None))
    buf = io.StringIO()
    dump_jsonl([TaskHistory("p", "slide", "t", h)], buf)
    (back,) = load_jsonl(buf.getvalue().splitlines())
    assert (back.project, back.engine, back.task) == ("p", "slide", "t")
    (rec,) = back.history.rounds()
    t = rec.targets[0]
    assert (rec.round, rec.time, rec.seconds, t.pid, t.chosen, t.dry_run) == (4, 1700000000.5, 2.25, 9, 5, True)
    assert t.scan.by_count.tolist() == s.by_count.tolist() and t.scan.starts.tolist() == s.starts.tolist()
    assert t.scan.accesses.tolist() == s.accesses.tolist() and t.detail == {"note": "x"}


def TargetRecordFactory(scan):
    from etmem.history import TargetRecord

    return TargetRecord(pid=9, source="smaps", scanned=256, cold=85, chosen=5, dry_run=True, resident_bytes=MiB,
                        swapped_bytes=0, detail={"note": "x"}, scan=scan)


@pytest.mark.parametrize("text, message", [
    ('{"round": 1}', "h.jsonl:1: a round before any header line"),
    ('{"etmem_history": 2, "project": "p", "engine": "e", "task": "t"}', "h.jsonl:1: history format version 2"),
    ('{"etmem_history": 1, "project": "p", "engine": "e"}', "h.jsonl:1: the header line has no task"),
    ('{"etmem_history": 1, "project": "p", "engine": "e", "task": "t"}\n{"round": 1, "time": 0}',
     "h.jsonl:2: not a round record: no 'seconds'"),
    ('{"etmem_history": 1, "project": "p", "engine": "e", "task": "t"}\n\nnot json', "h.jsonl:3: not a JSON line"),
    ('', "h.jsonl: holds no history"),
])
def test_a_bad_history_file_is_refused_naming_its_line(text, message):
    with pytest.raises(HistoryFormatError) as err:
        load_jsonl(text.splitlines(), "h.jsonl")
    assert str(err.value).startswith(message)


def test_engine_history_answers_for_any_engine_and_a_stopped_project(target):
    project = etmem.Project(name="p", loop=1, interval=1, sleep=1)
    engine = project.add_engine("slide")
    a = engine.add_task("a", "pid", target, T=1)
    engine.add_task("b", "pid", target, T=1)
    manager = etmem.Manager()
    manager.add(project)
    s = summarize_scan(refs_of([(0x10000000, 0x10000000 + MiB)], np.zeros(256, int)))
    a.run_round(lambda view, stop: RoundResult([TargetResult(target, scanned=256, cold=256, scan=s)]))
    a.run_round(lambda view, stop: RoundResult(skipped="nothing to do"))
    (one,) = load_jsonl(manager.engine_command("p", "slide", "history", "a").splitlines())
    assert (one.project, one.engine, one.task) == ("p", "slide", "a")
    first, second = one.history.rounds()
    assert first.targets[0].scan.by_count.tolist() == [MiB] and second.skipped == "nothing to do"
    both = load_jsonl(manager.engine_command("p", "slide", "history").splitlines())
    assert [s.task for s in both] == ["a", "b"] and len(both[1].history) == 0
    with pytest.raises(etmem.ObjectError, match="has no task c"):
        manager.engine_command("p", "slide", "history", "c")
    with pytest.raises(etmem.ObjectError, match="engine commands need a started project"):
        manager.engine_command("p", "slide", "showtaskpages", "a")


def test_a_history_of_many_targets_keeps_fewer_rounds_to_stay_within_its_memory():
    s = summarize_scan(refs_of([(0x10000000, 0x10000000 + 64 * MiB)], np.zeros(64 * MiB // PAGE, int)))
    one = RoundRecord(1, 0.0, 0.0, [TargetRecordFactory(s) for _ in range(50)])
    h = History(maxlen=720, max_bytes=20 * one.nbytes)
    for n in range(1, 101):
        h.add(RoundRecord(n, 0.0, 0.0, one.targets))
    assert [r.round for r in h.rounds()] == list(range(81, 101))
    small = History(maxlen=720, max_bytes=1)
    small.add(one)
    assert len(small) == 1, "the newest round is always kept"
