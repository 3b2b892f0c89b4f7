"""The docs cannot rot: every ```python block in docs/ runs (as root, like the suite), and
every block of shell commands in README.md and docs/ is either run by a test or marked as
illustrative.

- ```python: run here. ```py: Python not run on its own: an excerpt of a file other tests
  run (the example plugin package), or a template.
- ```sh TEST_MODULE...: run, verbatim, by the named test module(s), which read the block
  through `docblocks.runnable`.
- ```console: illustrative: commands that need a daemon, the reader's files or another
  machine, often shown with what they print. Not run.
Any other block (unfenced, or fenced as text, ini, ...) must not hold shell commands.
"""
import re
import subprocess
import sys

import pytest

import docblocks

BLOCKS = [b for b in docblocks.all_blocks() if b.doc.startswith("docs/") and b.lang == "python"]

# The first word of a shell command line in these docs (after VAR=value assignments).
COMMANDS = {"etmem", "etmemd", "sudo", "python", "python3", "pip", "pip3", "vng", "apt-get", "apt", "dnf",
            "systemctl", "journalctl", "systemd-analyze", "cc", "gcc", "make", "mkswap", "swapon", "swapoff",
            "echo", "cat", "mkdir", "cp", "sed", "tar", "modprobe", "export", "cd", "git", "chown", "chmod",
            "printf", "ls", "kill", "rm", "curl", "dpkg-deb", "install"}


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.doc}:{b.line}" for b in BLOCKS])
def test_python_blocks_in_docs_run(need_root, block):
    out = subprocess.run([sys.executable, "-c", block.text], capture_output=True, text=True, timeout=120,
                         cwd=docblocks.ROOT)
    assert out.returncode == 0, f"{block.doc} line {block.line} failed:\n{out.stderr}"


def command_lines(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        words = line.strip().removeprefix("$ ").split()
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
            words = words[1:]
        if words and (words[0] in COMMANDS or words[0].startswith(("./", ".ci/", ".venv/", "testvm/"))):
            found.append(line.strip())
    return found


def test_command_lines_are_recognised():
    assert command_lines("sudo .ci/run   # tests\nETMEM_VM_KERNEL=x python3 -m pytest -m vm\n") == \
        ["sudo .ci/run   # tests", "ETMEM_VM_KERNEL=x python3 -m pytest -m vm"]
    assert command_lines("vm: 9 tests executed in the guest\n{\"bench\": \"scan\"}\nproject: test\n") == []


def test_every_block_of_shell_commands_is_run_by_a_test_or_marked_illustrative():
    unmarked = [f"{b.doc}:{b.line}: {command_lines(b.text)[0]}" for b in docblocks.all_blocks()
                if b.lang not in ("sh", "console", "python", "py") and command_lines(b.text)]
    assert not unmarked, ("shell commands in a block that is neither ```sh TEST (run by that test) nor "
                          "```console (illustrative):\n" + "\n".join(unmarked))


def test_every_runnable_block_names_a_test_module_that_runs_it():
    for block in (b for b in docblocks.all_blocks() if b.lang == "sh"):
        runners = block.info.split()[1:]
        assert runners, f"{block.doc}:{block.line}: ```sh names no test module that runs it"
        for runner in runners:
            path = docblocks.ROOT / runner
            assert path.is_file(), f"{block.doc}:{block.line}: {runner} does not exist"
            assert f'runnable("{block.doc}"' in path.read_text(), \
                f"{block.doc}:{block.line}: {runner} does not read the block (docblocks.runnable)"
