"""Operations hardening: a dead worker's job is requeued (bounded), and SIGTERM drain does not wait for silent
connections.

Unit tests run ``JobQueue.requeue_worker`` on a real SQLite file; the service tests run `dicom-node serve` as a real
subprocess with dcmtk's storescu as the modality and pynetdicom as an SCU holding an association open.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info

from dicom_node.jobqueue import JobQueue
from dicom_node.pipeline import PIPELINES, ReceivedObject
from tests.conftest import ROOT
from tests.crash_pipeline import KILL_MARKER, PIPELINE_NAME
from tests.node_process import NodeProcess, make_small_images, node, node_config, storescu, wait_until  # noqa: F401


def _obj(path: Path, uid: str) -> ReceivedObject:
    return ReceivedObject(path=path, sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                          transfer_syntax_uid="1.2.840.10008.1.2.1", calling_ae="MOD")


# ---- JobQueue.requeue_worker ---------------------------------------------------------------------------------------


def test_requeue_worker_puts_jobs_back_then_fails_them_after_max_deaths(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.sqlite3")
    poison = q.add_job(_obj(tmp_path / "a.dcm", "1.2.3.1"))
    other = q.add_job(_obj(tmp_path / "b.dcm", "1.2.3.2"))
    assert q.claim_job("worker-0-100").job_id == poison
    assert q.claim_job("worker-1-101").job_id == other

    first = q.requeue_worker("worker-0-100", max_deaths=2, reason="worker process died (killed by signal 9)")
    assert first.requeued == (poison,) and first.failed == ()
    assert q.get_job(poison).status == "pending"
    assert q.get_job(other).status == "running"  # another worker's job is not touched

    assert q.claim_job("worker-0-102").job_id == poison  # the replacement takes it again
    second = q.requeue_worker("worker-0-102", max_deaths=2, reason="worker process died (exit code 70)")
    assert second.requeued == () and second.failed == (poison,)
    job = q.get_job(poison)
    assert job.status == "error" and job.finished_at is not None
    assert job.error == ("worker died 2 times while processing this job (the last time: worker process died "
                         "(exit code 70)); not run again")
    assert q.requeue_worker("worker-0-102").requeued == ()  # nothing left for that name

    with pytest.raises(ValueError, match="max_deaths must be >= 1"):
        q.requeue_worker("worker-1-101", max_deaths=0)
    # max_deaths=1: the first death ends the job
    assert q.requeue_worker("worker-1-101", max_deaths=1).failed == (other,)
    assert "worker died 1 times" in q.get_job(other).error


def test_node_restart_does_not_count_as_a_worker_death(tmp_path: Path) -> None:
    q = JobQueue(tmp_path / "q.sqlite3")
    job = q.add_job(_obj(tmp_path / "a.dcm", "1.2.3.1"))
    for i in range(3):  # the whole node crashed three times mid-job: not the object's fault
        assert q.claim_job(f"worker-0-{i}").job_id == job
        assert q.requeue_interrupted() == 1
    q.claim_job("worker-0-9")
    assert q.requeue_worker("worker-0-9", max_deaths=2).requeued == (job,)


def test_old_database_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL, path TEXT NOT NULL,
          sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, transfer_syntax_uid TEXT NOT NULL,
          calling_ae TEXT NOT NULL, study_instance_uid TEXT NOT NULL DEFAULT '', received_at REAL NOT NULL,
          claimed_at REAL, worker TEXT NOT NULL DEFAULT '', finished_at REAL, error TEXT NOT NULL DEFAULT '',
          summary TEXT NOT NULL DEFAULT '{}', runs INTEGER NOT NULL DEFAULT 0);
        INSERT INTO jobs (status, path, sop_instance_uid, sop_class_uid, transfer_syntax_uid, calling_ae, received_at,
          worker) VALUES ('running', '/x.dcm', '1.2', '1.2.3', '1.2.840.10008.1.2', 'MOD', 1.0, 'worker-0-5');
    """)
    conn.close()
    q = JobQueue(db)
    assert q.requeue_worker("worker-0-5").requeued == (1,)
    names = {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(jobs)")}
    assert {"worker_deaths", "purged"} <= names


# ---- the node --------------------------------------------------------------------------------------------------


class ModuleNodeProcess(NodeProcess):
    """NodeProcess started as ``python -m tests.crash_pipeline`` (registers the test-only pipeline)."""

    def start(self, wait_ready: bool = True, timeout_s: float = 60.0, extra_args: tuple[str, ...] = ()) -> None:
        if self.notify_sock is None:
            self.notify_path.unlink(missing_ok=True)
            self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify_sock.bind(str(self.notify_path))
            self.notify_sock.settimeout(0.1)
            import threading

            self._reader = threading.Thread(target=self._read_forever, daemon=True)
            self._reader.start()
        self.messages.clear()
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), PYTHONUNBUFFERED="1", **self.extra_env)
        env.pop("JOURNAL_STREAM", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.crash_pipeline", "serve", "--config", str(self.config_path),
                 *extra_args],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            )
        if wait_ready:
            self.wait_message("READY=1", timeout_s)


