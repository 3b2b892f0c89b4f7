"""Keys shared by several built-in engines."""
from __future__ import annotations

from ..config import Text, YesNo, key

PMU_WARNING = "PMU sampling is not supported by etmem for Python; the key is ignored"


def pmu_key():
    """One of upstream's -DENABLE_PMU keys: accepted with a warning, never used."""
    return key(Text(64), None, help="upstream PMU sampling key; ignored with a warning", warn=PMU_WARNING)


def dry_run_key():
    """The task key of an observe-only task: scan and report what a round would do, change nothing.

    An engine that declares it must, with dry_run=yes, act on nothing (no swap-out, move,
    reclaim or kernel setting), report in each TargetResult what it would have done
    (`chosen`, `dry_run=True`, the engine's own figures in `detail`) and scan read-only.
    """
    return key(YesNo(), False, help="yes: scan and report what each round would do (show, etmem report), "
                                    "but change nothing in the target")
