"""Prometheus text-format metrics (``/metrics``) and a health check (``/healthz``) for the PACS administrator.

Served by ``MetricsServer`` (stdlib ``http.server``, one daemon thread, requests answered one at a time) on
``node.metrics_bind:node.metrics_port`` when ``node.metrics_port`` is set. Nothing here carries PHI: no UIDs, no
patient attributes, no AE titles; label values are destination names, statuses and reasons from fixed sets.

Where the numbers come from, so that work done in worker PROCESSES is counted exactly once:

* the SQLite queue (shared by every process): jobs by status and outbound items by destination and status
  (gauges), and finished jobs: ``JobStatsScanner`` reads each job once when it has ended (whichever worker ended
  it) into the processing-time and per-stage histograms and the finished-jobs counter;
* main-process counters (``Counters``): associations, C-STOREs, bytes received (the SCP runs in the main process),
  sends (sender threads), reloads and retention;
* a ``NodeState`` snapshot the service builds for each scrape: listener, workers, configuration generation, disk.

Counters start at zero when the node starts (Prometheus handles resets); the job histograms count jobs that end
while this node process runs (including jobs that were pending or running when it started).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STAGE_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# job summary key (milliseconds, written by the pipelines) -> stage label
STAGE_KEYS = {"decode_ms": "decode", "detect_ms": "detect", "measure_ms": "measure", "write_ms": "write"}
FINAL_JOB_STATES = ("done", "error", "dropped")


# ---- counters and histograms -------------------------------------------------------------------------------------


class Counters:
    """Thread-safe monotonic counters keyed by (metric name, labels), kept in the main process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, Labels], float] = {}

    def inc(self, name: str, n: float = 1.0, **labels: str) -> None:
        if n < 0:
            raise ValueError(f"counter {name} cannot decrease (n={n})")
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + n

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def snapshot(self) -> dict[tuple[str, Labels], float]:
        with self._lock:
            return dict(self._values)


@dataclass
class Histogram:
    """Cumulative histogram (seconds) in the Prometheus sense: ``counts[i]`` observations <= ``buckets[i]``."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if list(self.buckets) != sorted(self.buckets):
            raise ValueError(f"histogram buckets must ascend: {self.buckets}")
        if not self.counts:
            self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            return  # a clock step or a bad summary value: not a duration
        for i, upper in enumerate(self.buckets):
            if value <= upper:
                self.counts[i] += 1
        self.total += value
        self.count += 1


class JobStatsScanner:
    """Reads every job that ends (in any worker process) exactly once from the queue into histograms.

    Remembers the newest job id seen and the ids that were still pending or running. Each ``scan`` reads the jobs
    newer than that id, then asks which remembered ids are no longer pending or running (an indexed query) and
    reads just those: the cost follows the new jobs and the backlog, not the history. A job is observed when it
    has ended, never twice; rows pruned by retention in between are simply forgotten.
    """

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self._lock = threading.Lock()
        self._high = int(queue.max_job_id())
        self._open: set[int] = set(queue.open_job_ids())
        self.finished: dict[str, int] = dict.fromkeys(FINAL_JOB_STATES, 0)
        self.job_seconds = Histogram(JOB_SECONDS_BUCKETS)
        self.stage_seconds: dict[str, Histogram] = {s: Histogram(STAGE_SECONDS_BUCKETS) for s in STAGE_KEYS.values()}

    def scan(self) -> None:
        with self._lock:
            for job in self.queue.job_timings(self._high + 1):
                self._high = max(self._high, job.id)
                if job.status in FINAL_JOB_STATES:
                    self._observe(job)
                else:
                    self._open.add(job.id)
            if not self._open:
                return
            still_open = set(self.queue.open_job_ids())
            ended = self._open - still_open
            if not ended:
                return
            keep: set[int] = set()
            for job in self.queue.job_timings(ids=ended):
                if job.status in FINAL_JOB_STATES:
                    self._observe(job)
                else:  # became open again between the two queries: watch it
                    keep.add(job.id)
            self._open = (self._open & still_open) | keep  # ended ones observed, pruned ones forgotten

    def _observe(self, job: Any) -> None:
        self.finished[job.status] = self.finished.get(job.status, 0) + 1
        if job.claimed_at is not None and job.finished_at is not None:
            self.job_seconds.observe(float(job.finished_at) - float(job.claimed_at))
        for key, stage in STAGE_KEYS.items():
            value = job.summary.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.stage_seconds[stage].observe(float(value) / 1000.0)


# ---- the node's state at scrape time -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeState:
    """What the service reports at scrape time (main-process facts; disk in bytes, times in POSIX seconds)."""

    listening: bool
    draining: bool
    active_associations: int
    workers_configured: int
    workers_alive: int
    workers_ready: int
    worker_restarts: int
    jobs_requeued: int
    jobs_failed_by_worker_deaths: int
    config_generation: int
    last_reload_ok: bool | None  # None: no reload yet
    last_reload_at: float | None
    sends: Mapping[str, Mapping[str, int]]  # destination -> {ok, retry, dead} since start
    disk_free_bytes: int
    disk_watermark_bytes: int
    started_at: float
    port: int | None = None


def health(state: NodeState) -> tuple[bool, str]:
    """(healthy, one-line reason): healthy when the DICOM listener is up and every worker is alive and ready."""
    if state.draining:
        return False, "draining: the node is stopping"
    if not state.listening:
        return False, "the DICOM listener is not up"
    if state.workers_alive < state.workers_configured:
        return False, f"{state.workers_alive}/{state.workers_configured} workers alive"
    if state.workers_ready < state.workers_configured:
        return False, (f"{state.workers_ready}/{state.workers_configured} workers ready "
                       "(building pipelines after a start or reload)")
    return True, (f"ok: listening on port {state.port}, {state.workers_alive}/{state.workers_configured} "
                  "workers alive and ready")


# ---- text format -------------------------------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    items = [f'{k}="{_escape(str(v))}"' for k, v in labels]
    return "{" + ",".join(items) + "}" if items else ""


class Exposition:
    """Builds the Prometheus text format (version 0.0.4): one HELP/TYPE header per family, then its samples."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._families: set[str] = set()

    def family(self, name: str, kind: str, help_text: str) -> None:
        if name in self._families:
            raise ValueError(f"metric family {name} declared twice")
        self._families.add(name)
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Iterable[tuple[str, str]] = ()) -> None:
        self._lines.append(f"{name}{_labels(labels)} {_fmt(value)}")

    def metric(self, name: str, kind: str, help_text: str, value: float,
               labels: Iterable[tuple[str, str]] = ()) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value, labels)

    def histogram(self, name: str, help_text: str, series: Mapping[Labels, Histogram]) -> None:
        self.family(name, "histogram", help_text)
        for labels, h in series.items():
            for upper, n in zip(h.buckets, h.counts, strict=True):
                self.sample(f"{name}_bucket", n, (*labels, ("le", _fmt(upper))))
            self.sample(f"{name}_bucket", h.count, (*labels, ("le", "+Inf")))
            self.sample(f"{name}_sum", h.total, labels)
            self.sample(f"{name}_count", h.count, labels)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


