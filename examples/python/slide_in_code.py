"""Build a slide project in Python, run three rounds on a workload, read the stats, stop.

With a per-page access-bit source (or smaps, since this workload's cold set is a VMA of
its own) three rounds swap the whole cold set out; the refault source, which `auto`
picks on kernels without access bits, samples its way through it over more rounds.

Run as root:  python examples/python/slide_in_code.py
It makes its own zram swap device when none is active and removes it at the end.
"""
import time

import etmem
from etmem import kernel
from etmem.workload import Workload
from etmem.zram import ZramSwap


def main() -> None:
    swap = None if kernel.swap_active() else ZramSwap(256 << 20).create()
    try:
        with Workload(total_mb=128, hot_mb=16) as workload:
            # The same validation as a config file: a bad value raises etmem.ConfigError.
            project = etmem.Project(name="example", loop=2, interval=1, sleep=1, scanner="auto")
            task = project.add_engine("slide").add_task("workload", "pid", workload.pid, T=1)

            manager = etmem.Manager()
            manager.add(project)
            manager.start("example")
            while task.stats.rounds < 3:
                time.sleep(0.2)
            manager.stop("example")

            shown = manager.show("example")[0]["tasks"][0]
            stats = shown["stats"]
            print(f"rounds: {stats['rounds']}, source: {stats['source']}")
            print(f"pages swapped out: {stats['pages_swapped']} ({stats['pages_swapped'] * 4 // 1024} MiB)")
            print(f"kernel calls: {stats['calls']}")
            # The workload knows which of its pages are cold: how well did slide do?
            placement = workload.placement()
            print(f"cold pages swapped: {placement['recall']:.0%}, swapped pages that were cold: "
                  f"{placement['precision'] if placement['precision'] is None else format(placement['precision'], '.0%')}")
            print(f"workload data intact: {workload.verify()}")
    finally:
        if swap is not None:
            swap.remove()


if __name__ == "__main__":
    main()
