"""The config language: parser, every key's range edges, and each kind of error message."""
from __future__ import annotations

import glob
import os
import subprocess
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import etmem
from etmem import config, load_config
from etmem.config import ConfigError
from etmem.loader import UPSTREAM_ONLY_ENGINES, load_text
from etmem.plugins import default_plugins

HERE = os.path.dirname(__file__)
EXAMPLES = sorted(glob.glob(os.path.join(HERE, "..", "examples", "*.conf")))

PROJECT = "[project]\nname=p\nloop=3\ninterval=5\nsleep=1\n"
SLIDE = PROJECT + "[engine]\nname=slide\nproject=p\n[task]\nproject=p\nengine=slide\nname=t\ntype=pid\nvalue=1\nT=1\n"
CSLIDE_ENGINE = "[engine]\nname=cslide\nproject=p\nnode_pair=0,1\nhot_threshold=1\nnode_mig_quota=1024\nnode_hot_reserve=1024\n"


def load(text: str, path: str = "t.conf"):
    return load_text(textwrap.dedent(text), path)


def error_of(text: str, path: str = "t.conf", strict: bool = False) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(textwrap.dedent(text), path, strict=strict)
    return info.value


# --- files that must load -----------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_every_example_config_loads(path):
    cfg = load_config(path)
    assert cfg.projects and cfg.engines and cfg.tasks


def test_a_config_written_like_upstreams_samples_loads_with_pmu_warnings():
    cfg = load_config(os.path.join(HERE, "data", "upstream-sample.conf"))
    assert [e.name for e in cfg.engines] == ["slide", "cslide", "my_engine"]
    assert [t.name for t in cfg.tasks] == ["background_slide", "background_cslide", "backgroud_third"]
    assert cfg.engines[1].keys.node_pair == ((2, 0), (3, 1))
    assert cfg.engines[2].extra == {"engine_private_key": "engine_private_value"}
    assert cfg.tasks[2].extra == {"task_private_key": "task_private_value"}
    pmu = [w for w in cfg.warnings if "PMU" in w]
    assert len(pmu) == 2 and "sample_period" in pmu[0] and "upstream-sample.conf:" in pmu[0]


def test_a_key_given_twice_keeps_its_last_value_with_a_warning_as_upstreams_keyfile():
    text = SLIDE + "[task]\nproject=p\nengine=slide\nname=a\ntype=pid\nvalue=7\nT=1\nname=b\n"
    cfg = load(text)
    assert [t.name for t in cfg.tasks] == ["t", "b"] and cfg.tasks[1].origin.line_of("name") == 23
    assert cfg.warnings == ("t.conf:23: [task] name: given twice in this group (first on line 19); the last value is "
                            "used, as upstream etmem does",)
    err = error_of(text, strict=True)
    assert (str(err), err.key) == ("t.conf:23: [task] name=b: given twice in this group (first on line 19)", "name")


def test_upstream_readme_sample_with_name_given_twice_fails_for_its_missing_value():
    """Upstream's README gives a cslide task name= twice and no value=: the last name wins,
    and the task then has no value, as upstream would find too."""
    err = error_of(SLIDE + "[task]\nproject=p\nengine=slide\nname=a\ntype=pid\nname=23456\nT=1\n")
    assert err.key == "value" and "missing" in err.message


def test_comments_blank_lines_and_whitespace_are_ignored():
    cfg = load("""
        # a comment
        ; another comment
        [ project ]
          name =  p
        loop= 3
        interval =5

        sleep=1
    """)
    assert cfg.projects[0].name == "p" and cfg.projects[0].loop == 3


def test_repeated_groups_are_separate_objects():
    text = PROJECT + "[project]\nname=q\nloop=1\ninterval=1\nsleep=1\n"
    cfg = load(text)
    assert [p.name for p in cfg.projects] == ["p", "q"]


# --- range edges of every key ------------------------------------------------------------

PROJECT_EDGES = [
    ("loop", ["1", "120"], ["0", "121", "x", "1.5", ""]),
    ("interval", ["1", "1200"], ["0", "1201"]),
    ("sleep", ["1", "1200"], ["0", "1201", "-1"]),
    ("sysmem_threshold", ["0", "100"], ["-1", "101"]),
    ("scan_type", ["page"], ["pages", "PAGE"]),
    ("scanner", ["auto", "idle_pages", "page_idle", "damon", "smaps"], ["pagemap"]),
    ("name", ["a", "x" * 64], ["x" * 65, "-a", "a b"]),
]


