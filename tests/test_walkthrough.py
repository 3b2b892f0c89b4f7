"""A newcomer's first session with etmemd, on any Linux: what the daemon says when the
example config is refused, why a round did nothing, and that a plugin installed while
etmemd runs needs a restart, each against a real etmemd (etmemd_harness)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from etmemd_harness import Etmemd

pytestmark = pytest.mark.usefixtures("need_root")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "slide.conf"


@pytest.fixture
def daemon(tmp_path):
    d = Etmemd(tmp_path).start()
    yield d
    assert d.stop() == 0, d.log()


def test_the_example_as_git_checks_it_out_is_refused_with_the_chmod_that_fixes_it(daemon, tmp_path):
    checked_out = tmp_path / "slide.conf"
    shutil.copyfile(EXAMPLE, checked_out)
    checked_out.chmod(0o644)                     # git's mode for a file that is not executable
    refused = daemon.etmem("obj", "add", "-f", str(checked_out))
    assert (refused.returncode, refused.stderr) == (186, "")
    assert refused.stdout == (
        "error: invalid parameters\n"
        f"config file {checked_out} must have mode 0400 or 0600 (it has 0644): as upstream's, etmemd reads only "
        f"config files no one but root can read or write; chmod 600 {checked_out} (or start etmemd with "
        "--config-perms relaxed)\n"
        "etmem_client_recv failed.\n"
        "etmem: error -70\n")
    checked_out.chmod(0o600)                     # what the message says to do
    added = daemon.etmem("obj", "add", "-f", str(checked_out))
    assert (added.returncode, added.stdout) == (0, "")
