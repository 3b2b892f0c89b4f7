"""Prometheus metrics of a Manager: a collector that reads `Manager.show()` at scrape time, and the HTTP endpoint `etmemd --metrics` serves.

Every figure comes from the tasks' statistics as `project show` reports them, labelled by
project, engine and task (kernel calls also by call and errno), plus the serving
process's own CPU and memory (prometheus_client's ProcessCollector). Nothing is kept
between scrapes and no global registry is touched: each `MetricsServer` has a registry of
its own. docs/observability.md lists the metrics, a scrape config and Grafana queries.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .errors import EtmemError

log = logging.getLogger("etmem.metrics")

TASK_LABELS = ("project", "engine", "task")
DEFAULT_HOST = "127.0.0.1"

# (show() stats key, metric name, help) of the counters every task has
TASK_COUNTERS = (
    ("rounds", "etmem_task_rounds", "Rounds the task has run."),
    ("pages_scanned", "etmem_task_pages_scanned", "4 KiB pages seen resident by the task's scans."),
    ("cold_pages", "etmem_task_cold_pages", "Pages the engine's rule called cold."),
    ("pages_chosen", "etmem_task_pages_chosen",
     "Pages chosen for action after limits (in a dry run: pages that would have been acted on)."),
    ("pages_swapped", "etmem_task_pages_swapped", "Pages the kernel swapped out for the task."),
    ("refaults", "etmem_task_refaults", "Pages swapped out earlier that were found resident again."),
    ("round_seconds", "etmem_task_round_seconds", "Seconds spent in the task's rounds (scanning and acting)."),
)
# (stats key, metric name, help) of the gauges of the last round that measured them
TASK_GAUGES = (
    ("targets", "etmem_task_targets", "Targets (processes or cgroups) of the last round."),
    ("last_round_seconds", "etmem_task_last_round_seconds", "Seconds the last round took."),
    ("working_set_bytes", "etmem_task_working_set_bytes",
     "Bytes of the targets' pages accessed at least once during the last round's scan passes."),
    ("resident_bytes", "etmem_task_resident_bytes", "Resident memory of the targets after the last round."),
    ("swapped_bytes", "etmem_task_swapped_bytes", "Swapped-out memory of the targets after the last round."),
)


class MetricsError(EtmemError):
    """A metrics endpoint that cannot be served as asked; says what to change."""


class ManagerCollector:
    """A prometheus_client collector over a Manager (or anything with its `show()`), read at each scrape."""

    def __init__(self, manager):
        self.manager = manager

    def describe(self) -> list:
        return []       # the families depend on the projects of the moment

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counters = {key: CounterMetricFamily(name, text, labels=TASK_LABELS) for key, name, text in TASK_COUNTERS}
        gauges = {key: GaugeMetricFamily(name, text, labels=TASK_LABELS) for key, name, text in TASK_GAUGES}
        started = GaugeMetricFamily("etmem_task_started", "1 while the task runs.", labels=TASK_LABELS)
        failing = GaugeMetricFamily("etmem_task_last_round_failed", "1 when the task's last round ended with an error.",
                                    labels=TASK_LABELS)
        moved = CounterMetricFamily("etmem_task_pages_moved", "Pages moved between NUMA nodes (cslide), by direction.",
                                    labels=TASK_LABELS + ("direction",))
        calls = CounterMetricFamily("etmem_kernel_calls", "Kernel calls the task made (process_madvise, move_pages, ...).",
                                    labels=TASK_LABELS + ("call",))
        call_pages = CounterMetricFamily("etmem_kernel_call_pages", "Pages the task's kernel calls asked for (kind=requested) and the kernel accepted (kind=done).",
                                         labels=TASK_LABELS + ("call", "kind"))
        call_bytes = CounterMetricFamily("etmem_kernel_call_bytes", "Bytes the task's kernel calls covered.",
                                         labels=TASK_LABELS + ("call",))
        call_errors = CounterMetricFamily("etmem_kernel_call_errors", "Failed kernel calls and pages, by errno.",
                                          labels=TASK_LABELS + ("call", "errno"))
        projects = GaugeMetricFamily("etmem_project_started", "1 while the project is started.", labels=("project",))
        for project in self.manager.show():
            projects.add_metric([project["name"]], 1 if project["started"] else 0)
            for task in project["tasks"]:
                labels = [project["name"], task["engine"], task["name"]]
                stats = task.get("stats") or {}
                started.add_metric(labels, 1 if task.get("started") else 0)
                failing.add_metric(labels, 1 if stats.get("last_error") else 0)
                for key, family in counters.items():
                    if stats.get(key) is not None:
                        family.add_metric(labels, stats[key])
                for key, family in gauges.items():
                    if stats.get(key) is not None:
                        family.add_metric(labels, stats[key])
                cslide = (stats.get("extra") or {}).get("cslide")
                if isinstance(cslide, dict):
                    moved.add_metric(labels + ["promote"], cslide.get("promoted_pages", 0))
                    moved.add_metric(labels + ["demote"], cslide.get("demoted_pages", 0))
                for call, row in sorted((stats.get("calls") or {}).items()):
                    calls.add_metric(labels + [call], row["calls"])
                    call_pages.add_metric(labels + [call, "requested"], row["pages_requested"])
                    call_pages.add_metric(labels + [call, "done"], row["pages_done"])
                    call_bytes.add_metric(labels + [call], row["bytes"])
                    for errno_name, n in sorted(row["errors"].items()):
                        call_errors.add_metric(labels + [call, errno_name], n)
        yield projects
        yield started
        yield failing
        yield from counters.values()
        yield from gauges.values()
        yield moved
        yield calls
        yield call_pages
        yield call_bytes
        yield call_errors


def parse_address(text: str, allow_remote: bool = False) -> tuple[str, int]:
    """(host, port) of a --metrics value: PORT, HOST:PORT or [IPV6]:PORT; the host defaults to 127.0.0.1.

    A host that is not a loopback address is refused unless allow_remote: the metrics show
    which processes etmem manages and how much of their memory is where.
    """
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "", value
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise MetricsError(f"--metrics {text!r}: expected PORT or HOST:PORT with a port from 0 to 65535 "
                           "(0: any free port), e.g. --metrics 127.0.0.1:9464")
    host = host or DEFAULT_HOST
    addresses = _addresses(host, text)
    remote = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    if remote and not allow_remote:
        raise MetricsError(f"--metrics {text!r}: {host} is not a loopback address ({', '.join(sorted(set(remote)))}); "
                           "the metrics tell which processes etmem manages and where their memory is, so serving "
                           "them beyond this machine needs --metrics-allow-remote as well")
    return host, int(port_text)


def _addresses(host: str, text: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MetricsError(f"--metrics {text!r}: cannot resolve host {host!r}: {exc.strerror}") from None
    return [info[4][0] for info in infos]


class _QuietHandler(WSGIRequestHandler):
    """Requests go to etmem's debug log, not to stderr."""

    def log_message(self, format, *args):
        log.debug("metrics: %s", format % args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class MetricsServer:
    """The text exposition of a manager's metrics over HTTP, on a thread of its own.

    `MetricsServer(manager, "127.0.0.1", 9464).start()`; `.port` is the port bound (useful
    with port 0); `.close()` stops it. A port that is taken is a MetricsError naming it.
    """

    def __init__(self, manager, host: str = DEFAULT_HOST, port: int = 0):
        try:
            from prometheus_client import CollectorRegistry, make_wsgi_app
            from prometheus_client.process_collector import ProcessCollector
        except ImportError:
            raise MetricsError("serving metrics needs prometheus-client, which is not installed: "
                               "pip install prometheus-client") from None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ManagerCollector(manager))
        ProcessCollector(registry=self.registry)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("MetricsHTTPServer", (_Server,), {"address_family": family})
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        try:
            self.httpd = make_server(host, port, make_wsgi_app(self.registry), server_class, handler_class=_QuietHandler)
        except OSError as exc:
            hint = " (another program listens there: choose another port)" if exc.errno == errno.EADDRINUSE else ""
            raise MetricsError(f"cannot serve metrics on {where}: {exc.strerror or exc}{hint}") from None
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> "MetricsServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="etmem-metrics", daemon=True)
        self._thread.start()
        log.info("serving metrics on %s", self.url)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> "MetricsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
