"""Retention: delete the received objects and result files of finished, fully delivered jobs after a set time, and
prune old job rows (``node.retention``, see ``config_schema.RetentionPolicy``).

What may go (the only rule): a job is *settled* when it has ended (done, error or dropped) and EVERY outbound
item it queued is ``sent``. Nothing referenced by a pending, sending or dead-lettered outbound item, and nothing
of a pending or running job, is ever deleted: a dead letter keeps its files until an admin resubmits it and it is
delivered. Per settled job:

* its received object (``objects/..``) after ``keep_objects_days`` (done, dropped) or ``keep_failed_days``
  (error) since it ended, unless another job with the same object (a duplicate received again) is not settled or
  not old enough, or an unsent outbound item refers to the file;
* its result directory (``results/<job id>/``) after ``keep_results_days``;
* its row and its (sent) outbound rows once both its object and its results are gone.

0 days means keep forever. A deleted object is first renamed aside and its modification time checked: if it was
rewritten after the job ended (the same SOP Instance UID received again meanwhile) it is put back. Deletions are
recorded in ``jobs.purged`` so a pass never re-examines them. Times are POSIX seconds; sizes bytes.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.jobqueue import PURGED_OBJECT, PURGED_RESULTS, JobQueue
from nodecore.config_schema import NodeConfig, RetentionPolicy

log = logging.getLogger(__name__)

DAY_S = 86400.0
BATCH = 500


@dataclass(frozen=True)
class RetentionReport:
    """One pass: files deleted per area, bytes freed, job rows pruned, candidate objects kept because in use."""

    objects_deleted: int = 0
    results_deleted: int = 0
    bytes_freed: int = 0
    jobs_pruned: int = 0
    kept_in_use: int = 0

    def __bool__(self) -> bool:
        return any((self.objects_deleted, self.results_deleted, self.jobs_pruned, self.kept_in_use))


@dataclass(frozen=True)
class SpoolUsage:
    """Disk use of a storage directory (bytes) and of its filesystem."""

    objects_files: int
    objects_bytes: int
    results_files: int
    results_bytes: int
    database_bytes: int
    free_bytes: int
    total_bytes: int


def _walk(directory: Path) -> tuple[int, int]:
    files = size = 0
    stack = [directory]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        try:
                            size += entry.stat(follow_symlinks=False).st_size
                            files += 1
                        except FileNotFoundError:  # deleted while walking
                            pass
        except FileNotFoundError:
            pass
    return files, size


def spool_usage(storage: Path) -> SpoolUsage:
    """Files and bytes under ``objects/`` and ``results/``, the queue database (with its WAL), and the free and
    total bytes of the filesystem. Walks the tree: seconds for millions of files."""
    storage = Path(storage)
    of, ob = _walk(storage / "objects")
    rf, rb = _walk(storage / "results")
    db = sum(p.stat().st_size for p in storage.glob("queue.sqlite3*") if p.is_file())
    disk = shutil.disk_usage(storage)
    return SpoolUsage(of, ob, rf, rb, db, disk.free, disk.total)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _days_for(status: str, policy: RetentionPolicy) -> float:
    return policy.keep_failed_days if status == "error" else policy.keep_objects_days


def object_in_use(queue: JobQueue, path: Path, policy: RetentionPolicy, now: float) -> bool:
    """True when something may still need the received object at ``path``: an outbound item that is not sent, or
    a job with this object that is not settled or whose retention has not run out (or is forever)."""
    if queue.unsent_outbound_for_path(path):
        return True
    for status, finished_at, settled in queue.path_holders(path):
        if not settled or finished_at is None:
            return True
        days = _days_for(status, policy)
        if days <= 0 or finished_at >= now - days * DAY_S:
            return True
    return False


def _delete_object(path: Path, finished_at: float) -> int:
    """Delete a received object unless it was rewritten after ``finished_at``; returns the bytes freed.

    Renamed aside first, so a copy written at the same moment (a duplicate received again) is never the one
    deleted: its newer modification time sends it back (unless an even newer copy is already in place)."""
    try:
        if path.stat().st_mtime > finished_at:
            return 0  # received again after this job ended: a newer job owns it
    except FileNotFoundError:
        return 0
    aside = path.with_name(f".{path.name}.retention.tmp")  # a crash here leaves a temp file cleaned at start
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return 0
    st = aside.stat()
    if st.st_mtime > finished_at:
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # a newer copy arrived meanwhile: it stays, this one goes
        aside.unlink()
        _fsync_dir(path.parent)
        return 0
    aside.unlink()  # the caller fsyncs the directory (once per batch) before recording the deletion
    return int(st.st_size)


def _delete_results(directory: Path) -> tuple[int, int]:
    files = size = 0
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        if entry.is_file():
            try:
                n = entry.stat().st_size
                entry.unlink()
            except FileNotFoundError:
                continue
            files += 1
            size += n
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (something unexpected in it): left alone
    return files, size  # the caller fsyncs results/ once per batch


def run_retention(
    queue: JobQueue, storage: Path, policy: RetentionPolicy, now: float | None = None,
    stop: threading.Event | None = None,
) -> RetentionReport:
    """One retention pass over the queue and the storage directory (see the module docstring). ``stop`` ends the
    pass early between two jobs (what was done is recorded)."""
    now = time.time() if now is None else now
    stop = stop or threading.Event()
    storage = Path(storage)
    objects = results = freed = kept = 0
    objects_dir = (storage / "objects").resolve()
    for statuses, days in ((("done", "dropped"), policy.keep_objects_days), (("error",), policy.keep_failed_days)):
        if days <= 0:
            continue
        while True:
            batch = queue.retention_candidates(statuses, now - days * DAY_S, PURGED_OBJECT, BATCH)
            handled = []
            touched: set[Path] = set()
            for job in batch:
                if stop.is_set():
                    break
                handled.append(job.id)
                if not job.path.resolve().is_relative_to(objects_dir):
                    log.warning("retention: job %d's object %s is outside %s; not deleted", job.id, job.path,
                                objects_dir)
                    continue
                if object_in_use(queue, job.path, policy, now):
                    kept += 1  # another holder decides later; this job no longer needs the file
                    continue
                n = _delete_object(job.path, job.finished_at)
                if n:
                    objects += 1
                    freed += n
                    touched.add(job.path.parent)
            for directory in touched:
                _fsync_dir(directory)
            queue.mark_purged(handled, PURGED_OBJECT)
            if len(batch) < BATCH or stop.is_set():
                break
    if policy.keep_results_days > 0:
        while True:
            batch = queue.retention_candidates(("done", "error", "dropped"), now - policy.keep_results_days * DAY_S,
                                               PURGED_RESULTS, BATCH)
            done_ids = []
            for job in batch:
                if stop.is_set():
                    break
                directory = storage / "results" / f"{job.id:08d}"
                if queue.unsent_outbound_under(directory):
                    continue  # cannot happen for a settled job; never delete what is still to be sent
                files, size = _delete_results(directory)
                results += files
                freed += size
                done_ids.append(job.id)
            _fsync_dir(storage / "results")
            queue.mark_purged(done_ids, PURGED_RESULTS)
            if len(batch) < BATCH or stop.is_set():
                break
    pruned = 0
    while not stop.is_set():
        n = queue.prune_jobs(PURGED_OBJECT | PURGED_RESULTS, now, BATCH)
        pruned += n
        if n < BATCH:
            break
    return RetentionReport(objects, results, freed, pruned, kept)


class RetentionRunner(threading.Thread):
    """Runs ``run_retention`` every ``node.retention.interval_s`` (live configuration) in the main process.

    The first pass starts ``min(interval_s, 60)`` s after ``start()``. ``on_pass(report, usage)`` is called after
    each pass (metrics); failures are logged and counted, never fatal."""

    def __init__(
        self,
        config_getter: Callable[[], NodeConfig],
        queue_factory: Callable[[], JobQueue],
        storage: Path,
        on_pass: Callable[[RetentionReport | None, SpoolUsage | None], None] | None = None,
    ) -> None:
        super().__init__(name="retention", daemon=True)
        self._config_getter = config_getter
        self._queue_factory = queue_factory
        self.storage = Path(storage)
        self.on_pass = on_pass
        self._stopping = threading.Event()

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the loop; a pass in progress stops after its current file (waited for up to ``timeout_s``)."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        queue: Any = None
        wait_s = min(self._config_getter().node.retention.interval_s, 60.0)
        while not self._stopping.wait(wait_s):
            policy = self._config_getter().node.retention
            wait_s = policy.interval_s
            report: RetentionReport | None = None
            try:
                if queue is None:
                    queue = self._queue_factory()
                t0 = time.monotonic()
                report = run_retention(queue, self.storage, policy, stop=self._stopping)
                if report:
                    log.info("retention: deleted %d object(s) and %d result file(s) (%.1f MiB), pruned %d job row(s);"
                             " %d object(s) kept while other jobs still need them (%.2f s)", report.objects_deleted,
                             report.results_deleted, report.bytes_freed / 2**20, report.jobs_pruned,
                             report.kept_in_use, time.monotonic() - t0)
                usage: SpoolUsage | None = spool_usage(self.storage)
            except Exception:  # noqa: BLE001 - keep the node running; try again next interval
                log.exception("retention pass failed; trying again in %.0f s", wait_s)
                usage = None
            if self.on_pass is not None:
                try:
                    self.on_pass(report, usage)
                except Exception:  # noqa: BLE001
                    log.exception("retention: on_pass hook failed")
        if queue is not None:
            queue.close()
