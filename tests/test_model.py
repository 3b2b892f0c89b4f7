"""The Project / Engine / Task model and the Manager: add, delete, start, stop, show."""
from __future__ import annotations

import os
import threading
import time

import attrs
import pytest

import etmem
from etmem import ConfigError, Manager, ObjectError, Strategy, hookimpl
from etmem.config import Int, key
from etmem.plugins import Plugins


@attrs.frozen
class RecorderTaskKeys:
    level: int = key(Int(0, 5), 1)


class Recorder(Strategy):
    """A test engine that records every call the model makes."""

    name = "recorder"
    task_keys = RecorderTaskKeys
    calls: list = []
    entered = threading.Event()
    gate = threading.Event()
    fail_add_for: str | None = None

    def add_task(self, task):
        if task.name == Recorder.fail_add_for:
            raise etmem.EtmemError(f"refusing {task.name}")
        self.calls.append(("add", task.name))

    def remove_task(self, task):
        self.calls.append(("remove", task.name))

    def run_round(self, task, stop):
        self.calls.append(("round", task.name))
        task.stats.pages_scanned += 10

    def command(self, cmd, task):
        if cmd == "slow":
            Recorder.entered.set()
            Recorder.gate.wait(10)
        return f"{cmd} for {task.name if task else '-'}"

    def close(self):
        self.calls.append(("close", self.engine.name))


class RecorderPlugin:
    @hookimpl
    def etmem_engine_types(self):
        return [Recorder]


@pytest.fixture
def manager():
    Recorder.calls = []
    Recorder.fail_add_for = None
    m = Manager(Plugins(entry_points=False, extra=(RecorderPlugin(),)))
    yield m
    m.close()


CONF = """
[project]
name=p
loop=1
interval=1
sleep=1

[engine]
name=recorder
project=p

[task]
project=p
engine=recorder
name=t1
type=pid
value={pid}

[task]
project=p
engine=recorder
name=t2
type=name
value=python3
level=3
"""


def conf(pid=None):
    return CONF.format(pid=pid or os.getpid())


def test_add_file_adds_project_engine_and_tasks(manager, tmp_path):
    path = tmp_path / "a.conf"
    path.write_text(conf())
    added = manager.add_file(str(path))
    assert added == ["project p", "engine recorder", "task t1", "task t2"]
    shown = manager.show()
    assert [(t["number"], t["name"], t["type"], t["engine"], t["started"]) for t in shown[0]["tasks"]] == [
        (1, "t1", "pid", "recorder", False), (2, "t2", "name", "recorder", False)]
    assert manager.project("p").engine("recorder").task("t2").keys.level == 3


def test_a_failing_file_leaves_nothing_half_added(manager):
    Recorder.fail_add_for = "t2"
    with pytest.raises(etmem.EtmemError, match="refusing t2"):
        manager.add_text(conf())
    assert manager.projects == {}
    assert ("remove", "t1") in Recorder.calls and ("close", "recorder") in Recorder.calls


def test_a_bad_key_anywhere_adds_nothing(manager):
    with pytest.raises(ConfigError, match="level=9"):
        manager.add_text(conf().replace("level=3", "level=9"))
    assert manager.projects == {}


def test_duplicates_and_missing_parents_are_clear_errors(manager):
    manager.add_text(conf(), "a.conf")
    with pytest.raises(ObjectError, match="project p already exists"):
        manager.add_text(conf())
    with pytest.raises(ObjectError, match="a.conf:2: \\[engine\\] engine recorder already exists in project p"):
        manager.add_text("\n[engine]\nname=recorder\nproject=p\n", "a.conf")
    with pytest.raises(ObjectError, match="task t1 already exists"):
        manager.add_text("[task]\nproject=p\nengine=recorder\nname=t1\ntype=pid\nvalue=1\n")
    with pytest.raises(ObjectError, match="project q does not exist"):
        manager.add_text("[engine]\nname=recorder\nproject=q\n")
    with pytest.raises(ConfigError, match="no engine 'other' in project 'p'"):
        manager.add_text("[task]\nproject=p\nengine=other\nname=t9\ntype=pid\nvalue=1\n")


def test_tasks_can_be_added_to_an_existing_engine_in_a_later_file(manager):
    manager.add_text(conf())
    added = manager.add_text("[task]\nproject=p\nengine=recorder\nname=t3\ntype=pid\nvalue=1\nlevel=5\n")
    assert added == ["task t3"]
    assert list(manager.project("p").engine("recorder").tasks) == ["t1", "t2", "t3"]


def test_start_runs_rounds_every_interval_and_stop_ends_them(manager):
    manager.add_text(conf())
    manager.start("p")
    with pytest.raises(ObjectError, match="already started"):
        manager.start("p")
    deadline = time.time() + 5
    while time.time() < deadline and manager.show("p")[0]["tasks"][0]["stats"]["rounds"] < 2:
        time.sleep(0.05)
    rows = manager.show("p")[0]["tasks"]
    assert all(r["started"] for r in rows) and rows[0]["stats"]["rounds"] >= 2
    assert rows[0]["stats"]["pages_scanned"] == 10 * rows[0]["stats"]["rounds"]
    manager.stop("p")
    rounds = manager.show("p")[0]["tasks"][0]["stats"]["rounds"]
    time.sleep(1.2)
    assert manager.show("p")[0]["tasks"][0]["stats"]["rounds"] == rounds
    with pytest.raises(ObjectError, match="not started"):
        manager.stop("p")


