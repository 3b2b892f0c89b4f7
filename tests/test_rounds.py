"""The round lifecycle (rounds.py): bookkeeping done once, for every engine."""
from __future__ import annotations

import threading
import time

import pytest

from etmem.errors import EtmemError
from etmem.rounds import RoundTimer, run_round
from etmem.stats import RoundResult, TargetResult, TaskStats


class View:
    def __init__(self, name):
        self.name = self.label = name
        self.stats = TaskStats()


def test_a_round_result_is_merged_into_each_tasks_stats_and_the_hook_fires():
    a, b = View("a"), View("b")
    seen = []

    def round_fn(tasks, stop):
        return {a: RoundResult([TargetResult(1, scanned=10, cold=4, swapped=3, source="smaps")]),
                b: RoundResult(skipped="free memory is high")}

    run_round(round_fn, [a, b], threading.Event(), lambda t, s: seen.append((t.name, s.rounds)))
    assert (a.stats.rounds, a.stats.pages_scanned, a.stats.cold_pages, a.stats.pages_swapped) == (1, 10, 4, 3)
    assert a.stats.source == "smaps" and a.stats.last_round[0].pid == 1 and a.stats.last_error is None
    assert b.stats.skipped == "free memory is high" and b.stats.rounds == 1 and b.stats.targets == 0
    assert seen == [("a", 1), ("b", 1)]


@pytest.mark.parametrize("exc, text", [(EtmemError("no process named x is running"), "no process named x is running"),
                                       (ZeroDivisionError("boom"), "internal error: ZeroDivisionError: boom")])
def test_a_failing_round_becomes_last_error_and_is_not_raised(exc, text):
    a = View("a")

    def round_fn(tasks, stop):
        raise exc

    run_round(round_fn, [a], threading.Event(), lambda t, s: None)
    assert a.stats.last_error == text and a.stats.rounds == 1


def test_target_errors_are_joined_with_their_pid():
    result = RoundResult([TargetResult(7, error="exited"), TargetResult(8)], errors=["one more"])
    assert result.error_text() == "one more; process 7: exited"


def test_the_timer_runs_rounds_interval_apart_and_remove_waits_for_the_running_round():
    a = View("a")
    entered, release = threading.Event(), threading.Event()

    def round_fn(tasks, stop):
        if a.stats.rounds == 1:
            entered.set()
            release.wait(5)
        return {}

    timer = RoundTimer("t", 0.05, round_fn, lambda t, s: None)
    timer.add(a)
    assert entered.wait(5)
    removing = threading.Thread(target=timer.remove, args=(a,))
    removing.start()
    time.sleep(0.2)
    assert removing.is_alive()          # the second round is still running
    release.set()
    removing.join(5)
    assert not removing.is_alive() and a.stats.rounds == 2
    time.sleep(0.2)
    assert a.stats.rounds == 2          # no round after the last task left


def test_removing_one_task_cuts_the_running_round_short_and_the_others_go_on():
    a, b = View("a"), View("b")
    rounds, entered = [], threading.Event()

    def round_fn(tasks, stop):      # a long round of scan passes, as cslide's over all its tasks
        rounds.append([t.name for t in tasks])
        entered.set()
        stop.wait(30)
        return {t: RoundResult(skipped="stopped") for t in tasks} if stop.is_set() else {}

    timer = RoundTimer("t", 0.05, round_fn, lambda t, s: None)
    timer.add(a)
    timer.add(b)
    assert entered.wait(5)
    entered.clear()
    began = time.monotonic()
    timer.remove(a)
    assert time.monotonic() - began < 5, "remove did not wait out the 30 s round"
    assert entered.wait(5) and rounds[-1] == ["b"], rounds   # b's next round, without a
    rounds_of_a = a.stats.rounds
    timer.remove(b)
    assert a.stats.rounds == rounds_of_a and b.stats.rounds >= 2
