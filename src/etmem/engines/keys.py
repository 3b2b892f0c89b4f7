"""Keys shared by several built-in engines."""
from __future__ import annotations

from ..config import Text, key

PMU_WARNING = "PMU sampling is not supported by etmem for Python; the key is ignored"


def pmu_key():
    """One of upstream's -DENABLE_PMU keys: accepted with a warning, never used."""
    return key(Text(64), None, help="upstream PMU sampling key; ignored with a warning", warn=PMU_WARNING)
