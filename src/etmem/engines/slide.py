"""slide: swap out the pages of a process that were accessed fewer than T times.

The engine's keys are declared here; its rounds (scan, choose cold pages,
swap out) arrive with the slide issue.
"""
from __future__ import annotations

import attrs

from ..config import Int, Size, key
from ..hookspecs import hookimpl
from ..strategy import Strategy
from .keys import pmu_key


@attrs.frozen
class SlideTaskKeys:
    T: int = key(Int(0), help="pages accessed fewer than T times over a round's loop passes are cold; 0..loop*3")
    swap_threshold: int = key(Size(), None, help="act only while the process's resident memory is above this size, e.g. 10g")
    dram_percent: int = key(Int(1, 100), None, help="swap the coldest pages until resident memory is at most this percent of RSS+swap")
    sample_period: str = pmu_key()
    vma_updata_rate: str = pmu_key()
    cpu_set_size: str = pmu_key()
    cooling_interval: str = pmu_key()


class Slide(Strategy):
    name = "slide"
    task_keys = SlideTaskKeys
    description = "swap out pages accessed fewer than T times per round"

    @classmethod
    def check_task(cls, keys, extra, project):
        if project is not None and project.loop is not None and keys.T > project.loop * 3:
            return [("T", f"must be an integer from 0 to {project.loop * 3} (loop x 3, with loop={project.loop} in project {project.name})")]
        return []


@hookimpl
def etmem_engine_types():
    return [Slide]
