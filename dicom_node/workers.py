"""Worker processes: take jobs from the queue, route, run the route's pipeline, queue results for sending.

The SCP and the senders live in the main process; every CPU-heavy step (reading pixels, inference, writing
results) runs in a worker PROCESS (``spawn`` start method), so the GIL never slows the receive path.

Per job (``process_job``): read the spooled file's header, ``select_route``; no route -> default action (drop: job
``dropped``; forward: the original to the default destinations); a route -> ``pipeline.process(obj, route)``, each
result dataset written atomically under the spool's result path, then ONE ``finish_job`` transaction with one
``OutboundItem`` per (result, destination) plus the original per destination when ``forward_original``. The original
is forwarded even when processing failed (forwarding is a routing decision, not a processing result).

A pipeline exception ends that job in ``error`` with a PHI-free message; the worker goes on. A transient one
(``inference.backends.BackendTransientError``: no Triton server answers and no local fallback is configured) puts
the job back to ``pending`` instead, and the worker backs off (0.5 s doubling to 30 s) before it claims again.
Pipelines are built
once per worker per configuration generation and a worker reports ready only after building them (model warm-up).

Workers never read the YAML file. The main process validates the configuration once (``ConfigHolder``) and hands the
validated, immutable ``NodeConfig`` to the workers: a new worker gets it in its start arguments, a running one picks
up each new generation from the hand-off file ``<storage>/run/config.pickle`` that ``WorkerPool.reload`` writes
(atomically, before bumping the generation). So a file edited on disk without SIGHUP, valid or not, changes
nothing: a replacement worker runs exactly the configuration the main process loaded. A worker that dies is
replaced; the job it was running goes back to ``pending`` (``JobQueue.requeue_worker``) and runs again on another
worker, unless workers already died ``max_worker_deaths`` times on it: then it ends in ``error`` (a job that kills
its worker is not retried in a loop).
Jobs left ``running`` by a crash of the whole node are taken again at the next start (``requeue_interrupted``).
Workers die with the main process (``PR_SET_PDEATHSIG``), so a killed node leaves no orphans.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

from pydicom import dcmread

from dicom_node.jobqueue import JobQueue, OutboundItem
from dicom_node.logsafe import redact
from dicom_node.logsetup import setup_logging
from dicom_node.pipeline import PipelineError, build_pipeline
from dicom_node.routing import select_route
from dicom_node.spool import Spool
from inference.backend_base import BackendTransientError
from nodecore.config_schema import NodeConfig, Route

log = logging.getLogger(__name__)

SOP_CLASS_KIND = {
    "1.2.840.10008.5.1.4.1.1.11.1": "gsps",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.7": "sc",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.1": "sc",
    "1.2.840.10008.5.1.4.1.1.7.2": "sc",
    "1.2.840.10008.5.1.4.1.1.7.3": "sc",
    "1.2.840.10008.5.1.4.1.1.7.4": "sc",
}
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
QUICK_DEATH_S = 30.0  # a worker dying this soon after its start, before being ready, counts as a start failure
MAX_QUICK_DEATHS = 5
# a job whose inference backend is unreachable (BackendTransientError) goes back to the queue; the worker waits
# 0.5, 1, 2, ... up to 30 s before it claims again; after MAX_TRANSIENT_RUNS runs the job ends in error
TRANSIENT_DELAY_S = 0.5
TRANSIENT_MAX_DELAY_S = 30.0
MAX_TRANSIENT_RUNS = 1000


def result_kind(ds: Any) -> str:
    """Outbound kind of a result dataset: sr (TID 1500 in Comprehensive 3D SR), plain_sr (any other SR, e.g. the
    2D Comprehensive SR copy for viewers without SCOORD3D), sc or gsps. Unknown classes raise ValueError."""
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class in SOP_CLASS_KIND:
        return SOP_CLASS_KIND[sop_class]
    if sop_class == COMPREHENSIVE_3D_SR:
        return "sr"
    if sop_class.startswith(SR_PREFIX):
        return "plain_sr"
    raise ValueError(f"result dataset of unsupported SOP class {sop_class or '(none)'}: cannot queue it")


@dataclass(frozen=True)
class JobResult:
    """What ``process_job`` decided; ``outbound`` holds ``jobqueue.OutboundItem`` objects."""

    status: Literal["done", "error", "dropped", "retry"]  # retry: transient failure, the job goes back to the queue
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    outbound: tuple[Any, ...] = ()


def _safe(text: str) -> str:
    return redact(text)[:2000]


class PipelineCache:
    """Pipelines of one configuration, built once (``build_all``) and reused for every job."""

    def __init__(self, config: NodeConfig, builder: Callable[[str, NodeConfig], Any] | None = None) -> None:
        self.config = config
        self._builder = builder or build_pipeline
        self.pipelines: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    def names(self) -> list[str]:
        return sorted({r.pipeline.name for r in self.config.routes if r.pipeline is not None})

    def build_all(self) -> None:
        """Build every pipeline the routes name; failures are kept in ``errors`` (their jobs end in error)."""
        for name in self.names():
            try:
                self.get(name)
            except RuntimeError:
                pass

    def get(self, name: str) -> Any:
        if name in self.pipelines:
            return self.pipelines[name]
        if name in self.errors:
            raise RuntimeError(self.errors[name])
        try:
            started = time.monotonic()
            self.pipelines[name] = self._builder(name, self.config)
            log.info("pipeline %s built in %.2f s", name, time.monotonic() - started)
            return self.pipelines[name]
        except Exception as exc:
            self.errors[name] = _safe(f"pipeline {name!r} could not be built: {type(exc).__name__}: {exc}")
            log.error("%s", self.errors[name])
            raise RuntimeError(self.errors[name]) from None


def process_job(obj: Any, config: NodeConfig, pipelines: PipelineCache, spool: Any) -> JobResult:
    """Route and process one received object (see module docstring). Never raises for job-level problems."""

    def original_to(dests: tuple[str, ...]) -> list[Any]:
        return [OutboundItem(d, Path(obj.path), obj.sop_instance_uid, obj.sop_class_uid, "original") for d in dests]

    try:
        header = dcmread(obj.path, stop_before_pixels=True)
    except Exception as exc:
        return JobResult("error", _safe(f"cannot read spooled file {Path(obj.path).name}: {exc}"))
    decision = select_route(config, header, obj.calling_ae)
    route: Route | None = decision.route
    if route is None:
        default = decision.default
        if default is None or default.action == "drop":
            return JobResult("dropped", summary={"route": None, "default": "drop"})
        return JobResult(
            "done", summary={"route": None, "default": "forward"}, outbound=tuple(original_to(default.destinations))
        )
    summary: dict[str, Any] = {"route": route.name}
    outbound: list[Any] = original_to(route.destinations) if route.forward_original else []
    if route.pipeline is None:
        return JobResult("done", summary=summary, outbound=tuple(outbound))
    name = route.pipeline.name
    summary["pipeline"] = name
    started = time.monotonic()
    try:
        pipeline = pipelines.get(name)
        outcome = pipeline.process(obj, route)
    except Exception as exc:
        if isinstance(exc, BackendTransientError):  # e.g. no Triton server answers: run the job again later
            return JobResult("retry", _safe(f"pipeline {name!r}: {exc}"), summary, ())
        detail = str(exc) if isinstance(exc, PipelineError | RuntimeError) else f"{type(exc).__name__}: {exc}"
        message = _safe(f"pipeline {name!r} failed: {detail}")
        summary["seconds"] = round(time.monotonic() - started, 3)
        return JobResult("error", message, summary, tuple(outbound))
    summary["seconds"] = round(time.monotonic() - started, 3)
    summary.update({k: v for k, v in (outcome.summary or {}).items() if k not in summary})
    results: list[str] = []
    try:
        for ds in outcome.datasets:
            kind = result_kind(ds)
            uid = str(ds.SOPInstanceUID)
            path = spool.result_path(obj.job_id, kind, uid)
            spool.write_dataset_atomic(ds, path)
            results.append(kind)
            outbound.extend(OutboundItem(d, path, uid, str(ds.SOPClassUID), kind) for d in route.destinations)
    except Exception as exc:
        return JobResult("error", _safe(f"cannot write results: {type(exc).__name__}: {exc}"), summary, tuple(outbound))
    summary["results"] = results
    if outcome.errors:
        summary["errors"] = [_safe(e) for e in outcome.errors]
    if outcome.errors and not outcome.datasets:
        return JobResult("error", "; ".join(_safe(e) for e in outcome.errors), summary, tuple(outbound))
    return JobResult("done", summary=summary, outbound=tuple(outbound))


# ---- the worker process ----------------------------------------------------------------------------------------


HANDOFF_NAME = "run/config.pickle"  # under the storage directory


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a spawned worker needs (picklable): the validated configuration of ``generation``."""

    index: int
    config: NodeConfig
    generation: int
    poll_s: float = 0.5


