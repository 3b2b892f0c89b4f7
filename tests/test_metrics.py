"""The Prometheus endpoint: a real slide task on a real workload, scraped over HTTP and parsed by
prometheus_client's own parser, in-process and from a real etmemd --metrics; the address rules
and a taken port."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest

import etmem
from etmem.metrics import ManagerCollector, MetricsError, MetricsServer, parse_address
from etmemd_harness import Etmemd, script, unique_socket_name, write_config

prometheus_client = pytest.importorskip("prometheus_client", reason="metrics need prometheus-client (a dependency)")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def scrape(server: MetricsServer) -> dict:
    """{(sample name, frozenset of labels): value} of one scrape."""
    with urllib.request.urlopen(server.url, timeout=10) as reply:
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def task_sample(samples, name, **labels):
    want = {"project": "m", "engine": "slide", "task": "w", **labels}
    return samples[(name, frozenset(want.items()))]


def test_the_endpoint_serves_every_task_figure_and_its_counters_grow_across_rounds(need_root, zram_swap, workload_factory):
    w = workload_factory(total_mb=48, hot_mb=8)
    project = etmem.Project(name="m", loop=2, interval=1, sleep=1, scanner="smaps")
    task = project.add_engine("slide").add_task("w", "pid", w.pid, T=1)
    manager = etmem.Manager()
    manager.add(project)
    with MetricsServer(manager, "127.0.0.1", 0) as server:
        task.run_round()
        first = scrape(server)
        task.run_round()
        task.run_round()
        later = scrape(server)
    assert task_sample(first, "etmem_task_rounds_total") == 1 and task_sample(later, "etmem_task_rounds_total") == 3
    assert task_sample(later, "etmem_task_pages_scanned_total") > task_sample(first, "etmem_task_pages_scanned_total")
    assert task_sample(later, "etmem_task_round_seconds_total") > task_sample(first, "etmem_task_round_seconds_total") > 0
    swapped = task_sample(later, "etmem_task_pages_swapped_total")
    assert swapped == task.stats.pages_swapped and swapped * 4096 >= 0.9 * (w.cold[1] - w.cold[0])
    assert task_sample(later, "etmem_kernel_calls_total", call="process_madvise") >= 1
    # The call counter counts what the kernel accepted; a page it accepted may still stay in
    # memory (pinned, or touched during the call), so the task's swapped figure is at most that.
    accepted = task_sample(later, "etmem_kernel_call_pages_total", call="process_madvise", kind="done")
    requested = task_sample(later, "etmem_kernel_call_pages_total", call="process_madvise", kind="requested")
    assert swapped <= accepted <= requested and accepted - swapped <= 0.01 * swapped
    assert task_sample(later, "etmem_task_swapped_bytes") >= swapped * 4096 * 0.99
    assert 8 << 20 <= task_sample(later, "etmem_task_working_set_bytes") < 24 << 20
    assert task_sample(later, "etmem_task_resident_bytes") == task.stats.resident_bytes
    assert task_sample(later, "etmem_task_started") == 0 and task_sample(later, "etmem_task_last_round_failed") == 0
    assert later[("etmem_project_started", frozenset({("project", "m")}))] == 0
    assert later[("process_cpu_seconds_total", frozenset())] > 0
    assert later[("process_resident_memory_bytes", frozenset())] > 0


class Shown:
    """A stand-in manager: show() returns what it was given."""

    def __init__(self, projects):
        self.projects = projects

    def show(self):
        return self.projects


def test_kernel_call_errors_and_cslide_moves_are_labelled_by_errno_and_direction():
    stats = {"rounds": 2, "extra": {"cslide": {"promoted_pages": 5, "demoted_pages": 7}},
             "calls": {"move_pages": {"calls": 3, "pages_requested": 30, "pages_done": 20, "bytes": 81920,
                                      "errors": {"ENODEV": 1, "EBUSY": 9}}}}
    shown = Shown([{"name": "m", "started": True,
                    "tasks": [{"engine": "slide", "name": "w", "started": True, "stats": stats}]}])
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(ManagerCollector(shown))
    text = prometheus_client.generate_latest(registry).decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert task_sample(samples, "etmem_kernel_call_errors_total", call="move_pages", errno="EBUSY") == 9
    assert task_sample(samples, "etmem_kernel_call_errors_total", call="move_pages", errno="ENODEV") == 1
    assert task_sample(samples, "etmem_task_pages_moved_total", direction="demote") == 7
    assert task_sample(samples, "etmem_task_pages_moved_total", direction="promote") == 5
    assert ("etmem_task_working_set_bytes", frozenset({("project", "m"), ("engine", "slide"), ("task", "w")})) not in samples


@pytest.mark.parametrize("text, allow, expected", [
    ("9464", False, ("127.0.0.1", 9464)),
    ("127.0.0.1:9464", False, ("127.0.0.1", 9464)),
    ("[::1]:9464", False, ("::1", 9464)),
    ("localhost:0", False, ("localhost", 0)),
    ("0.0.0.0:9464", True, ("0.0.0.0", 9464)),
])
def test_metrics_addresses_that_are_accepted(text, allow, expected):
    assert parse_address(text, allow_remote=allow) == expected


@pytest.mark.parametrize("text, message", [
    ("0.0.0.0:9464", "--metrics '0.0.0.0:9464': 0.0.0.0 is not a loopback address (0.0.0.0); the metrics tell"),
    ("http", "--metrics 'http': expected PORT or HOST:PORT with a port from 0 to 65535"),
    ("127.0.0.1:65536", "--metrics '127.0.0.1:65536': expected PORT or HOST:PORT"),
    ("127.0.0.1:", "--metrics '127.0.0.1:': expected PORT or HOST:PORT"),
    ("no-such-host.invalid:9464", "--metrics 'no-such-host.invalid:9464': cannot resolve host 'no-such-host.invalid'"),
])
def test_metrics_addresses_that_are_refused_say_why(text, message):
    with pytest.raises(MetricsError) as err:
        parse_address(text)
    assert str(err.value).startswith(message)
    if "loopback" in message:
        assert str(err.value).endswith("needs --metrics-allow-remote as well")


def test_a_taken_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError) as err:
            MetricsServer(Shown([]), "127.0.0.1", port)
    assert str(err.value) == (f"cannot serve metrics on 127.0.0.1:{port}: Address already in use "
                              "(another program listens there: choose another port)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_etmemd_serves_metrics_whose_counters_grow_across_rounds(need_root, tmp_path, workload_factory):
    w = workload_factory(total_mb=32, hot_mb=8)
    port = free_port()
    daemon = Etmemd(tmp_path, args=("--metrics", f"127.0.0.1:{port}")).start()
    try:
        conf = write_config(tmp_path / "m.conf", f"""
            [project]
            name=m
            loop=1
            interval=1
            sleep=1
            scanner=smaps

            [engine]
            name=slide
            project=m

            [task]
            project=m
            engine=slide
            name=w
            type=pid
            value={w.pid}
            T=1
            dry_run=yes
            """)
        assert daemon.etmem("obj", "add", "-f", str(conf)).returncode == 0
        assert daemon.etmem("project", "start", "-n", "m").returncode == 0
        url = f"http://127.0.0.1:{port}/metrics"
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(seen) < 2 or seen[-1] <= seen[0]):
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            samples = {(s.name, frozenset(s.labels.items())): s.value
                       for family in text_string_to_metric_families(text) for s in family.samples}
            rounds = samples.get(("etmem_task_rounds_total", frozenset({("project", "m"), ("engine", "slide"), ("task", "w")})))
            if rounds:
                seen.append(rounds)
            time.sleep(0.5)
        assert len(seen) >= 2 and seen[-1] > seen[0], seen
        assert task_sample(samples, "etmem_task_started") == 1
        assert task_sample(samples, "etmem_task_pages_chosen_total") > 0
        assert task_sample(samples, "etmem_task_pages_swapped_total") == 0
        assert samples[("process_resident_memory_bytes", frozenset())] > 0
    finally:
        assert daemon.stop() == 0


def test_etmemd_on_a_taken_metrics_port_says_so_and_exits(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([script("etmemd"), "-s", unique_socket_name("m"), "--metrics", str(port)],
                             capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


@pytest.mark.parametrize("args, says", [
    (["--metrics", "0.0.0.0:9464"], "error: --metrics '0.0.0.0:9464': 0.0.0.0 is not a loopback address"),
    (["--metrics", "9464x"], "error: --metrics '9464x': expected PORT or HOST:PORT"),
    (["--metrics-allow-remote"], "error: --metrics-allow-remote goes with --metrics HOST:PORT"),
])
def test_etmemd_refuses_bad_metrics_options_as_any_bad_option(args, says):
    out = subprocess.run([script("etmemd"), "-s", unique_socket_name("m"), *args], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 255 and out.stdout.startswith(says), out.stdout
    assert out.stdout.endswith("fail to parse parameters to start etmemd\n") and "Traceback" not in out.stderr
