"""The private zram swap device of the demo and the tests: made, used, removed; failures are clear."""
import os

import pytest

from etmem import kernel, procfs, zram
from etmem.errors import EtmemError


def test_a_device_is_made_active_and_removed_again(need_root):
    if zram.missing_reason():
        pytest.skip(f"no zram here: {zram.missing_reason()}")
    before = set(os.listdir("/sys/block"))
    with zram.ZramSwap(64 << 20, priority=32000) as device:
        name = os.path.basename(device.device)
        assert name not in before
        assert device.device in [d["name"] for d in procfs.swap_devices()]
        assert kernel.swap_active()
        assert device.stats()["orig_data_size"] >= 0
    assert set(os.listdir("/sys/block")) == before, "the device must be gone after remove()"


def test_a_failed_set_up_names_the_device_and_leaves_nothing_behind(need_root):
    if zram.missing_reason():
        pytest.skip(f"no zram here: {zram.missing_reason()}")
    before = set(os.listdir("/sys/block"))
    with pytest.raises(EtmemError, match=r"could not set up /dev/zram\d+ \(64 MiB\) as swap: .*") as info:
        zram.ZramSwap(64 << 20, algorithm="no-such-compressor").create()
    assert "None" not in str(info.value)
    assert set(os.listdir("/sys/block")) == before