def handoff_path(storage: Path) -> Path:
    return Path(storage) / HANDOFF_NAME


def write_handoff(storage: Path, generation: int, config: NodeConfig) -> Path:
    """Write ``(generation, config)`` for the running workers: temp file + rename, so a reader sees a whole one."""
    path = handoff_path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # readable by the node's own user only (workers run as that user); unpickling trusts the storage directory as
    # the job queue and the spool already do
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        pickle.dump((generation, config), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return path


def read_handoff(storage: Path) -> tuple[int, NodeConfig]:
    """``(generation, config)`` last written by the main process (OSError / pickle errors propagate)."""
    with open(handoff_path(storage), "rb") as f:
        generation, config = pickle.load(f)
    if not isinstance(config, NodeConfig):
        raise TypeError(f"{handoff_path(storage)} holds a {type(config).__name__}, not a NodeConfig")
    return int(generation), config


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans after a kill -9 of the node)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def worker_main(settings: WorkerSettings, events: Any, wake: Any, generation: Any) -> None:
    """Entry point of a worker process.

    IPC is private to this worker and lock-free, so a worker killed at any instant (OOM killer, kill -9) cannot
    wedge the others or the main process: ``events`` is this worker's own pipe to the pool, ``wake`` its own pipe
    from the pool (a byte per "jobs were queued"), ``generation`` a lock-free shared int (configuration generation,
    written by the main process only). SIGTERM: finish the current job, then exit.

    The configuration comes from the main process (``settings.config``, then the hand-off file for each new
    generation); this function never reads the YAML file.
    """
    _die_with_parent()
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    name = f"worker-{settings.index}-{os.getpid()}"
    gen = settings.generation
    config = settings.config
    setup_logging(config.node.log_level, config.node.debug_phi)
    storage = config.node.storage  # a new node.storage needs a restart: the storage of the first generation
    queue = JobQueue(storage / "queue.sqlite3")
    spool = Spool(storage, config.node.min_free_disk_mb, config.node.duplicate_policy)
    pipelines = PipelineCache(config)
    pipelines.build_all()
    events.send(("ready", gen, sorted(pipelines.errors.values())))
    transient = 0  # consecutive transient failures (backoff before the next claim)
    while not stop.is_set():
        if os.getppid() != parent:  # belt and braces beside PDEATHSIG
            return
        wanted = int(generation.value)
        if wanted > gen:  # generations only grow; the hand-off file is written before the counter moves
            problems: list[str] = []
            try:
                got, new = read_handoff(storage)
            except Exception as exc:  # noqa: BLE001 - keep running the configuration in hand
                got, new = gen, config
                problems.append(_safe(f"configuration generation {wanted} could not be taken over ({type(exc).__name__}: "
                                      f"{exc}); this worker keeps running generation {gen}"))
            if got > gen:
                config = new
                setup_logging(config.node.log_level, config.node.debug_phi)
                pipelines = PipelineCache(config)
                pipelines.build_all()
                log.info("configuration generation %d loaded", got)
            gen = max(got, wanted)
            events.send(("ready", gen, problems + sorted(pipelines.errors.values())))
        obj = queue.claim_job(name)
        if obj is None:
            try:
                if wake.poll(settings.poll_s):
                    while wake.poll(0):
                        wake.recv_bytes()
            except (EOFError, OSError):  # the main process is gone
                return
            continue
        assert obj.job_id is not None  # claimed jobs carry their id
        events.send(("claimed", obj.job_id))
        started = time.monotonic()
        try:
            result = process_job(obj, config, pipelines, spool)
        except Exception as exc:  # a bug in routing/writing: end the job, keep the worker
            log.exception("job %s: unexpected error", obj.job_id)
            result = JobResult("error", _safe(f"internal error: {type(exc).__name__}: {exc}"))
        if result.status == "retry":
            transient += 1
            requeued = queue.requeue_job(obj.job_id, result.error, MAX_TRANSIENT_RUNS)
            delay = min(TRANSIENT_MAX_DELAY_S, TRANSIENT_DELAY_S * 2 ** min(transient - 1, 10))
            log.warning("job %s %s after a transient failure (%s); this worker waits %.1f s", obj.job_id,
                        "queued again" if requeued else "ended in error", result.error, delay)  # fmt: skip
            events.send(("requeued", obj.job_id))
            stop.wait(delay)
            continue
        transient = 0
        queue.finish_job(
            obj.job_id, status=result.status, error=result.error, summary=result.summary, outbound=result.outbound
        )
        dests = sorted({item.destination for item in result.outbound})
        level = logging.WARNING if result.status == "error" else logging.INFO
        log.log(
            level, "job %s %s: sop_instance_uid=%s route=%s results=%s outbound=%d in %.2f s%s",
            obj.job_id, result.status, obj.sop_instance_uid, result.summary.get("route"),
            ",".join(result.summary.get("results", [])) or "-", len(result.outbound),
            time.monotonic() - started, f" error: {result.error}" if result.error else "",
        )
        events.send(("finished", obj.job_id, result.status, dests))
    queue.close()


