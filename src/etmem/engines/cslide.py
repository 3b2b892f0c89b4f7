"""cslide: keep hot pages on fast NUMA nodes and cold pages on slow ones.

The engine's keys are declared here; its rounds (scan, place by node,
migrate within the quota) arrive with the cslide issue.
"""
from __future__ import annotations

import attrs

from ..config import Int, NodePairs, VmFlag, YesNo, key
from ..hookspecs import hookimpl
from ..strategy import Strategy
from .keys import pmu_key


@attrs.frozen
class CslideEngineKeys:
    node_pair: tuple = key(NodePairs(), help="fast,slow node pairs: 'dram,pmem;dram,pmem', e.g. 0,2;1,3")
    hot_threshold: int = key(Int(0), help="pages accessed at least this often per round are hot")
    node_mig_quota: int = key(Int(0), help="MB migrated at most per round in each direction of a pair")
    node_hot_reserve: int = key(Int(0), help="MB of fast memory kept for hot pages")
    sample_period: str = pmu_key()
    vma_updata_rate: str = pmu_key()
    cpu_set_size: str = pmu_key()
    cooling_interval: str = pmu_key()


@attrs.frozen
class CslideTaskKeys:
    vm_flags: str = key(VmFlag(), None, help="scan only VMAs whose smaps VmFlags include this flag (e.g. ht)")
    anon_only: bool = key(YesNo(), False, help="scan only anonymous memory")
    ign_host: bool = key(YesNo(), False, help="for VM memory: ignore the host page table (idle_pages only)")


class Cslide(Strategy):
    name = "cslide"
    engine_keys = CslideEngineKeys
    task_keys = CslideTaskKeys
    description = "place hot pages on fast NUMA nodes and cold pages on slow ones"


@hookimpl
def etmem_engine_types():
    return [Cslide]
