"""Per-task kernel call counters: totals, errors by errno name, the text table, thread safety."""
from __future__ import annotations

import errno
import threading

from etmem.stats import CallCounters


def test_counters_add_up_per_call_with_errors_by_errno_name():
    c = CallCounters()
    c.record("process_madvise", 1024, 1024, 1024 * 4096)
    c.record("process_madvise", 10, 0, 0, errno.ENOMEM)
    c.record("move_pages", 16, 14, 14 * 4096)
    c.record_errors("move_pages", {errno.ENOENT: 2})
    d = c.as_dict()
    assert d["process_madvise"] == {"calls": 2, "pages_requested": 1034, "pages_done": 1024,
                                    "bytes": 1024 * 4096, "errors": {"ENOMEM": 1}}
    assert d["move_pages"]["errors"] == {"ENOENT": 2}
    assert d["move_pages"]["calls"] == 1


def test_as_dict_is_a_copy():
    c = CallCounters()
    c.record("move_pages", 1, 1, 4096, errno.EACCES)
    d = c.as_dict()
    d["move_pages"]["calls"] = 99
    d["move_pages"]["errors"]["EACCES"] = 99
    assert c.as_dict()["move_pages"]["calls"] == 1
    assert c.as_dict()["move_pages"]["errors"] == {"EACCES": 1}


def test_table_has_one_row_per_call_with_megabytes_and_errors():
    c = CallCounters()
    c.record("process_madvise", 2048, 2048, 8 << 20)
    c.record("move_pages", 4, 0, 0, errno.ENODEV)
    lines = c.table().splitlines()
    assert lines[0].split() == ["call", "calls", "pages", "req", "pages", "done", "MB", "errors"]
    assert lines[1].split() == ["move_pages", "1", "4", "0", "0.0", "ENODEV:1"]
    assert lines[2].split() == ["process_madvise", "1", "2048", "2048", "8.0", "-"]


def test_counting_from_many_threads_loses_nothing():
    c = CallCounters()

    def work():
        for _ in range(2000):
            c.record("move_pages", 3, 2, 8192, errno.ENOENT)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d = c.as_dict()["move_pages"]
    assert d["calls"] == 16000 and d["pages_requested"] == 48000 and d["pages_done"] == 32000
    assert d["bytes"] == 16000 * 8192 and d["errors"] == {"ENOENT": 16000}
