"""`etmem plugins`: which plugins are loaded, their versions, engines and access sources, and any that failed."""
from __future__ import annotations

import argparse
import json

from ..plugins import default_plugins


def set_argparser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("List the loaded etmem plugins (built-in engines first, then the 'etmem' "
                          "entry-point group) with their versions, engines and access sources. "
                          "ETMEM_LOAD_PLUGINS=a,b loads only the named entry points. "
                          "Exit status 1 when a plugin failed to load.")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text",
                        help="json: a JSON list, an object per plugin (name, version, source, engines, "
                             "sources, error)")


def main(args: argparse.Namespace) -> int:
    plugins = default_plugins()
    bad = sum(1 for info in plugins.infos if info.error)
    if args.output == "json":
        print(json.dumps([{"name": i.name, "version": i.version, "source": i.source, "engines": list(i.engines),
                           "sources": list(i.sources), "error": i.error} for i in plugins.infos], indent=2))
        return 1 if bad else 0
    width = max(len(i.name) for i in plugins.infos)
    for info in plugins.infos:
        if info.error:
            print(f"{info.name:<{width}}  {info.version:<8}  {info.source}  FAILED: {info.error}")
        else:
            sources = f"; sources: {', '.join(info.sources)}" if info.sources else ""
            print(f"{info.name:<{width}}  {info.version:<8}  {info.source}  engines: {', '.join(info.engines) or '-'}{sources}")
    return 1 if bad else 0