def test_a_task_added_to_a_started_project_starts(manager):
    manager.add_text(conf())
    manager.start("p")
    manager.add_text("[task]\nproject=p\nengine=recorder\nname=late\ntype=pid\nvalue=1\n")
    assert manager.project("p").engine("recorder").task("late").started


def test_delete_goes_task_engine_project_and_stops_first(manager, tmp_path):
    path = tmp_path / "a.conf"
    path.write_text(conf())
    manager.add_file(str(path))
    manager.start("p")
    deleted = manager.delete_file(str(path))
    assert deleted == ["task t1", "task t2", "engine recorder", "project p"]
    assert manager.projects == {}
    teardown = [c for c in Recorder.calls if c[0] in ("remove", "close")]
    assert teardown == [("remove", "t1"), ("remove", "t2"), ("close", "recorder")]


def test_delete_goes_on_past_missing_objects_and_reports_them(manager):
    manager.add_text(conf())
    from etmem.config import parse_keyfile

    groups = parse_keyfile("[task]\nproject=p\nengine=recorder\nname=nope\n[project]\nname=p\n", "d.conf")
    with pytest.raises(ObjectError) as info:
        manager.delete_groups(groups)
    assert "d.conf:1:" in str(info.value) and "has no task nope" in str(info.value)
    assert manager.projects == {}


def test_engine_commands_need_a_started_project_and_do_not_block_show(manager):
    manager.add_text(conf())
    with pytest.raises(ObjectError, match="is not started"):
        manager.engine_command("p", "recorder", "hello")
    manager.start("p")
    assert manager.engine_command("p", "recorder", "hello", "t1") == "hello for t1"
    with pytest.raises(ObjectError, match="has no task zz"):
        manager.engine_command("p", "recorder", "hello", "zz")
    slow = threading.Thread(target=manager.engine_command, args=("p", "recorder", "slow"))
    slow.start()
    assert Recorder.entered.wait(5)
    show = threading.Thread(target=manager.show)
    show.start()
    show.join(5)
    finished_while_command_ran = not show.is_alive() and slow.is_alive()
    Recorder.gate.set()
    slow.join()
    assert finished_while_command_ran


def test_round_errors_are_kept_in_stats_not_raised(manager):
    manager.add_text(conf())
    task = manager.project("p").engine("recorder").task("t1")

    def broken(task, stop):
        raise etmem.EtmemError("process 1234 does not exist")

    stats = task.run_round(broken)
    assert stats.last_error == "process 1234 does not exist" and stats.rounds == 1


def test_unknown_objects_name_what_exists(manager):
    manager.add_text(conf())
    with pytest.raises(ObjectError, match=r"project zz does not exist \(projects: p\)"):
        manager.start("zz")
    with pytest.raises(ObjectError, match=r"has no engine slide \(it has: recorder\)"):
        manager.project("p").engine("slide")


def test_python_built_project_is_managed_like_a_file(manager):
    project = etmem.Project(name="py", loop=1, interval=1, sleep=1, plugins=manager.plugins)
    engine = project.add_engine("recorder")
    engine.add_task("t", "pid", os.getpid(), level=2)
    manager.add(project)
    manager.start("py")
    assert manager.show("py")[0]["tasks"][0]["started"]
    manager.stop("py")
    with pytest.raises(ObjectError, match="already exists"):
        manager.add(project)


class SelfScheduled(Strategy):
    """An engine that runs its own rounds on a round timer, as damon does."""

    name = "self_scheduled"
    schedule = "self"

    def __init__(self, engine):
        super().__init__(engine)
        from etmem.rounds import RoundTimer
        self.timer = RoundTimer("self", 0.05, lambda tasks, stop: {}, engine.round_finished)

    def start_task(self, task):
        self.timer.add(task)

    def stop_task(self, task):
        self.timer.remove(task)


class Observer:
    seen: list = []

    @hookimpl
    def etmem_engine_types(self):
        return [SelfScheduled]

    @hookimpl
    def etmem_round_finished(self, task, stats):
        Observer.seen.append((task.name, stats.rounds))


def test_round_finished_fires_for_an_engine_that_schedules_itself():
    Observer.seen = []
    m = Manager(Plugins(entry_points=False, extra=(Observer(),)))
    try:
        project = etmem.Project(name="s", loop=1, interval=1, sleep=1, plugins=m.plugins)
        project.add_engine("self_scheduled").add_task("t", "pid", os.getpid())
        m.add(project)
        m.start("s")
        deadline = time.monotonic() + 10
        while len(Observer.seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        m.stop("s")
    finally:
        m.close()
    assert Observer.seen[:2] == [("t", 1), ("t", 2)]


@attrs.frozen
class NamedKeys:
    eng_name: str = key(etmem.config.Name())


class Named(Strategy):
    """Instances named by a key, as thirdparty's and damon's eng_name."""

    name = "named"
    engine_keys = NamedKeys
    instance_key = "eng_name"

    def run_round(self, task, stop):
        return None


class NamedPlugin:
    @hookimpl
    def etmem_engine_types(self):
        return [Named]


def test_obj_del_finds_an_engine_by_its_instance_key():
    m = Manager(Plugins(entry_points=False, extra=(NamedPlugin(),)))
    text = "[project]\nname=p\nloop=1\ninterval=1\nsleep=1\n\n[engine]\nname=named\nproject=p\neng_name=first\n"
    m.add_text(text, "named.conf")
    assert list(m.project("p").engines) == ["first"]
    assert m.delete_text(text, "named.conf") == ["engine first", "project p"]
    assert not m.projects
