"""`dicom-node serve`: the running node (SCP + worker processes + one sender thread per destination).

State lives only in the storage directory (spool files and ``queue.sqlite3``): no PID file, no heartbeat file.
A restart (after a crash, kill -9 or power loss) takes up interrupted jobs (``requeue_interrupted``) and interrupted
sends (``requeue_sending``) from there.

Signals:

* SIGHUP: reload the configuration (``ConfigHolder``). A file with errors is refused and logged; the old
  configuration keeps running. Applied at once: routes, pipelines (workers rebuild them), destinations (senders
  added/removed, new host/port/AE/retry on the next batch), AE title / allowed callers / SOP classes / transfer
  syntaxes / timeouts / max associations / duplicate policy (next association), worker count, log level. A new
  ``bind``/``port`` starts a new listener first and then drains the old one (if the new one cannot bind, the old
  one keeps serving). ``storage`` needs a restart.
* SIGTERM/SIGINT: drain and exit 0: refuse new associations, finish open ones (bounded), let each worker finish
  its current job (bounded), send what is due (bounded), exit. Pending work stays queued for the next start.

systemd (``Type=notify``): READY=1 once the listener is up and every worker has built its pipelines; WATCHDOG=1
every half ``WatchdogSec`` from the main loop; STATUS= lines; RELOADING=1/READY=1 around a reload; STOPPING=1.

With ``node.metrics_port``, ``/metrics`` (Prometheus text) and ``/healthz`` are served from the listener's start
until the end of the drain (``dicom_node.metrics``); a reload that changes ``metrics_bind``/``metrics_port`` moves
them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dicom_node.config import ConfigError, ConfigHolder, load_config, summarize
from dicom_node.jobqueue import JobQueue
from dicom_node.logsafe import set_debug_phi
from dicom_node.logsetup import apply_log_level, setup_logging
from dicom_node.metrics import Counters, JobStatsScanner, MetricsServer, NodeState
from dicom_node.metrics import health as node_health
from dicom_node.metrics import render as render_metrics_text
from dicom_node.outbound import DestinationSender
from dicom_node.retention import RetentionRunner, SpoolUsage
from dicom_node.scp import StorageSCP
from dicom_node.sdnotify import SdNotifier, watchdog_interval_s
from dicom_node.spool import Spool
from dicom_node.workers import WorkerPool

log = logging.getLogger("dicom_node.service")

DEFAULT_DRAIN_S = 20.0
DEFAULT_READY_TIMEOUT_S = 600.0
STATUS_EVERY_S = 5.0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="YAML configuration file")
    parser.add_argument("--storage", type=Path, default=None, help="storage directory (overrides node.storage)")
    parser.add_argument(
        "--drain-timeout", type=float, default=DEFAULT_DRAIN_S, metavar="S",
        help=f"on SIGTERM, seconds allowed to EACH stage: open associations, workers' current jobs, due sends "
        f"(default {DEFAULT_DRAIN_S:g})",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=DEFAULT_READY_TIMEOUT_S, metavar="S",
        help="seconds to wait for the workers to build their pipelines before giving up (exit 1)",
    )


class Node:
    """The running node. ``run()`` blocks until SIGTERM/SIGINT (or ``request_stop()``) and returns the exit code."""

    def __init__(
        self,
        config_path: Path,
        storage_override: Path | None = None,
        drain_timeout_s: float = DEFAULT_DRAIN_S,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        notifier: SdNotifier | None = None,
    ) -> None:
        self.holder = ConfigHolder(config_path, storage_override)
        self.storage_override = storage_override
        self.drain_timeout_s = drain_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.notifier = notifier or SdNotifier()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.scp: StorageSCP | None = None
        self.pool: WorkerPool | None = None
        self.senders: dict[str, DestinationSender] = {}
        self.queue: JobQueue | None = None
        self.spool: Spool | None = None
        # metrics: main-process counters (they outlive a listener moved by a reload and removed senders)
        self.counters = Counters()
        self.scanner: JobStatsScanner | None = None
        self.metrics_server: MetricsServer | None = None
        self.config_generation = 0
        self.last_reload: tuple[bool, float] | None = None
        self._retired_senders: list[DestinationSender] = []  # removed destinations' senders: their counts stay in the metrics
        self._pool_view = (0, 0, 0)  # (configured, alive, ready), refreshed by the main thread only
        self._draining = False
        self._started_at = time.time()
        self.retention: RetentionRunner | None = None
        self._last_usage: SpoolUsage | None = None  # of the last retention pass
        self._last_retention_at: float | None = None

    # -- signals -------------------------------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def request_reload(self, *_: Any) -> None:
        self._reload.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def run(self) -> int:
        config = self.holder.current
        node = config.node
        storage = node.storage
        storage.mkdir(parents=True, exist_ok=True)
        log.info("starting: %s; storage %s", summarize(config), storage)
        self.notifier.status("starting: recovering the queue")
        self.queue = JobQueue(storage / "queue.sqlite3")
        self.spool = Spool(storage, node.min_free_disk_mb, node.duplicate_policy)
        removed = self.spool.cleanup_temp_files()
        jobs = self.queue.requeue_interrupted()
        sends = self.queue.requeue_sending()
        if jobs or sends or removed:
            log.warning("recovered after an unclean stop: %d interrupted job(s) and %d interrupted send(s) queued "
                        "again, %d partial temp file(s) removed", jobs, sends, removed)

        self.pool = WorkerPool(config, node.workers, self.queue,
                               on_outbound=self._wake_senders, max_worker_deaths=node.max_worker_deaths_per_job)
        self.pool.start()
        self._refresh_pool_view()
        self.notifier.status(f"starting: {node.workers} worker(s) building pipelines")
        self.scp = StorageSCP(lambda: self.holder.current, self.spool, self.queue, on_stored=self._on_stored,
                              counters=self.counters)
        self.scp.start()
        self._start_metrics(node)
        self._sync_senders()
        self.pool.notify_work()  # jobs queued before the start

        watchdog_s = watchdog_interval_s()
        last_ping = 0.0

        def ping() -> None:
            nonlocal last_ping
            if watchdog_s is not None and time.monotonic() - last_ping >= watchdog_s:
                self.notifier.watchdog()
                last_ping = time.monotonic()

        def between() -> None:
            ping()
            self._refresh_pool_view()
            self._check_stop_during_start()

        ready = self.pool.wait_ready(self.ready_timeout_s, between=between)
        self._refresh_pool_view()
        if self._stop.is_set():
            return self.shutdown()
        if not ready:
            if self.pool.fatal:
                log.error("stopping: %s", self.pool.fatal)
            else:
                log.error("workers did not become ready within %.0f s; stopping", self.ready_timeout_s)
            self.shutdown()
            return 1
        self.notifier.ready(self._status_line())
        log.info("ready: listening as %s on %s:%d with %d worker(s)", node.ae_title, node.bind, self.scp.port,
                 self.pool.size)
        self._start_retention()

        last_status = time.monotonic()
        while not self._stop.is_set():
            self.pool.tick(0.25)
            self._refresh_pool_view()
            ping()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if self.pool.fatal:
                log.error("stopping: %s", self.pool.fatal)
                self.shutdown()
                return 1
            if time.monotonic() - last_status >= STATUS_EVERY_S:
                self.notifier.status(self._status_line())
                last_status = time.monotonic()
        return self.shutdown()

    def _check_stop_during_start(self) -> None:
        if self._stop.is_set():
            raise _StopDuringStart

    def shutdown(self) -> int:
        """Drain in order: listener, workers, senders. Returns 0."""
        t0 = time.monotonic()
        self._draining = True  # /healthz answers 503 from now on
        self.notifier.stopping("draining: closing the listener")
        done = threading.Event()
        watchdog_s = watchdog_interval_s()
        if watchdog_s is not None:  # keep the watchdog fed while draining (a drain may outlast WatchdogSec)

            def feed() -> None:
                while not done.wait(watchdog_s):
                    self.notifier.watchdog()

            threading.Thread(target=feed, name="watchdog-drain", daemon=True).start()
        try:
            return self._drain(t0)
        finally:
            done.set()

    def _drain(self, t0: float) -> int:
        log.info("stopping: draining open associations (up to %.0f s)", self.drain_timeout_s)
        if self.scp is not None:
            self.scp.stop(self.drain_timeout_s)
        if self.pool is not None:
            self.pool.notify_work()
            self.notifier.status("draining: workers finishing their current job")
            clean = self.pool.stop(self.drain_timeout_s)
            log.info("workers stopped%s", "" if clean else " (some were killed; their jobs run again at next start)")
        self.notifier.status("draining: sending what is due")
        for sender in self.senders.values():
            sender.stop(self.drain_timeout_s)
        for sender in self.senders.values():
            sender.join(self.drain_timeout_s + 5)
        summary = self.queue.outbound_summary() if self.queue is not None else {}
        left = {d: c["pending"] + c["sending"] for d, c in summary.items() if c["pending"] + c["sending"]}
        if self.retention is not None:
            self.retention.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        log.info("stopped in %.1f s%s", time.monotonic() - t0,
                 f"; still queued for the next start: {left}" if left else "")
        self.notifier.close()
        return 0

    # -- reload --------------------------------------------------------------------------------------------------

    def reload(self) -> bool:
        old = self.holder.current
        self.notifier.reloading()
        ok, message = self.holder.reload()
        self.last_reload = (ok, time.time())
        self.counters.inc("dicomnode_config_reloads_total", result="applied" if ok else "refused")
        if not ok:
            log.error("SIGHUP: %s", message)
            self.notifier.ready(f"reload refused (errors in {self.holder.path}); running the previous configuration")
            return False
        new = self.holder.current
        self.config_generation += 1
        log.info("SIGHUP: %s", message)
        assert self.pool is not None and self.scp is not None and self.spool is not None and self.queue is not None
        apply_log_level(new.node.log_level)

        set_debug_phi(new.node.debug_phi)
        if new.node.storage != old.node.storage:
            log.warning("node.storage changed to %s: takes effect at the next restart (still using %s)",
                        new.node.storage, old.node.storage)
        if (new.node.bind, new.node.port) != (old.node.bind, old.node.port):
            replacement = StorageSCP(lambda: self.holder.current, self.spool, self.queue, on_stored=self._on_stored,
                                     counters=self.counters)
            try:
                replacement.start()
            except OSError as exc:
                log.error("cannot listen on %s:%d (%s); still listening on %s:%d", new.node.bind, new.node.port, exc,
                          old.node.bind, self.scp.port)
            else:
                previous, self.scp = self.scp, replacement
                threading.Thread(target=previous.stop, args=(self.drain_timeout_s,), daemon=True).start()
                log.info("listener moved to %s:%d; the old one drains", new.node.bind, self.scp.port)
        if (new.node.metrics_bind, new.node.metrics_port) != (old.node.metrics_bind, old.node.metrics_port):
            self._move_metrics(new.node)
        self.pool.max_worker_deaths = new.node.max_worker_deaths_per_job
        try:
            self.pool.reload(new)
        except OSError as exc:
            log.error("SIGHUP: cannot hand the new configuration to the workers (%s); they keep the previous one",
                      exc)
        self._refresh_pool_view()  # /healthz: not ready until the workers rebuilt their pipelines
        self._sync_senders()
        self.notifier.ready(self._status_line())
        return True

    # -- senders -------------------------------------------------------------------------------------------------

    def _sync_senders(self) -> None:
        wanted = set(self.holder.current.destinations)
        for name in sorted(wanted - set(self.senders)):
            sender = DestinationSender(name, lambda: self.holder.current, self._queue)
            sender.start()
            self.senders[name] = sender
        for name in sorted(set(self.senders) - wanted):
            log.warning("destination %s removed from the configuration: its queued items wait until it returns",
                        name)
            sender = self.senders.pop(name)
            sender.stop(0)
            self._retired_senders.append(sender)  # it may still record its last batch

    def _queue(self) -> JobQueue:
        assert self.queue is not None, "the queue is opened before the senders start"
        return self.queue

    def _wake_senders(self, destinations: list[str]) -> None:
        for name in destinations:
            sender = self.senders.get(name)
            if sender is not None:
                sender.wake()

    def _on_stored(self, obj: Any) -> None:
        if self.pool is not None:
            self.pool.notify_work()

    # -- metrics -------------------------------------------------------------------------------------------------

    def _refresh_pool_view(self) -> None:
        """Main thread: publish (configured, alive, ready) for the metrics thread (processes are polled here only)."""
        if self.pool is not None:
            self._pool_view = (self.pool.size, self.pool.alive(), self.pool.ready_count())

    def _start_metrics(self, node: Any) -> None:
        if self.scanner is None:
            self.scanner = JobStatsScanner(self.queue)
        if node.metrics_port is None:
            return
        server = MetricsServer(node.metrics_bind, node.metrics_port, self.render_metrics, self.health)
        try:
            server.start()
        except OSError as exc:  # the DICOM service matters more than its metrics: log and go on
            log.error("metrics: cannot listen on %s:%d (%s); /metrics is not served", node.metrics_bind,
                      node.metrics_port, exc)
            return
        self.metrics_server = server

    def _move_metrics(self, node: Any) -> None:
        old = self.metrics_server
        if old is not None:
            old.stop()
            self.metrics_server = None
        self._start_metrics(node)

    def metrics_state(self) -> Any:
        """A ``metrics.NodeState`` of this moment (any thread)."""
        config = self.holder.current
        configured, alive, ready = self._pool_view
        scp = self.scp
        try:
            port: int | None = scp.port if scp is not None else None
        except RuntimeError:
            port = None
        sends: dict[str, dict[str, int]] = {}
        for sender in [*self._retired_senders, *list(self.senders.values())]:
            mine = sends.setdefault(sender.destination, {"ok": 0, "retry": 0, "dead": 0})
            mine["ok"] += int(sender.sent)
            mine["retry"] += int(sender.retried)
            mine["dead"] += int(sender.dead)
        storage = self.spool.root if self.spool is not None else config.node.storage
        try:
            free = shutil.disk_usage(storage).free
        except OSError:
            free = 0
        pool = self.pool
        return NodeState(
            listening=port is not None,
            draining=self._draining,
            active_associations=scp.active_associations() if scp is not None else 0,
            workers_configured=configured,
            workers_alive=alive,
            workers_ready=ready,
            worker_restarts=pool.replaced if pool is not None else 0,
            jobs_requeued=pool.jobs_requeued if pool is not None else 0,
            jobs_failed_by_worker_deaths=pool.jobs_failed_by_deaths if pool is not None else 0,
            config_generation=self.config_generation,
            last_reload_ok=None if self.last_reload is None else self.last_reload[0],
            last_reload_at=None if self.last_reload is None else self.last_reload[1],
            sends=sends,
            disk_free_bytes=int(free),
            disk_watermark_bytes=int(config.node.min_free_disk_mb * 1024 * 1024),
            started_at=self._started_at,
            port=port,
        )

    def render_metrics(self) -> str:
        if self.scanner is None:
            self.scanner = JobStatsScanner(self._queue())
        return render_metrics_text(self.metrics_state(), self.counters, self.scanner, self.queue, self._extra_gauges())

    def _extra_gauges(self) -> dict[str, Any]:
        gauges: dict[str, Any] = {
            "dicomnode_retention_last_run_timestamp_seconds": (
                "end of the last retention pass (0: none yet)", {(): self._last_retention_at or 0.0}),
        }
        usage = self._last_usage
        if usage is not None:
            gauges["dicomnode_spool_bytes"] = (
                "bytes under the storage directory at the last retention pass, by area",
                {(("area", "objects"),): usage.objects_bytes, (("area", "results"),): usage.results_bytes,
                 (("area", "database"),): usage.database_bytes})
            gauges["dicomnode_spool_files"] = (
                "files under the storage directory at the last retention pass, by area",
                {(("area", "objects"),): usage.objects_files, (("area", "results"),): usage.results_files})
        return gauges

    # -- retention -----------------------------------------------------------------------------------------------

    def _start_retention(self) -> None:
        db = self._queue().db_path
        assert self.spool is not None
        self.retention = RetentionRunner(lambda: self.holder.current, lambda: JobQueue(db), self.spool.root,
                                         on_pass=self._on_retention_pass)
        self.retention.start()

    def _on_retention_pass(self, report: Any, usage: Any) -> None:
        self.counters.inc("dicomnode_retention_runs_total", result="ok" if report is not None else "failed")
        if report is not None:
            self.counters.inc("dicomnode_retention_deleted_files_total", report.objects_deleted, area="objects")
            self.counters.inc("dicomnode_retention_deleted_files_total", report.results_deleted, area="results")
            self.counters.inc("dicomnode_retention_deleted_bytes_total", report.bytes_freed)
            self.counters.inc("dicomnode_retention_pruned_jobs_total", report.jobs_pruned)
        if usage is not None:
            self._last_usage = usage
        self._last_retention_at = time.time()

    def health(self) -> tuple[bool, str]:
        return node_health(self.metrics_state())

    def _status_line(self) -> str:
        counts = self.queue.job_counts() if self.queue is not None else {}
        out = self.queue.outbound_summary() if self.queue is not None else {}
        pending = sum(c["pending"] + c["sending"] for c in out.values())
        dead = sum(c["dead"] for c in out.values())
        try:
            port: object = self.scp.port if self.scp is not None else "-"
        except RuntimeError:  # not listening (stopped)
            port = "-"
        return (
            f"port {port}; workers {self.pool.alive() if self.pool else 0}/{self.pool.size if self.pool else 0}; "
            f"jobs pending {counts.get('pending', 0)} running {counts.get('running', 0)} done {counts.get('done', 0)} "
            f"error {counts.get('error', 0)}; outbound queued {pending} dead {dead}"
        )


class _StopDuringStart(Exception):
    pass


def run_serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, storage_override=args.storage)
    except ConfigError as exc:
        print(f"dicom-node serve: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(config.node.log_level, config.node.debug_phi)
    node = Node(args.config, args.storage, args.drain_timeout, args.ready_timeout)
    node.install_signal_handlers()
    try:
        return node.run()
    except _StopDuringStart:
        return node.shutdown()
    except Exception:
        log.exception("fatal error")
        try:
            node.shutdown()
        finally:
            pass
        return 1