@pytest.mark.parametrize("key,good,bad", PROJECT_EDGES, ids=[e[0] for e in PROJECT_EDGES])
def test_project_key_edges(key, good, bad):
    base = {"name": "p", "loop": "3", "interval": "5", "sleep": "1"}
    for value in good:
        text = "[project]\n" + "".join(f"{k}={v}\n" for k, v in dict(base, **{key: value}).items())
        load(text)
    for value in bad:
        text = "[project]\n" + "".join(f"{k}={v}\n" for k, v in dict(base, **{key: value}).items())
        err = error_of(text)
        assert err.key == key and err.group == "project" and err.path == "t.conf", str(err)
        assert "must be" in err.message


def test_loop_message_names_file_line_group_key_and_range():
    err = error_of("[project]\nname=p\nloop=0\ninterval=1\nsleep=1\n", "slide.conf")
    assert str(err) == "slide.conf:3: [project] loop=0: must be an integer from 1 to 120"
    assert (err.path, err.line, err.group, err.key, err.value) == ("slide.conf", 3, "project", "loop", "0")


def test_swapcache_watermarks_need_both_and_high_above_low():
    load(PROJECT + "swapcache_high_wmark=30\nswapcache_low_wmark=10\n")
    assert "give both" in str(error_of(PROJECT + "swapcache_high_wmark=30\n"))
    err = error_of(PROJECT + "swapcache_high_wmark=10\nswapcache_low_wmark=10\n")
    assert err.key == "swapcache_high_wmark" and "greater than swapcache_low_wmark" in err.message
    assert error_of(PROJECT + "swapcache_high_wmark=101\nswapcache_low_wmark=10\n").key == "swapcache_high_wmark"
    assert error_of(PROJECT + "swapcache_high_wmark=30\nswapcache_low_wmark=0\n").key == "swapcache_low_wmark"


def test_region_projects_need_their_damon_keys():
    text = "[project]\nname=r\nscan_type=region\nsample_interval=5000\naggr_interval=100000\nupdate_interval=1000000\nmin_nr_regions=10\nmax_nr_regions=5\n"
    err = error_of(text)
    assert err.key == "max_nr_regions" and "greater than min_nr_regions" in err.message
    assert error_of("[project]\nname=r\nscan_type=region\n").key == "sample_interval"


def _slide_task(**over):
    keys = {"project": "p", "engine": "slide", "name": "t", "type": "pid", "value": "1", "T": "1"}
    keys.update(over)
    return PROJECT + "[engine]\nname=slide\nproject=p\n[task]\n" + "".join(f"{k}={v}\n" for k, v in keys.items() if v is not None)


@pytest.mark.parametrize("key,good,bad", [
    ("T", ["0", "9"], ["10", "-1", "one"]),           # loop=3 -> 0..9
    ("swap_threshold", ["10g", "512m", "64k", "4096", "1G", "1.5g", "1GiB"], ["10x", "g", "-1g", "1.3k"]),
    ("dram_percent", ["1", "100"], ["0", "101"]),
    ("swap_flag", ["yes", "no"], ["true", "YES", "1"]),
    ("type", ["pid"], ["process", ""]),
    ("name", ["t" * 64], ["t" * 65]),
    ("max_threads", ["1", "5"], ["x"]),
])
def test_slide_task_key_edges(key, good, bad):
    for value in good:
        load(_slide_task(**{key: value}))
    for value in bad:
        err = error_of(_slide_task(**{key: value}))
        assert err.key == key and err.group == "task", str(err)


def test_T_range_follows_the_projects_loop():
    err = error_of(_slide_task(T="10"))
    assert "from 0 to 9 (loop x 3, with loop=3 in project p)" in str(err)


def test_task_value_rules_for_pid_and_name():
    load(_slide_task(type="name", value="x" * 15))
    assert "15 characters" in error_of(_slide_task(type="name", value="x" * 16)).message
    assert "process id" in error_of(_slide_task(type="pid", value="mysql")).message
    assert "process id" in error_of(_slide_task(type="pid", value="0")).message


def test_max_threads_is_clamped_with_a_warning():
    nproc = os.cpu_count()
    cfg = load(_slide_task(max_threads=str(10 * nproc + 10)))
    assert cfg.tasks[0].max_threads == 2 * nproc + 1
    assert any("max_threads" in w and "using" in w for w in cfg.warnings)
    assert load(_slide_task(max_threads="0")).tasks[0].max_threads == 1


def _cslide(engine_over=None, task_over=None):
    eng = {"name": "cslide", "project": "p", "node_pair": "0,1", "hot_threshold": "1", "node_mig_quota": "1024", "node_hot_reserve": "1024"}
    eng.update(engine_over or {})
    task = {"project": "p", "engine": "cslide", "name": "t", "type": "pid", "value": "1"}
    task.update(task_over or {})
    return (PROJECT + "[engine]\n" + "".join(f"{k}={v}\n" for k, v in eng.items() if v is not None)
            + "[task]\n" + "".join(f"{k}={v}\n" for k, v in task.items() if v is not None))