# counter families kept in ``Counters``: name -> (help, label sets always shown, zero or not)
REJECT_REASONS = ("shutting_down", "called_ae", "calling_ae", "calling_host", "limit")
COUNTER_HELP: dict[str, tuple[str, tuple[Labels, ...]]] = {
    "dicomnode_associations_accepted_total": ("DICOM associations accepted", ((),)),
    "dicomnode_associations_rejected_total": (
        "DICOM associations rejected (A-ASSOCIATE-RJ), by reason",
        tuple((("reason", r),) for r in REJECT_REASONS),
    ),
    "dicomnode_cecho_total": ("C-ECHO requests answered", ((),)),
    "dicomnode_cstore_total": (
        "C-STORE requests answered, by DIMSE status (0x0000 success, 0xA700 disk below the watermark, ...)",
        ((("status", "0x0000"),),),
    ),
    "dicomnode_received_bytes_total": ("bytes of received objects spooled", ((),)),
    "dicomnode_config_reloads_total": (
        "configuration reloads (SIGHUP), by result", ((("result", "applied"),), (("result", "refused"),)),
    ),
    "dicomnode_retention_deleted_files_total": (
        "files deleted by retention, by area", ((("area", "objects"),), (("area", "results"),)),
    ),
    "dicomnode_retention_deleted_bytes_total": ("bytes freed by retention", ((),)),
    "dicomnode_retention_pruned_jobs_total": ("job rows pruned by retention (with their sent outbound rows)", ((),)),
    "dicomnode_retention_runs_total": ("retention passes, by result (ok or failed)",
                                       ((("result", "ok"),), (("result", "failed"),))),
}


