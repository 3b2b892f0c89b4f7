"""Byte sizes, read one way everywhere (config keys, command-line flags, benchmarks) and
shown one way: `512M`, `1g`, `1GiB`, `1.5G`, `64k` in; `512 MiB`, `1.5 GiB` out.

Units are binary, as upstream etmem's `10g`: k, K, KB, KiB all mean 1024 bytes.
"""
from __future__ import annotations

import argparse
import re
from decimal import Decimal

UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
NAMES = (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
EXAMPLES = "10g, 512m, 64k or a number of bytes"  # as the message has always said; 1.5G and 1GiB are read too
_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(?:([kmgtpe])(i?b)?|(b)?)", re.I | re.ASCII)   # ASCII digits only


def parse_size(text: str | int, bare: str = "") -> int:
    """Bytes in `text`: a number with an optional unit. A bare number counts in `bare`
    ("" bytes, "M" MiB, ...). ValueError saying what is accepted (callers name the value)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"must be a size like {EXAMPLES}")
        return text * UNITS[bare.lower()]
    m = _SIZE.fullmatch(str(text).strip())
    if not m:
        raise ValueError(f"must be a size like {EXAMPLES}")
    number, unit, _, byte = m.groups()
    scale = UNITS[(unit or ("" if byte else bare)).lower()]
    value = Decimal(number) * scale
    if value != value.to_integral_value():
        raise ValueError("must be a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """`n` bytes in the largest binary unit it fills, to one decimal: 1.5 GiB, 545 MiB, 100 B."""
    for name, scale in NAMES:
        if n >= scale:
            return f"{round(n / scale, 1):g} {name}"
    return f"{n} B"


def size_arg(bare: str = "", multiple: int = 1, name: str = "bytes"):
    """An argparse `type=` for sizes: bytes (or `multiple`s of bytes, e.g. 1 << 20 for a
    value in MiB); a bare number counts in `bare`."""
    def convert(text: str) -> int:
        try:
            value = parse_size(text, bare)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
        if value % multiple:
            raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number of {name}")
        return value // multiple
    return convert
