"""The code blocks of README.md and docs/*.md, for the tests that run or check them.

A block is fenced (```` ```lang words ````, also indented inside a list item) or indented by
four spaces or more after a blank line. `info` is the fence's info string ("" otherwise).
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(\s*)```(.*)$")


@dataclass(frozen=True)
class Block:
    doc: str    # path relative to the project, e.g. docs/cli.md
    line: int   # of the block's first line (the fence, for a fenced block)
    info: str   # the fence's info string: "sh tests/test_newcomer.py"; "" when unfenced
    text: str   # dedented, ending in a newline

    @property
    def lang(self) -> str:
        return self.info.split()[0] if self.info else ""


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    doc = path.relative_to(ROOT).as_posix()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence:
            end = i + 1
            while end < len(lines) and not re.match(r"^\s*```\s*$", lines[end]):
                end += 1
            body = "\n".join(lines[i + 1:end]) + "\n"
            found.append(Block(doc, i + 1, fence.group(2).strip(), textwrap.dedent(body)))
            i = end + 1
            continue
        if lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()) \
                    and not _FENCE.match(lines[end]):
                end += 1
            body = "\n".join(lines[i:end]).rstrip() + "\n"
            found.append(Block(doc, i + 1, "", textwrap.dedent(body)))
            i = end
            continue
        i += 1
    return found


def all_blocks() -> list[Block]:
    return [b for path in DOCS for b in blocks(path)]


def runnable(doc: str, runner: str) -> list[Block]:
    """The ```sh blocks of `doc` that name `runner` (a test module) as the one running them."""
    path = ROOT / doc
    return [b for b in blocks(path) if b.lang == "sh" and runner in b.info.split()[1:]]
