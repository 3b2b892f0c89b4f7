"""`-o json` of `etmem config check` and `etmem plugins`: the same facts as the text, for programs."""
from __future__ import annotations

import json
import os
import subprocess

from etmem import loader
from etmem.plugins import default_plugins

ROOT = os.path.join(os.path.dirname(__file__), "..")
GOOD = "examples/slide.conf"


def etmem(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["etmem", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_config_check_json_lists_what_each_good_file_declares():
    out = etmem("config", "check", "-o", "json", GOOD, cwd=ROOT)
    assert (out.returncode, out.stderr) == (0, "")
    (result,) = json.loads(out.stdout)
    cfg = loader.load_config(os.path.join(ROOT, GOOD))
    assert result == {
        "file": GOOD, "ok": True, "projects": [p.name for p in cfg.projects],
        "engines": [{"project": e.project, "name": e.name} for e in cfg.engines],
        "tasks": [{"project": t.project, "engine": t.engine, "name": t.name} for t in cfg.tasks],
        "warnings": [], "errors": []}
    assert result["projects"] == ["web"] and result["tasks"][0]["name"] == "nginx_workers"


def test_config_check_json_gives_every_error_with_where_it_is_and_exits_1(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[project]\nname=p\nloop=0\ninterval=1\nsleep=1\n")
    out = etmem("config", "check", "-o", "json", str(bad), GOOD, cwd=ROOT)
    assert (out.returncode, out.stderr) == (1, "")
    first, second = json.loads(out.stdout)
    assert first["ok"] is False and second["ok"] is True
    (error,) = first["errors"]
    assert error == {"file": str(bad), "line": 3, "group": "project", "key": "loop", "value": "0",
                     "message": "must be an integer from 1 to 120",
                     "text": f"{bad}:3: [project] loop=0: must be an integer from 1 to 120"}
    text = etmem("config", "check", str(bad))
    assert text.stderr.strip() == error["text"]  # the text output's line, word for word


def test_plugins_json_has_each_loaded_plugin_as_the_text_lists_it():
    out = etmem("plugins", "-o", "json")
    assert out.returncode == 0, out.stdout
    listed = json.loads(out.stdout)
    plugins = default_plugins()
    assert [p["name"] for p in listed] == [i.name for i in plugins.infos]
    assert sorted(e for p in listed for e in p["engines"]) == sorted(plugins.engines)
    assert all(p["error"] is None and p["version"] for p in listed)
    text = etmem("plugins").stdout.splitlines()
    assert [line.split()[0] for line in text] == [p["name"] for p in listed]