@pytest.fixture
def crash_node(tmp_path: Path) -> Iterator[ModuleNodeProcess]:
    proc = ModuleNodeProcess(tmp_path / "node")
    try:
        yield proc
    finally:
        proc.close()


@pytest.mark.slow
@pytest.mark.peers
def test_a_poison_object_is_retried_then_failed_without_a_crash_loop(
    crash_node: ModuleNodeProcess, tmp_path: Path
) -> None:
    assert PIPELINE_NAME not in PIPELINES  # registered only inside the node's processes
    files = make_small_images(tmp_path / "in", 4)
    ds = dcmread(files[0])
    ds.ImageComments = KILL_MARKER
    ds.save_as(files[0])
    poison_uid = str(read_file_meta_info(files[0]).MediaStorageSOPInstanceUID)
    text = node_config(crash_node.port, crash_node.storage, None, pipeline=PIPELINE_NAME, workers=2,
                       forward_original=False)
    crash_node.write_config(text.replace("  workers: 2\n", "  workers: 2\n  max_worker_deaths_per_job: 2\n"))
    crash_node.start()
    workers_before = set(crash_node.workers())
    assert len(workers_before) == 2

    assert len(storescu(crash_node.port, files).succeeded) == 4
    queue = JobQueue(crash_node.storage / "queue.sqlite3")

    def settled() -> bool:
        counts = queue.job_counts()
        return counts["pending"] == counts["running"] == 0 and sum(counts.values()) == 4

    wait_until(settled, 60, "every job to end")
    jobs = {j.sop_instance_uid: j for j in queue.recent_jobs(10)}
    poison = jobs.pop(poison_uid)
    assert poison.status == "error", poison
    assert poison.error.startswith("worker died 2 times while processing this job"), poison.error
    assert "exit code 70" in poison.error
    assert all(j.status == "done" and j.summary["max"] >= 0 for j in jobs.values()), jobs
    conn = sqlite3.connect(f"file:{crash_node.storage / 'queue.sqlite3'}?mode=ro", uri=True)
    runs, deaths = conn.execute("SELECT runs, worker_deaths FROM jobs WHERE sop_instance_uid=?",
                                (poison_uid,)).fetchone()
    conn.close()
    assert (runs, deaths) == (2, 2)  # run exactly twice, never a third time
    log = crash_node.wait_log(r"died with exit code 70; starting a replacement", 15, count=2)
    assert len([line for line in log.splitlines() if "queued again: its worker died (exit code 70)" in line]) == 1
    assert "ended in error: workers died 2 times" in log
    wait_until(lambda: len(crash_node.workers()) == 2, 30, "two live workers")
    assert not set(crash_node.workers()) & workers_before  # both were replaced, the pool goes on
    # the pool still works after the poison object
    more = make_small_images(tmp_path / "more", 2)
    assert len(storescu(crash_node.port, more).succeeded) == 2
    wait_until(lambda: queue.job_counts()["done"] == 5, 60, "new jobs to be processed")
    assert crash_node.stop() == 0


@pytest.mark.slow
@pytest.mark.peers
def test_sigterm_closes_silent_connections_at_once_and_drains_established_ones(node: NodeProcess) -> None:
    from pynetdicom import AE

    text = node_config(node.port, node.storage, None, workers=1, forward_original=False)
    # long ACSE/network timeouts: without the fix, the silent connection would hold the drain for its 20 s
    node.write_config(text.replace("timeouts: {acse: 5, dimse: 15, network: 15, connection: 3}",
                                   "timeouts: {acse: 60, dimse: 60, network: 60, connection: 3}"))
    node.start()

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NODE")
    assert assoc.is_established
    silent = socket.create_connection(("127.0.0.1", node.port), timeout=5)  # never sends a PDU
    time.sleep(0.7)  # the node has accepted it and waits for an A-ASSOCIATE-RQ

    t0 = time.monotonic()
    node.signal(signal.SIGTERM)
    silent.settimeout(10)
    try:
        got = silent.recv(1)  # the node closes it: EOF
    except ConnectionResetError:
        got = b""
    closed_after = time.monotonic() - t0
    silent.close()
    assert got == b"" and closed_after < 3.0, (got, closed_after)
    # the established association is still served while the node drains
    assert node.proc is not None and node.proc.poll() is None
    status = assoc.send_c_echo()
    assert status is not None and status.Status == 0x0000
    assoc.release()
    assert node.proc.wait(15) == 0
    total = time.monotonic() - t0
    assert total < 10.0, f"drain took {total:.1f} s"
    log = node.log()
    assert "closed 1 connection(s) that had not sent an association request" in log
    assert "aborting" not in log
