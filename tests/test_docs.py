"""Every ```python block in docs/ runs (as root, like the suite), so the docs cannot rot.

Excerpts of files that other tests run (the example plugin package) are fenced ```py
instead and are not run here.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")
BLOCKS = [(os.path.basename(path), i, block)
          for path in sorted(glob.glob(os.path.join(DOCS, "*.md")))
          for i, block in enumerate(re.findall(r"```python\n(.*?)```", open(path).read(), re.S))]


@pytest.mark.parametrize("doc,index,code", BLOCKS, ids=[f"{d}#{i}" for d, i, _ in BLOCKS])
def test_python_blocks_in_docs_run(need_root, doc, index, code, tmp_path):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.join(DOCS, ".."))
    assert out.returncode == 0, f"{doc} block {index} failed:\n{out.stderr}"
