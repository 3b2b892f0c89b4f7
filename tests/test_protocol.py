"""The wire protocol: the exact request bytes of upstream's client, reply framing, limits."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etmem import protocol
from etmem.errors import Cause
from etmem.protocol import Command, ProtocolError, Reply, Request

# Bytes observed from upstream's C client: one ASCII request line, absent values sent as "-", no newline.
UPSTREAM_OBJ_ADD = b"proj_name - file_name /etc/etmem/a.conf cmd 0 eng_name - eng_cmd - task_name -"
UPSTREAM_SHOW_ALL = b"proj_name - file_name - cmd 4 eng_name - eng_cmd - task_name -"
UPSTREAM_START = b"proj_name proj1 file_name - cmd 2 eng_name - eng_cmd - task_name -"
UPSTREAM_ENGINE = b"proj_name proj1 file_name - cmd 5 eng_name cslide eng_cmd showtaskpages task_name t1"


@pytest.mark.parametrize("request_, wire", [
    (Request(Command.OBJ_ADD, file="/etc/etmem/a.conf"), UPSTREAM_OBJ_ADD),
    (Request(Command.PROJECT_SHOW), UPSTREAM_SHOW_ALL),
    (Request(Command.PROJECT_START, project="proj1"), UPSTREAM_START),
    (Request(Command.ENGINE, project="proj1", engine="cslide", engine_cmd="showtaskpages", task="t1"),
     UPSTREAM_ENGINE),
    (Request(Command.OBJ_DEL, file="rel/b.conf"),
     b"proj_name - file_name rel/b.conf cmd 1 eng_name - eng_cmd - task_name -"),
    (Request(Command.PROJECT_STOP, project="p"),
     b"proj_name p file_name - cmd 3 eng_name - eng_cmd - task_name -"),
    (Request(Command.PROJECT_SHOW, project="p"),
     b"proj_name p file_name - cmd 4 eng_name - eng_cmd - task_name -"),
])
def test_requests_encode_to_upstream_client_bytes_and_back(request_, wire):
    assert request_.encode() == wire
    assert protocol.decode_request(wire) == request_


def test_show_json_and_verbose_are_sent_in_the_otherwise_unused_eng_cmd_field():
    req = Request(Command.PROJECT_SHOW, engine_cmd=protocol.SHOW_JSON)
    assert req.encode() == b"proj_name - file_name - cmd 4 eng_name - eng_cmd json task_name -"
    assert protocol.decode_request(req.encode()).wants_json
    req = Request(Command.PROJECT_SHOW, engine_cmd=protocol.SHOW_VERBOSE)
    assert req.encode() == b"proj_name - file_name - cmd 4 eng_name - eng_cmd verbose task_name -"
    assert protocol.decode_request(req.encode()).wants_stats


def test_reply_tags_are_ff_for_success_and_fe_for_failure():
    assert protocol.encode_reply("", True) == b"\xff"
    assert protocol.encode_reply("error: x", False) == b"error: x\xfe"
    assert Reply.decode(b"text\xff") == Reply("text", True)
    assert Reply.decode(b"error: no\n\xfe") == Reply("error: no\n", False)
    with pytest.raises(ProtocolError, match="without finishing"):
        Reply.decode(b"cut off")


def test_abstract_address_is_nul_and_name_without_trailing_nul():
    assert protocol.socket_address("etmemd_socket") == b"\0etmemd_socket"


@pytest.mark.parametrize("name, ok", [("a" * 106, True), ("a" * 107, False), ("", False), ("a\0b", False)])
def test_socket_names_follow_upstreams_limit(name, ok):
    if ok:
        protocol.check_socket_name(name)
    else:
        with pytest.raises(ProtocolError):
            protocol.check_socket_name(name)


@pytest.mark.parametrize("data, message", [
    (b"", "empty request"),
    (b"hello", "expected 12"),
    (b"proj_name - file_name - cmd 9 eng_name - eng_cmd - task_name -", "unknown command number 9"),
    (b"proj_name - file_name - cmd x eng_name - eng_cmd - task_name -", "cmd must be a number"),
    (b"proj_name - file_name - cmd - eng_name - eng_cmd - task_name -", "cmd must be a number"),
    (b"proj_name - file_name - cmd -1 eng_name - eng_cmd - task_name -", "cmd must be a number"),
    (b"file_name - proj_name - cmd 4 eng_name - eng_cmd - task_name -", "expected 'proj_name'"),
    (b"proj_name  file_name - cmd 4 eng_name - eng_cmd - task_name -", "empty value for proj_name"),
    (b"proj_name - file_name - cmd 2 eng_name - eng_cmd - task_name -", "needs a project name"),
    (b"proj_name - file_name - cmd 0 eng_name - eng_cmd - task_name -", "needs a config file name"),
    (b"proj_name p file_name - cmd 5 eng_name - eng_cmd x task_name -", "needs a engine name"),
    (b"proj_name p file_name /a cmd 2 eng_name - eng_cmd - task_name -", "takes no config file"),
    (b"proj_name -p file_name - cmd 2 eng_name - eng_cmd - task_name -", "must not start with '-'"),
    (b"proj_name - file_name - cmd 4 eng_name - eng_cmd xml task_name -", "other than 'json' or 'verbose'"),
    (b"proj_name \xff file_name - cmd 2 eng_name - eng_cmd - task_name -", "not UTF-8"),
    (b"proj_name p\tq file_name - cmd 2 eng_name - eng_cmd - task_name -", "white space"),
    (b"x" * 513, "longer than 512"),
])
def test_malformed_requests_are_refused_with_a_reason(data, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_request(data)


def test_a_trailing_newline_from_a_hand_written_client_is_tolerated():
    assert protocol.decode_request(UPSTREAM_START + b"\n") == protocol.decode_request(UPSTREAM_START)


def test_requests_of_exactly_512_bytes_pass_and_513_do_not():
    base = Request(Command.PROJECT_START, project="p").encode()
    name = "p" * (1 + 512 - len(base))
    assert len(Request(Command.PROJECT_START, project=name).encode()) == 512
    with pytest.raises(ProtocolError, match="at most 512"):
        Request(Command.PROJECT_START, project=name + "p").encode()


@pytest.mark.parametrize("value", ["a b", "-x", "", "a\nb"])
def test_values_that_cannot_travel_are_refused_before_sending(value):
    with pytest.raises(ProtocolError):
        Request(Command.PROJECT_START, project=value).encode()


names = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1,
                max_size=20).filter(lambda s: not s.startswith("-") and not any(c.isspace() for c in s))


@settings(max_examples=300)
@given(cmd=st.sampled_from(list(Command)), project=names, engine=names, engine_cmd=names,
       task=st.none() | names, file=names)
def test_every_valid_request_survives_encode_and_decode(cmd, project, engine, engine_cmd, task, file):
    fields = {
        Command.OBJ_ADD: dict(file=file), Command.OBJ_DEL: dict(file=file),
        Command.PROJECT_START: dict(project=project), Command.PROJECT_STOP: dict(project=project),
        Command.PROJECT_SHOW: dict(project=project),
        Command.ENGINE: dict(project=project, engine=engine, engine_cmd=engine_cmd, task=task),
    }[cmd]
    req = Request(cmd, **fields)
    assert protocol.decode_request(req.encode()) == req


SHOWN = [
    {"name": "web", "started": True, "scan_type": "page", "tasks": [
        {"number": 1, "type": "pid", "value": "1234", "name": "t1", "engine": "slide", "started": True,
         "stats": {"rounds": 3, "last_error": "no such process", "source": None, "calls": {"swap": {"n": 2}},
                   "last_round": [{"pid": 1234}]}},
        {"number": 2, "type": "name", "value": "mysqld", "name": "t2", "engine": "slide", "started": True,
         "stats": {}},
        {"number": 3, "type": "name", "value": "a_process_name_", "name": "a_task_name_of_20", "engine": "cslide",
         "started": False, "stats": {}},
    ]},
    {"name": "db", "started": False, "scan_type": "page", "tasks": []},
]

# What upstream's etmemd writes for these projects: printf("%-8s %-8s %-16s %-16s %-16s %-8s\n") rows,
# projects newest first, engines newest first and their tasks newest first, numbers from 1 per
# engine, `started` the project's state.
UPSTREAM_SHOW = (
    b"project: db\n"
    b"number   type     value            name             engine           started \n"
    b"project: web\n"
    b"number   type     value            name             engine           started \n"
    b"1        name     a_process_name_  a_task_name_of_20 cslide           true    \n"
    b"1        name     mysqld           t2               slide            true    \n"
    b"2        pid      1234             t1               slide            true    \n"
)


def test_show_text_is_upstreams_table_byte_for_byte():
    assert protocol.render_show_text(SHOWN).encode() == UPSTREAM_SHOW


def test_show_of_nothing_and_of_an_absent_project_are_upstreams_texts():
    assert protocol.render_show_text([]) == "no project exists\n\n"
    assert protocol.show_absent("ABSENT") == "project: project ABSENT is not existed\n\n"


def test_verbose_show_adds_each_tasks_statistics_below_the_table():
    text = protocol.render_show_text(SHOWN, stats=True)
    assert text.startswith(UPSTREAM_SHOW.decode().split("project: web")[0] + "project: web\n")
    web = text.split("project: web\n", 1)[1]
    assert web.splitlines()[4:] == [
        "",
        "stats of task t1 (engine slide):",
        "  rounds        3",
        "  last_error    no such process",
        "  calls.swap.n  2",
        "",
    ]


def test_verbose_show_says_why_the_last_round_did_nothing_to_each_target():
    skipped_target = "process 1234 has 12 MiB resident, not above swap_threshold=1 GiB"
    task = {"number": 1, "type": "name", "value": "nginx", "name": "t1", "engine": "slide", "started": True,
            "stats": {"rounds": 2, "last_round": [{"pid": 1234, "skipped": skipped_target},
                                                  {"pid": 1235, "skipped": None},
                                                  {"pid": None, "detail": {"cgroup": "/web"}, "skipped": "its 0 KiB"}]}}
    project = {"name": "web", "started": True, "scan_type": "page", "tasks": [task]}
    lines = protocol.render_show_text([project], stats=True).splitlines()
    assert lines[4:] == [
        "stats of task t1 (engine slide):",
        "  rounds                   2",
        f"  last_round.1234.skipped  {skipped_target}",
        "  last_round./web.skipped  its 0 KiB",
        "",
    ]
    # a round skipped as a whole says so, and the targets of an older round are not shown as this one's
    task["stats"]["skipped"] = "free memory is 81% of total, not below sysmem_threshold=80%: nothing to do"
    lines = protocol.render_show_text([project], stats=True).splitlines()
    assert lines[5:] == ["  rounds   2", "  skipped  free memory is 81% of total, not below sysmem_threshold=80%: "
                                        "nothing to do", ""]
    # the default table is upstream's, whatever the statistics say
    assert protocol.render_show_text([project]) == protocol.render_show_text([project], stats=False)
    assert "skipped" not in protocol.render_show_text([project])


def test_a_failure_text_starts_with_upstreams_line_for_the_cause():
    assert protocol.failure_text(Cause.PROJECT_MISSING) == "error: project is not exist"
    assert protocol.failure_text(Cause.TASK_EXISTS, "t.conf:9: [task] task t1 already exists\n") == \
        "error: task has been existed\nt.conf:9: [task] task t1 already exists"
    assert [f"error: {c.value}" for c in Cause] == [
        "error: invalid parameters", "error: project has been existed", "error: project is not exist",
        "error: project has been started", "error: project has been stopped", "error: engine has been existed",
        "error: engine is not exist", "error: task has been existed", "error: task is not exist",
        "error: etmemd has internal error, see reason details in messages"]


def test_show_json_is_the_managers_show_list():
    assert json.loads(protocol.render_show_json(SHOWN)) == SHOWN


def test_a_task_without_type_and_value_shows_dashes_in_the_table():
    projects = [{"name": "c", "started": False, "tasks": [
        {"number": 1, "type": None, "value": None, "name": "web", "engine": "psi", "started": False, "stats": {}}]}]
    text = protocol.render_show_text(projects)
    assert text.splitlines()[2] == "%-8d %-8s %-16s %-16s %-16s %-8s" % (1, "-", "-", "web", "psi", "false")
