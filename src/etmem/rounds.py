"""The one round lifecycle: every engine's rounds run here, on a timer, with the bookkeeping done once.

A `RoundTimer` runs `round_fn(tasks, stop)` over the tasks added to it, now and then
every `interval` seconds after each round ends, on a thread of its own: one timer per
task for engines scheduled per task (slide), one per engine for engines that plan over
all their tasks together (cslide). After each round `run_round` folds each task's
`RoundResult` into its `TaskStats`, keeps the error, and fires the `round_finished`
hook, so no engine repeats that work.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from .errors import EtmemError
from .stats import merge_round

log = logging.getLogger("etmem")

# round_fn(tasks, stop) -> {task: RoundResult | None}; finished(task, stats) after each round
RoundFn = Callable[[list, threading.Event], dict]
Finished = Callable[[object, object], None]


def run_round(round_fn: RoundFn, tasks: Iterable, stop: threading.Event, finished: Finished,
              label: str = "") -> dict:
    """One round over tasks on the calling thread; an error becomes each task's last_error, never raised."""
    tasks = list(tasks)
    began = time.monotonic()
    error = None
    results: dict = {}
    try:
        results = round_fn(tasks, stop) or {}
    except EtmemError as exc:
        error = str(exc)
    except Exception as exc:  # an engine bug must not end the timer's thread
        error = f"internal error: {type(exc).__name__}: {exc}"
        log.exception("%s: round failed", label or "round")
    seconds = time.monotonic() - began
    for task in tasks:
        stats = merge_round(task.stats, results.get(task), seconds, error)
        if stats.last_error:
            log.warning("task %s: %s", getattr(task, "label", task), stats.last_error)
        try:
            finished(task, stats)
        except Exception as exc:
            log.warning("a round_finished observer failed: %s", exc)
    return results


class RoundTimer:
    """Runs rounds over a changing set of tasks, `interval` s apart, one round at a time."""

    def __init__(self, label: str, interval: float, round_fn: RoundFn, finished: Finished):
        self.label = label
        self.interval = interval
        self.round_fn = round_fn
        self.finished = finished
        self._tasks: list = []
        self._lock = threading.Lock()          # the task set and the thread
        self._round_lock = threading.Lock()    # one round at a time, timer or caller
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._running: tuple | None = None      # (the tasks, the stop event) of the timer's round in progress

    def add(self, task) -> None:
        """Include task from the next round on; the first task starts the timer (a round runs at once)."""
        with self._lock:
            if task not in self._tasks:
                self._tasks.append(task)
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._loop, args=(self._stop,), daemon=True,
                                                name=f"etmem-{self.label}")
                self._thread.start()

    def remove(self, task) -> None:
        """Leave the timer; returns once no round that includes task is running.

        A round of the timer's that includes task is told to stop (as at project stop), so
        that the other tasks' round, which may last minutes of scan passes, is cut short
        rather than waited for; they go on from the next round.
        """
        with self._lock:
            if task in self._tasks:
                self._tasks.remove(task)
            thread, last = self._thread, not self._tasks
            if last:
                self._stop.set()
                self._thread = None
            if self._running is not None and (last or task in self._running[0]):
                self._running[1].set()     # the round's own stop event: see _loop
        if thread is threading.current_thread():
            return
        if last and thread is not None:
            thread.join()
        else:
            with self._round_lock:
                pass

    def close(self) -> None:
        with self._lock:
            tasks = list(self._tasks)
        for task in tasks:
            self.remove(task)

    def run_now(self, tasks: Iterable, stop: threading.Event | None = None, round_fn: RoundFn | None = None) -> dict:
        """One round over tasks now, on the calling thread, after any round in progress.

        round_fn stands in for the timer's own (tests and experiments).
        """
        with self._round_lock:
            return run_round(round_fn or self.round_fn, tasks, stop or threading.Event(), self.finished, self.label)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._round_lock:
                with self._lock:    # the tasks as remove() leaves them, and the round remove() can stop
                    tasks = list(self._tasks)
                    if stop.is_set() or not tasks:
                        return
                    round_stop = threading.Event()
                    self._running = (tasks, round_stop)
                try:
                    run_round(self.round_fn, tasks, round_stop, self.finished, self.label)
                finally:
                    with self._lock:
                        self._running = None
            stop.wait(self.interval)