# ---- the pool (main process) -----------------------------------------------------------------------------------


@dataclass
class _Slot:
    index: int
    process: BaseProcess
    events: Any  # our end of the worker's event pipe (read)
    wake: Any  # our end of the worker's wake-up pipe (write, non-blocking)
    ready_generation: int = -1
    current_job: int | None = None
    events_open: bool = True
    started_at: float = field(default_factory=time.monotonic)


class WorkerPool:
    """``n`` worker processes; call ``tick()`` regularly from the main thread (reads events, replaces the dead).

    ``on_outbound(destinations)`` is called (main thread) when a finished job queued items for those destinations.
    """

    def __init__(
        self,
        config: NodeConfig,
        workers: int,
        queue: Any,
        on_outbound: Callable[[list[str]], None] | None = None,
        start_method: str = "spawn",
        max_worker_deaths: int = 2,
    ) -> None:
        self.config = config  # what every worker of the current generation runs (and a replacement starts with)
        self.storage = config.node.storage  # where the hand-off file lives (node.storage needs a restart)
        self.size = max(1, int(workers))
        self.queue = queue
        self.on_outbound = on_outbound
        self._ctx: Any = mp.get_context(start_method)  # SpawnContext (typeshed's BaseContext lacks Process)
        self._generation = self._ctx.RawValue("i", 0)  # lock-free: a killed worker cannot leave a lock held
        self._slots: dict[int, _Slot] = {}
        self._retiring: list[_Slot] = []
        self._stopping = False
        self.replaced = 0
        self.jobs_finished = 0
        self.max_worker_deaths = max(1, int(max_worker_deaths))  # see JobQueue.requeue_worker
        self.jobs_requeued = 0  # jobs put back to pending because their worker died
        self.jobs_failed_by_deaths = 0  # jobs ended in error after max_worker_deaths deaths
        self.fatal = ""  # set when workers keep dying at startup: the service gives up (systemd restarts it)
        self._quick_deaths = 0

    @property
    def generation(self) -> int:
        return int(self._generation.value)

    def _spawn(self, index: int) -> _Slot:
        settings = WorkerSettings(index, self.config, self.generation)
        events_r, events_w = self._ctx.Pipe(duplex=False)
        wake_r, wake_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=worker_main,
            args=(settings, events_w, wake_r, self._generation),
            name=f"dicom-node-worker-{index}",
            daemon=True,
        )
        proc.start()
        events_w.close()  # only the worker holds the write end: its death reads as EOF here
        wake_r.close()
        os.set_blocking(wake_w.fileno(), False)  # a full wake-up pipe already means "work waiting"
        log.info("worker %d started (pid %s)", index, proc.pid)
        return _Slot(index, proc, events_r, wake_w)

    def start(self) -> None:
        for i in range(self.size):
            self._slots[i] = self._spawn(i)

    def _all_slots(self) -> list[_Slot]:
        return list(self._slots.values()) + self._retiring

    def notify_work(self) -> None:
        """Wake idle workers (a job was queued, or the configuration changed). Never blocks."""
        for slot in self._all_slots():
            try:
                slot.wake.send_bytes(b"w")  # 5 bytes: one atomic pipe write or EAGAIN
            except (BlockingIOError, BrokenPipeError, OSError):
                pass

    def ready(self) -> bool:
        """Every worker has built the pipelines of the current generation."""
        gen = self.generation
        return bool(self._slots) and all(s.ready_generation >= gen for s in self._slots.values())

    def ready_count(self) -> int:
        """Workers that built the pipelines of the current generation."""
        gen = self.generation
        return sum(1 for s in self._slots.values() if s.ready_generation >= gen)

    def wait_ready(self, timeout_s: float, between: Callable[[], None] | None = None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.tick(0.2)
            if self.ready():
                return True
            if self.fatal:
                return False
            if between:
                between()
        return self.ready()

    def reload(self, config: NodeConfig) -> None:
        """New configuration generation: hand ``config`` (validated by the main process) to the workers, which
        rebuild their pipelines; resize to ``config.node.workers``. OSError: the hand-off file could not be written;
        nothing changed (the workers keep the previous generation)."""
        generation = self.generation + 1
        write_handoff(self.storage, generation, config)
        self.config = config
        self._generation.value = generation
        self.notify_work()
        new_size = max(1, int(config.node.workers))
        if new_size > self.size:
            for i in range(self.size, new_size):
                self._slots[i] = self._spawn(i)
        elif new_size < self.size:
            log.info("worker count %d -> %d: extra workers stop after their current job", self.size, new_size)
            for i in range(new_size, self.size):
                slot = self._slots.pop(i)
                self._retiring.append(slot)
                self._terminate(slot)
        self.size = new_size

    @staticmethod
    def _terminate(slot: _Slot) -> None:
        """SIGTERM: the worker finishes the job in hand, then exits."""
        if slot.process.is_alive() and slot.process.pid:
            try:
                os.kill(slot.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            slot.wake.send_bytes(b"s")
        except (BlockingIOError, BrokenPipeError, OSError):
            pass

    def tick(self, wait_s: float = 0.0) -> None:
        """Handle worker events and replace dead workers. Main thread only (spawning sets parent-death signals)."""
        conns = {id(s.events): s for s in self._all_slots() if s.events_open}
        if conns:
            ready = wait([s.events for s in conns.values()], timeout=max(0.0, wait_s))
            for conn in ready:
                self._read_events(conns[id(conn)])
        elif wait_s > 0:
            time.sleep(wait_s)
        self._reap()

    def _read_events(self, slot: _Slot) -> None:
        try:
            while slot.events_open and slot.events.poll(0):
                self._handle(slot, slot.events.recv())
        except (EOFError, OSError):  # the worker exited (or died mid-message: only its own pipe is affected)
            slot.events_open = False
            slot.events.close()

    def _handle(self, slot: _Slot, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "ready":
            slot.ready_generation = int(event[1])
            for err in event[2]:
                log.error("worker %d: %s", slot.index, err)
            log.info("worker %d ready (pid %s, configuration generation %d)", slot.index, slot.process.pid,
                     slot.ready_generation)
        elif kind == "claimed":
            slot.current_job = int(event[1])
        elif kind == "requeued":
            slot.current_job = None
        elif kind == "finished":
            slot.current_job = None
            self.jobs_finished += 1
            dests = list(event[3])
            if dests and self.on_outbound:
                self.on_outbound(dests)

    def _close(self, slot: _Slot) -> None:
        slot.process.join(0)
        self._read_events(slot)  # it may have finished its job right before dying
        if slot.events_open:
            slot.events_open = False
            slot.events.close()
        slot.wake.close()

    def _reap(self) -> None:
        for slot in list(self._retiring):
            if not slot.process.is_alive():
                self._close(slot)
                self._retiring.remove(slot)
                if slot.process.exitcode:  # died rather than stopped after its job
                    self._requeue(slot)
        for index, slot in list(self._slots.items()):
            proc = slot.process
            if proc.is_alive() or proc.pid is None:
                continue
            if slot.wake.closed:
                continue  # already handled (stopping)
            self._close(slot)
            self._requeue(slot)
            if self._stopping:
                continue
            if slot.ready_generation < 0 and time.monotonic() - slot.started_at < QUICK_DEATH_S:
                self._quick_deaths += 1
                if self._quick_deaths >= MAX_QUICK_DEATHS:
                    self.fatal = (f"{self._quick_deaths} workers died before becoming ready (last exit code "
                                  f"{proc.exitcode}); see the worker log lines above")
                    continue
            else:
                self._quick_deaths = 0
            log.error("worker %d (pid %s) died with exit code %s; starting a replacement", index, proc.pid,
                      proc.exitcode)
            self.replaced += 1
            self._slots[index] = self._spawn(index)

    def _requeue(self, slot: _Slot) -> None:
        """The worker of ``slot`` died: its running jobs (by the name it claimed with, so a job claimed just before
        the death counts too) go back to pending, or end in error after ``max_worker_deaths`` deaths."""
        exitcode = slot.process.exitcode
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        slot.current_job = None
        try:
            done = self.queue.requeue_worker(f"worker-{slot.index}-{slot.process.pid}", self.max_worker_deaths,
                                             f"worker process died ({how})")
        except Exception:  # noqa: BLE001 - the pool must go on; the jobs are taken again at the next start
            log.exception("cannot requeue the jobs of dead worker %d", slot.index)
            return
        self.jobs_requeued += len(done.requeued)
        self.jobs_failed_by_deaths += len(done.failed)
        for job_id in done.requeued:
            log.error("job %s queued again: its worker died (%s)", job_id, how)
        for job_id in done.failed:
            log.error("job %s ended in error: workers died %d times while processing it (last: %s)", job_id,
                      self.max_worker_deaths, how)
        if done.requeued:
            self.notify_work()

    def alive(self) -> int:
        return sum(1 for s in self._slots.values() if s.process.is_alive())

    def busy(self) -> int:
        return sum(1 for s in self._slots.values() if s.current_job is not None)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Let every worker finish its current job (at most ``timeout_s``), then end them. True: all exited."""
        self._stopping = True
        slots = self._all_slots()
        for slot in slots:
            self._terminate(slot)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(s.process.is_alive() for s in slots):
            self.tick(0.1)
        clean = True
        for slot in slots:
            if slot.process.is_alive():
                clean = False
                log.warning("worker %d did not finish within %.0f s; killing it (its job is taken again at the "
                            "next start)", slot.index, timeout_s)
                slot.process.kill()
                slot.process.join(5)
            if not slot.wake.closed:
                self._close(slot)
        return clean
