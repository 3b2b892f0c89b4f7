"""`etmem plugins`: which plugins are loaded, their versions, engines and access sources, and any that failed."""
from __future__ import annotations

import argparse

from ..plugins import default_plugins


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("List the loaded etmem plugins (built-in engines first, then the 'etmem' "
                          "entry-point group) with their versions, engines and access sources. "
                          "ETMEM_LOAD_PLUGINS=a,b loads only the named entry points.")


def main(args: argparse.Namespace) -> int:
    plugins = default_plugins()
    width = max(len(i.name) for i in plugins.infos)
    bad = 0
    for info in plugins.infos:
        if info.error:
            bad += 1
            print(f"{info.name:<{width}}  {info.version:<8}  {info.source}  FAILED: {info.error}")
        else:
            sources = f"; sources: {', '.join(info.sources)}" if info.sources else ""
            print(f"{info.name:<{width}}  {info.version:<8}  {info.source}  engines: {', '.join(info.engines) or '-'}{sources}")
    return 1 if bad else 0