def render(state: NodeState, counters: Counters, scanner: JobStatsScanner, queue: Any,
           gauges: Mapping[str, tuple[str, Mapping[Labels, float]]] | None = None) -> str:
    """The whole ``/metrics`` page. ``gauges``: extra gauge families (name -> (help, labels -> value))."""
    scanner.scan()
    out = Exposition()
    snap = counters.snapshot()
    for name, (help_text, always) in COUNTER_HELP.items():
        series = dict.fromkeys(always, 0.0)
        series.update({labels: v for (n, labels), v in snap.items() if n == name})
        out.family(name, "counter", help_text)
        for labels, value in sorted(series.items()):
            out.sample(name, value, labels)

    counts = queue.job_counts()
    out.family("dicomnode_jobs", "gauge", "jobs in the queue by status (rows kept by retention)")
    for status, n in sorted(counts.items()):
        out.sample("dicomnode_jobs", n, (("status", status),))
    out.family("dicomnode_jobs_finished_total", "counter", "jobs that ended while this node ran, by final status")
    for status, n in sorted(scanner.finished.items()):
        out.sample("dicomnode_jobs_finished_total", n, (("status", status),))
    out.histogram("dicomnode_job_processing_seconds",
                  "seconds from a worker claiming a job to its end (route, pipeline, writing results)",
                  {(): scanner.job_seconds})
    out.histogram("dicomnode_stage_seconds", "seconds per pipeline stage, from job summaries",
                  {(("stage", s),): h for s, h in scanner.stage_seconds.items()})

    out.family("dicomnode_outbound_items", "gauge", "outbound queue items by destination and status")
    for dest, by_status in sorted(queue.outbound_summary().items()):
        for status, n in sorted(by_status.items()):
            out.sample("dicomnode_outbound_items", n, (("destination", dest), ("status", status)))
    out.family("dicomnode_sends_total", "counter", "outbound C-STORE outcomes since start, by destination and "
               "result (ok, retry: transient failure, dead: dead-lettered)")
    for dest, by_result in sorted(state.sends.items()):
        for result in ("ok", "retry", "dead"):
            out.sample("dicomnode_sends_total", by_result.get(result, 0), (("destination", dest), ("result", result)))

    out.metric("dicomnode_disk_free_bytes", "gauge", "free bytes on the storage filesystem", state.disk_free_bytes)
    out.metric("dicomnode_disk_watermark_bytes", "gauge",
               "free-space watermark (node.min_free_disk_mb): below it C-STOREs are refused with 0xA700",
               state.disk_watermark_bytes)
    out.metric("dicomnode_config_generation", "gauge", "configuration generation (0 at start, +1 per applied reload)",
               state.config_generation)
    out.metric("dicomnode_config_last_reload_success", "gauge",
               "1 if the last reload was applied, 0 if it was refused, -1 if there was none",
               -1 if state.last_reload_ok is None else int(state.last_reload_ok))
    out.metric("dicomnode_config_last_reload_timestamp_seconds", "gauge", "time of the last reload (0: none)",
               state.last_reload_at or 0)
    out.metric("dicomnode_workers", "gauge", "configured worker processes (node.workers)", state.workers_configured)
    out.metric("dicomnode_workers_alive", "gauge", "worker processes alive", state.workers_alive)
    out.metric("dicomnode_workers_ready", "gauge", "workers that built the pipelines of the current configuration",
               state.workers_ready)
    out.metric("dicomnode_worker_restarts_total", "counter", "dead workers replaced", state.worker_restarts)
    out.metric("dicomnode_jobs_requeued_total", "counter", "jobs queued again because their worker died",
               state.jobs_requeued)
    out.metric("dicomnode_jobs_failed_worker_deaths_total", "counter",
               "jobs ended in error after node.max_worker_deaths_per_job worker deaths", state.jobs_failed_by_worker_deaths)
    out.metric("dicomnode_listener_up", "gauge", "1 while the DICOM listener accepts associations",
               int(state.listening and not state.draining))
    out.metric("dicomnode_associations_active", "gauge", "open DICOM associations (and connections)",
               state.active_associations)
    healthy, _ = health(state)
    out.metric("dicomnode_up", "gauge", "1 when /healthz answers 200", int(healthy))
    out.metric("dicomnode_start_time_seconds", "gauge", "when this node process started", state.started_at)
    for name, (help_text, gauge_series) in sorted((gauges or {}).items()):
        out.family(name, "gauge", help_text)
        for labels, value in sorted(gauge_series.items()):
            out.sample(name, value, labels)
    return out.text()


# ---- HTTP ----------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer
    timeout = 10  # a client that stalls cannot hold the (single) serving thread longer
    server_version = "dicom-node-metrics"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body, code = self.server.render_metrics().encode(), 200
            except Exception:  # noqa: BLE001 - answer 500, keep serving
                log.exception("metrics: cannot render /metrics")
                body, code = b"internal error while collecting metrics\n", 500
            self._reply(code, body, CONTENT_TYPE)
        elif path == "/healthz":
            try:
                ok, reason = self.server.check_health()
            except Exception as exc:  # noqa: BLE001
                log.exception("metrics: cannot evaluate /healthz")
                ok, reason = False, f"health check failed: {type(exc).__name__}"
            self._reply(200 if ok else 503, (reason.splitlines()[0] + "\n").encode(), "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("metrics %s: " + format, self.client_address[0], *args)


class _MetricsHTTPServer(HTTPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], render_metrics: Callable[[], str],
                 check_health: Callable[[], tuple[bool, str]]) -> None:
        self.render_metrics = render_metrics
        self.check_health = check_health
        super().__init__(address, _Handler)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``bind:port`` (port 0: an ephemeral one, see ``port``), in a daemon thread."""

    def __init__(self, bind: str, port: int, render_metrics: Callable[[], str],
                 check_health: Callable[[], tuple[bool, str]]) -> None:
        self.bind = bind
        self.requested_port = port
        self._render = render_metrics
        self._health = check_health
        self._server: _MetricsHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        self._server = _MetricsHTTPServer((self.bind, self.requested_port), self._render, self._health)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics: serving /metrics and /healthz on http://%s:%d", self.bind, self.port)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MetricsServer not started")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        log.info("metrics: stopped")