@pytest.mark.parametrize("key,good,bad", [
    ("node_pair", ["0,1", "2,0;3,1", " 0 , 1 ; 2 , 3 "], ["0", "0,1,2", "0,0", "0,1;1,2", "a,b", ""]),
    ("hot_threshold", ["0", "100"], ["-1", "x"]),
    ("node_mig_quota", ["0", "65536"], ["-1"]),
    ("node_hot_reserve", ["0", "65536"], ["-5"]),
])
def test_cslide_engine_key_edges(key, good, bad):
    for value in good:
        load(_cslide({key: value}))
    for value in bad:
        err = error_of(_cslide({key: value}))
        assert err.key == key and err.group == "engine", str(err)


def test_node_pair_repeating_a_node_says_which():
    assert "node 1 appears more than once" in error_of(_cslide({"node_pair": "0,1;1,2"})).message


@pytest.mark.parametrize("key,good,bad", [
    ("vm_flags", ["ht", "hg", "mg"], ["h", "hugetlb", "HT"]),
    ("anon_only", ["yes", "no"], ["y"]),
    ("ign_host", ["yes", "no"], ["maybe"]),
])
def test_cslide_task_key_edges(key, good, bad):
    for value in good:
        load(_cslide(task_over={key: value}))
    for value in bad:
        assert error_of(_cslide(task_over={key: value})).key == key


def test_cslide_engine_keys_are_required():
    err = error_of(_cslide({"hot_threshold": None}))
    assert err.key == "hot_threshold" and "required" in err.message


def test_thirdparty_keys_and_pass_through():
    text = PROJECT + "[engine]\nname=thirdparty\nproject=p\neng_name=e1\nlibname=/x/e1.so\nops_name=ops\nfoo=bar\n"
    text += "[task]\nproject=p\nengine=e1\nname=t\ntype=pid\nvalue=7\nwhatever=1\n"
    cfg = load(text)
    assert cfg.engines[0].name == "e1" and cfg.engines[0].extra == {"foo": "bar"} and cfg.tasks[0].extra == {"whatever": "1"}
    assert error_of(text.replace("libname=/x/e1.so", "libname=e1.so")).key == "libname"
    assert error_of(text.replace("ops_name=ops\n", "")).key == "ops_name"


# --- each kind of error ---------------------------------------------------------------------

def test_misspelt_key_suggests_the_nearest_one_in_a_warning_or_strictly_an_error():
    [warning] = load(PROJECT + "intervall=5\n").warnings
    assert warning.startswith("t.conf:6: [project] intervall=5: unknown key; did you mean 'interval'? (allowed here: ")
    assert warning.endswith("; ignored, as upstream etmem ignores keys it does not know")
    err = error_of(PROJECT + "intervall=5\n", strict=True)
    assert err.key == "intervall" and "did you mean 'interval'?" in err.message and err.line == 6


def test_unknown_key_in_a_builtin_engine_is_ignored_with_a_warning_or_strictly_an_error():
    cfg = load(SLIDE + "hot_threshold=3\n")
    assert cfg.tasks[0].extra == {} and "[task] hot_threshold=3: unknown key" in cfg.warnings[0]
    cfg = load(SLIDE.replace("[task]", "colour=blue\n[task]"))
    assert cfg.engines[0].extra == {} and "[engine] colour=blue: unknown key" in cfg.warnings[0]
    err = error_of(SLIDE + "hot_threshold=3\n", strict=True)
    assert err.key == "hot_threshold" and "unknown key" in err.message


def test_a_file_with_no_group_is_an_error():
    err = error_of("# only a comment\n\n")
    assert str(err) == "t.conf: has no [project], [engine] or [task] group: there is nothing to add or delete"


def test_missing_required_key_points_at_the_group_header():
    err = error_of("\n\n[project]\nname=p\nloop=1\ninterval=1\n")
    assert err.key == "sleep" and err.line == 3


def test_unknown_engine_lists_the_installed_ones():
    err = error_of(PROJECT + "[engine]\nname=lru\nproject=p\n")
    assert "engine 'lru' is not installed" in err.message
    assert f"(installed engines: {default_plugins().installed()}; restart etmemd after installing a plugin)" \
        in err.message and "cslide, " in err.message


@pytest.mark.parametrize("engine", sorted(UPSTREAM_ONLY_ENGINES))
def test_upstream_engines_we_lack_say_the_engine_is_not_installed(engine):
    err = error_of(PROJECT + f"[engine]\nname={engine}\nproject=p\n")
    assert err.key == "name" and f"engine '{engine}' is not installed" in err.message


