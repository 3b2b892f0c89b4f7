"""`etmem kernel`: what the running kernel offers etmem, and what each missing piece needs.

Read-only: it probes files and syscalls (on its own process), never writes to the kernel.
"""
from __future__ import annotations

import argparse
import json
import os

from .. import kernel, procfs, zram
from ..plugins import default_plugins
from ..scan import available_sources, best_source


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Show what the running kernel offers etmem: the scanner sources (and which one "
                          "'auto' picks), the swap-out and migration interfaces, swap devices and NUMA "
                          "nodes; for each missing piece, what the kernel needs. Reads only.")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")


def report() -> dict:
    """Everything `etmem kernel` shows, as data: name -> None (usable) or why not."""
    default_plugins()  # installed plugins' access sources are offered too
    sources = available_sources()
    auto = best_source(sources)
    swap = procfs.swap_devices()
    nodes = procfs.memory_nodes()
    return {
        "kernel": os.uname().release,
        "root": os.geteuid() == 0,
        "scanner_sources": sources,
        "scanner_auto": auto,
        "swap_out": {
            "swap_pages": None if kernel.has_swap_pages() else kernel.missing("swap_pages"),
            "process_madvise": None if kernel.has_process_madvise() else kernel.missing("process_madvise"),
        },
        "pidfd": None if kernel.has_pidfd() else kernel.missing("pidfd"),
        "swap_devices": [{"name": d["name"], "size_kb": d["size_kb"], "used_kb": d["used_kb"],
                          "priority": d["priority"]} for d in swap],
        "zram": zram.missing_reason(),
        "numa_nodes": nodes,
        "migration": None if len(nodes) > 1 else
        f"only {len(nodes)} NUMA node with memory: cslide needs a fast and a slow node",
        "psi": {
            "psi": None if kernel.has_psi() else kernel.missing("psi"),
            "cgroup2_memory": None if kernel.has_cgroup2_memory() else kernel.missing("cgroup2_memory"),
            "memory_reclaim": None if kernel.has_memory_reclaim() else kernel.missing("memory_reclaim"),
        },
    }


# The psi engine's needs, as `etmem kernel` names them.
PSI_NEEDS = (("psi", "PSI"), ("cgroup2_memory", "cgroup2 memory"), ("memory_reclaim", "memory.reclaim"))


# What auto's pick means where it is not a per-page access-bit source.
_PICKS = {
    "refault": "each page, by paging a sample out to swap and watching which pages come back "
               "(project key refault_budget)",
    "smaps": "whole VMAs: a mapping with one used page counts as used as a whole",
}


def _mark(reason: str | None) -> str:
    return "yes" if reason is None else "no"


def main(args: argparse.Namespace) -> int:
    r = report()
    if args.output == "json":
        print(json.dumps(r, indent=2))
        return 0
    auto = r["scanner_auto"]
    lines = [f"kernel {r['kernel']}" + ("" if r["root"] else " (not root: etmem needs root to act on other processes)"),
             "", f"scanner sources (auto picks {auto or 'none'}):"]
    lines += [f"  {name:<16}{_mark(why):<5}{why or ''}" for name, why in r["scanner_sources"].items()]
    if auto in _PICKS:
        lines.append(f"  auto's pick, {auto}, sees {_PICKS[auto]}")
    lines += ["", "swap-out:"]
    lines += [f"  {name:<16}{_mark(why):<5}{why or ''}" for name, why in r["swap_out"].items()]
    if r["swap_devices"]:
        for d in r["swap_devices"]:
            lines.append(f"  swap device     {d['name']} ({d['size_kb'] // 1024} MiB, {d['used_kb'] // 1024} MiB used, "
                         f"priority {d['priority']})")
    else:
        lines.append(f"  swap device     no   {kernel.missing('swap')}")
    lines.append(f"  zram            {_mark(r['zram']):<5}{r['zram'] or 'a private device can be made (etmem demo does)'}")
    lines += ["", "migration (cslide):",
              f"  NUMA nodes      {', '.join(map(str, r['numa_nodes']))}",
              f"  two tiers       {_mark(r['migration']):<5}{r['migration'] or 'move_pages(2) between them'}",
              "", "cgroup reclaim (psi):"]
    lines += [f"  {label:<16}{_mark(r['psi'][name]):<5}{r['psi'][name] or ''}" for name, label in PSI_NEEDS]
    lines += ["", f"pidfd             {_mark(r['pidfd'])}    {r['pidfd'] or ''}"]
    print("\n".join(line.rstrip() for line in lines))
    return 0
