"""The guest the harness boots is the one the vm tests are written for."""
from __future__ import annotations

import os


def test_guest_has_two_numa_nodes_one_without_cpus():
    with open("/sys/devices/system/node/has_memory") as f:
        assert f.read().strip() == "0-1"
    with open("/sys/devices/system/node/has_cpu") as f:
        assert f.read().strip() == "0"


def test_guest_runs_as_root_inside_the_vm():
    assert os.environ.get("ETMEM_IN_VM") == "1"
    assert os.geteuid() == 0