def test_task_naming_an_unknown_engine():
    err = error_of(PROJECT + "[task]\nproject=p\nengine=nope\nname=t\ntype=pid\nvalue=1\n")
    assert err.key == "engine" and "no engine 'nope' in project 'p'" in err.message


@pytest.mark.parametrize("text,needle,line", [
    ("name=p\n", "key outside any group", 1),
    ("[projects]\nname=p\n", "unknown group [projects]; did you mean [project]?", 1),
    ("[project\n", "group header", 1),
    ("[project]\nname p\n", "expected key=value", 2),
    ("[project]\n=5\n", "expected key=value", 2),
])
def test_malformed_lines(text, needle, line):
    err = error_of(text)
    assert needle in str(err) and err.line == line


def test_several_problems_are_reported_together_in_line_order():
    err = error_of("[project]\nname=p\nloop=0\ninterval=0\nsleep=1\n")
    assert [e.key for e in err.errors] == ["loop", "interval"]
    assert str(err).count("\n") == 1


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.conf"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))
    bad = tmp_path / "latin1.conf"
    bad.write_bytes(b"[project]\nname=caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8") as info:
        load_config(str(bad))
    assert info.value.line == 2
    big = tmp_path / "big.conf"
    big.write_bytes(b"#" * (10 << 20) + b"\n")
    with pytest.raises(ConfigError, match="at most 10485760 bytes"):
        load_config(str(big))


# --- the Python API validates like a file ---------------------------------------------------

def test_python_objects_are_validated_like_files():
    with pytest.raises(ConfigError) as info:
        etmem.Project(name="p", loop=0, interval=1, sleep=1)
    assert str(info.value) == "[project] loop=0: must be an integer from 1 to 120"
    project = etmem.Project(name="p", loop=2, interval=1, sleep=1)
    engine = project.add_engine("slide")
    with pytest.raises(ConfigError, match="from 0 to 6"):
        engine.add_task("t", "pid", 1, T=7)
    with pytest.raises(ConfigError, match="did you mean 'T'"):
        engine.add_task("t", "pid", 1, t=1)
    assert engine.add_task("t", "pid", 1, T=6).keys.T == 6


# --- property: the parser raises nothing but ConfigError ----------------------------------------

LINES = st.one_of(
    st.sampled_from(["[project]", "[engine]", "[task]", "[x]", "[", "#c", ";c", "", "=", "name=p", "loop=3",
                     "interval=1", "sleep=1", "name=slide", "project=p", "engine=slide", "type=pid", "value=1",
                     "T=1", "node_pair=0,1;1,0", "swap_threshold=10g", "dram_percent=50", "max_threads=99"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["name", "loop", "T", "type", "value", "scan_type", "project", "engine"]),
              st.text(max_size=10)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINES, max_size=25))
def test_random_files_raise_only_config_errors(lines):
    try:
        load_text("\n".join(lines), "fuzz.conf")
    except ConfigError as err:
        assert str(err)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_config_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "f.conf"
    path.write_bytes(data)
    try:
        load_config(str(path))
    except ConfigError as err:
        assert str(err)


# --- etmem config check ----------------------------------------------------------------------

def test_config_check_command(tmp_path):
    good = subprocess.run(["etmem", "config", "check", *EXAMPLES], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert all(line.endswith("task(s)") for line in good.stdout.splitlines()) and len(good.stdout.splitlines()) == len(EXAMPLES)
    bad = tmp_path / "slide.conf"
    bad.write_text("[project]\nname=p\nloop=0\ninterval=1\nsleep=1\n")
    out = subprocess.run(["etmem", "config", "check", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == f"{bad}:3: [project] loop=0: must be an integer from 1 to 120"
    assert "Traceback" not in out.stderr


def test_config_keys_lists_every_engine():
    out = subprocess.run(["etmem", "config", "keys"], capture_output=True, text=True, check=True).stdout
    for name in ("[project]", "loop", "node_pair", "swap_threshold", "eng_name", "engine name=thirdparty"):
        assert name in out


def test_docs_config_md_documents_every_key():
    import attrs

    from etmem.plugins import default_plugins

    text = open(os.path.join(HERE, "..", "docs", "config.md")).read()
    classes = [config.ProjectSpec, config.EngineCommon, config.TaskCommon]
    for strategy in default_plugins().engines.values():
        classes += [strategy.engine_keys, strategy.task_keys]
    missing = [a.name for cls in classes for a in attrs.fields(cls) if f"`{a.name}`" not in text]
    assert missing == []
