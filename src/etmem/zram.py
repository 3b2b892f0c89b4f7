"""A private zram swap device: made for a demo or a test, removed afterwards.

The machine's own zram devices are never touched: we `hot_add` a fresh one,
and only ever swapoff/reset/hot_remove the device number we were given.
"""
from __future__ import annotations

import os
import subprocess

from .errors import ZramUnavailable

CONTROL = "/sys/class/zram-control"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def missing_reason() -> str | None:
    """Why a zram swap device cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "root is needed to create a zram swap device (run as root)"
    if not os.path.exists(CONTROL):
        return f"{CONTROL} is missing: load the zram module (modprobe zram) or build the kernel with CONFIG_ZRAM"
    for tool in ("mkswap", "swapon", "swapoff"):
        if not any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "/usr/sbin:/sbin").split(":") + ["/usr/sbin", "/sbin"]):
            return f"{tool} (util-linux) is not installed"
    return None


class ZramSwap:
    """A zram swap device of `size_bytes`, active between create() and remove()."""

    def __init__(self, size_bytes: int = 2 << 30, priority: int = 100, algorithm: str | None = None):
        self.size_bytes = size_bytes
        self.priority = priority
        self.algorithm = algorithm
        self.number: int | None = None
        self.active = False

    @property
    def device(self) -> str:
        return f"/dev/zram{self.number}"

    def create(self) -> "ZramSwap":
        reason = missing_reason()
        if reason:
            raise ZramUnavailable(reason)
        with open(f"{CONTROL}/hot_add") as f:
            self.number = int(f.read())
        try:
            block = f"/sys/block/zram{self.number}"
            if self.algorithm:
                _write(f"{block}/comp_algorithm", self.algorithm)
            _write(f"{block}/disksize", str(self.size_bytes))
            subprocess.run(["mkswap", self.device], check=True, capture_output=True)
            subprocess.run(["swapon", "-p", str(self.priority), self.device], check=True, capture_output=True)
            self.active = True
        except (OSError, subprocess.CalledProcessError) as exc:
            device = self.device
            detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip()
            self.remove()
            raise ZramUnavailable(f"could not set up {device} ({self.size_bytes >> 20} MiB) as swap: "
                                  f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
                                  f"{': ' + detail if detail else ''}") from None
        return self

    def remove(self) -> None:
        """swapoff (bringing pages back to RAM), reset and hot_remove our device."""
        if self.number is None:
            return
        if self.active:
            subprocess.run(["swapoff", self.device], capture_output=True)
            self.active = False
        block = f"/sys/block/zram{self.number}"
        try:
            _write(f"{block}/reset", "1")
        except OSError:
            pass
        try:
            _write(f"{CONTROL}/hot_remove", str(self.number))
        except OSError:
            pass
        self.number = None

    def stats(self) -> dict[str, int]:
        """orig_data_size, compr_data_size, mem_used_total (bytes) from mm_stat."""
        with open(f"/sys/block/zram{self.number}/mm_stat") as f:
            fields = [int(x) for x in f.read().split()[:3]]
        return dict(zip(("orig_data_size", "compr_data_size", "mem_used_total"), fields))

    def __enter__(self) -> "ZramSwap":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()
