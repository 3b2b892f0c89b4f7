"""The `etmem` command: upstream's client commands plus etmem-for-Python's own.

One module per subcommand, each with `set_argparser(parser)` and `main(args)`;
this file only wires them.
"""
from __future__ import annotations

import sys

from .. import __version__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"etmem {__version__}")
        return 0
    print("usage: etmem [--version] ...", file=sys.stderr)
    return 1
