"""Retention (dicom_node.retention): what is deleted when, and above all that nothing unsent is ever deleted.

Unit tests use a real SQLite queue and real files in a spool layout; a property test drives random job/outbound
states through retention; the service test runs `dicom-node serve` with a tiny retention time against a real
Orthanc that is up, down and refusing, and checks files on disk as they come and go.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_file_meta_info

from dicom_node.jobqueue import JobQueue, OutboundItem
from dicom_node.retention import DAY_S, run_retention, spool_usage
from dicom_node.spool import Spool
from nodecore.config_schema import RetentionPolicy
from nodecore.received import ReceivedObject
from tests.conftest import ROOT
from tests.node_process import NodeProcess, make_small_images, node, node_config, storescu, wait_until  # noqa: F401
from tests.orthanc import Orthanc, orthanc  # noqa: F401

CR = "1.2.840.10008.5.1.4.1.1.1"


class Store:
    """A spool directory and its queue, with helpers that write real files and walk jobs through their states."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = Spool(root, 0.0, "replace")
        self.queue = JobQueue(root / "queue.sqlite3")
        self.n = 0

    def receive(self, uid: str | None = None, size: int = 1000) -> tuple[int, Path]:
        self.n += 1
        uid = uid or f"1.2.826.0.1.3680043.10.{self.n}"
        path = self.spool.object_path(uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        job = self.queue.add_job(ReceivedObject(path=path, sop_instance_uid=uid, sop_class_uid=CR,
                                                transfer_syntax_uid="1.2.840.10008.1.2.1", calling_ae="MOD"))
        return job, path

    def finish(self, job: int, status: str = "done", dests: tuple[str, ...] = (), results: int = 0,
               forward: bool = False) -> list[Path]:
        claimed = self.queue.claim_job("worker-0-1")
        assert claimed is not None and claimed.job_id == job
        items, written = [], []
        for k in range(results):
            uid = f"1.2.826.0.1.3680043.11.{job}.{k}"
            p = self.spool.result_path(job, "sr", uid)
            p.write_bytes(b"result" * 100)
            written.append(p)
            items += [OutboundItem(d, p, uid, "1.2.840.10008.5.1.4.1.1.88.34", "sr") for d in dests]
        if forward:
            items += [OutboundItem(d, claimed.path, claimed.sop_instance_uid, CR, "original") for d in dests]
        self.queue.finish_job(job, status=status, outbound=items)  # type: ignore[arg-type]
        return written

    def deliver(self, dest: str, outcome: str = "sent") -> None:
        """Claim every due item of ``dest`` and mark it ``sent``, ``dead``, ``retry`` or leave it ``sending``."""
        while (row := self.queue.claim_outbound(dest, time.time() + 1)) is not None:
            if outcome == "sent":
                self.queue.mark_sent(row.id)
            elif outcome == "dead":
                self.queue.mark_dead(row.id, "rejected")
            elif outcome == "retry":
                self.queue.mark_retry(row.id, "refused", time.time() + 3600)
            else:
                return  # one item left in 'sending'


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "storage")


WEEK = RetentionPolicy(keep_objects_days=7, keep_results_days=7, keep_failed_days=30)


def later(days: float) -> float:
    return time.time() + days * DAY_S


def test_delivered_jobs_go_after_their_time_unsent_ones_never(store: Store) -> None:
    delivered, p1 = store.receive()
    r1 = store.finish(delivered, dests=("pacs",), results=2, forward=True)
    store.deliver("pacs", "sent")
    pending, p2 = store.receive()
    r2 = store.finish(pending, dests=("pacs",), results=1, forward=True)  # never sent
    dead, p3 = store.receive()
    store.finish(dead, dests=("other",), results=1)
    store.deliver("other", "dead")
    sending, p4 = store.receive()
    store.finish(sending, dests=("third",), forward=True)
    store.deliver("third", "sending")
    dropped, p5 = store.receive()
    store.finish(dropped, status="dropped")
    failed, p6 = store.receive()
    store.finish(failed, status="error")
    running, p7 = store.receive()
    store.queue.claim_job("worker-1-2")
    waiting, p8 = store.receive()

    assert run_retention(store.queue, store.root, WEEK, now=later(6.9)).objects_deleted == 0  # not old enough
    report = run_retention(store.queue, store.root, WEEK, now=later(8))
    assert (report.objects_deleted, report.results_deleted, report.jobs_pruned) == (2, 2, 2)
    assert report.bytes_freed == 2000 + 2 * 600
    assert not p1.exists() and not any(p.exists() for p in r1) and not r1[0].parent.exists()
    assert not p5.exists()  # dropped: nothing to send, gone after keep_objects_days
    for p in (p2, *r2, p3, p4, p6, p7, p8):  # pending, dead, sending, failed (30 days), running, waiting
        assert p.exists(), p
    assert store.queue.get_job(delivered) is None and store.queue.get_job(dropped) is None
    for job in (pending, dead, sending, failed, running, waiting):
        assert store.queue.get_job(job) is not None
    assert store.queue.outbound_summary()["pacs"] == {"pending": 2, "sending": 0, "sent": 0, "dead": 0}

    report = run_retention(store.queue, store.root, WEEK, now=later(31))  # failed job's object: 30 days
    assert report.objects_deleted == 1 and not p6.exists() and p3.exists() and p2.exists()
    # once the dead letter is resubmitted and delivered, its files go too
    store.queue.resubmit_dead("other")
    store.deliver("other", "sent")
    report = run_retention(store.queue, store.root, WEEK, now=later(31))
    assert report.objects_deleted == 1 and report.results_deleted == 1 and not p3.exists()


def test_a_shared_object_stays_while_any_holder_needs_it(store: Store) -> None:
    uid = "1.2.826.0.1.3680043.10.999"
    first, path = store.receive(uid)
    store.finish(first)
    second, same = store.receive(uid)  # received again (duplicate policy replace): same file, a new job
    assert same == path
    report = run_retention(store.queue, store.root, WEEK, now=later(8))
    assert report.objects_deleted == 0 and report.kept_in_use == 1 and path.exists()
    store.finish(second, dests=("pacs",), forward=True)
    assert run_retention(store.queue, store.root, WEEK, now=later(8)).objects_deleted == 0  # forward unsent
    store.deliver("pacs", "sent")
    assert run_retention(store.queue, store.root, WEEK, now=later(8)).objects_deleted == 1
    assert not path.exists()


def test_an_object_rewritten_after_its_job_ended_is_put_back(store: Store) -> None:
    job, path = store.receive()
    store.finish(job)
    time.sleep(0.02)
    path.write_bytes(b"new copy, its job not committed yet")  # the C-STORE race: file first, then the job row
    report = run_retention(store.queue, store.root, WEEK, now=later(8))
    assert report.objects_deleted == 0 and path.read_bytes().startswith(b"new copy")
    assert not list(path.parent.glob(".*.tmp"))


def test_zero_means_forever_and_keeps_the_rows(store: Store) -> None:
    job, path = store.receive()
    results = store.finish(job, results=1)
    forever = RetentionPolicy(keep_objects_days=0, keep_results_days=1, keep_failed_days=0)
    report = run_retention(store.queue, store.root, forever, now=later(3650))
    assert path.exists() and not results[0].exists() and report.jobs_pruned == 0
    assert store.queue.get_job(job) is not None
    again = run_retention(store.queue, store.root, forever, now=later(3650))
    assert not again  # purged work is not examined twice


def test_status_command_shows_spool_usage(store: Store) -> None:
    job, _ = store.receive(size=3000)
    store.finish(job, results=1)
    usage = spool_usage(store.root)
    assert (usage.objects_files, usage.objects_bytes, usage.results_files, usage.results_bytes) == (1, 3000, 1, 600)
    assert usage.database_bytes > 0 and 0 < usage.free_bytes <= usage.total_bytes
    out = subprocess.run([sys.executable, "-m", "dicom_node.cli", "status", "--storage", str(store.root)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("spool "))
    assert "objects 1 file(s) 2.9 KiB, results 1 file(s) 600 B" in line and "disk free" in line


# ---- property: nothing unsent, nothing unsettled, nothing young is ever deleted --------------------------------

JOB_STATES = st.sampled_from(["pending", "running", "done", "error", "dropped"])
SEND_STATES = st.sampled_from(["sent", "dead", "retry", "sending"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    jobs=st.lists(st.tuples(JOB_STATES, st.lists(SEND_STATES, max_size=3), st.booleans(), st.integers(0, 3)),
                  min_size=1, max_size=8),
    days=st.tuples(*(st.sampled_from([0.0, 1.0, 10.0]) for _ in range(3))),
    age=st.sampled_from([0.5, 5.0, 50.0]),
)
@example(jobs=[("done", [], True, 0), ("pending", [], True, 0)], days=(1.0, 1.0, 1.0), age=5.0)
@example(jobs=[("done", ["sent"], True, 1), ("running", [], True, 0), ("error", ["dead"], True, 1)],
         days=(1.0, 1.0, 1.0), age=50.0)
@example(jobs=[("done", ["sent", "retry"], False, 2), ("dropped", [], False, 0)], days=(1.0, 1.0, 0.0), age=50.0)
def test_property_nothing_needed_is_ever_deleted(
    tmp_path_factory: pytest.TempPathFactory, jobs: list[tuple[str, list[str], bool, int]],
    days: tuple[float, float, float], age: float,
) -> None:
    store = Store(tmp_path_factory.mktemp("prop"))
    shared = "1.2.826.0.1.3680043.10.424242"
    protected: set[Path] = set()
    order = {"pending": 2, "running": 1}  # claim_job takes the oldest pending job: finished ones first
    for i, (state, sends, reuse, results) in sorted(enumerate(jobs), key=lambda e: order.get(e[1][0], 0)):
        job, path = store.receive(shared if reuse else None)
        if state == "pending":
            protected.add(path)
            continue
        if state == "running":
            store.queue.claim_job("worker-0-1")
            protected.add(path)
            continue
        dests = tuple(f"d{i}_{k}" for k in range(len(sends)))
        written = store.finish(job, status=state, dests=dests, results=results, forward=True)
        for dest, outcome in zip(dests, sends, strict=True):
            store.deliver(dest, outcome)
        if any(o != "sent" for o in sends):
            protected.add(path)
            protected.update(written)
        young = age < (days[2] if state == "error" else days[0]) or (days[2] if state == "error" else days[0]) == 0
        if young:
            protected.add(path)
        if days[1] == 0 or age < days[1]:
            protected.update(written)
    policy = RetentionPolicy(keep_objects_days=days[0], keep_results_days=days[1], keep_failed_days=days[2])
    run_retention(store.queue, store.root, policy, now=later(age))
    missing = [p for p in protected if not p.exists()]
    assert not missing, missing
    # every row that still has an unsent outbound item or is unfinished is still there
    counts = store.queue.job_counts()
    assert counts["pending"] + counts["running"] == sum(1 for s, *_ in jobs if s in ("pending", "running"))


# ---- the node ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.peers
def test_node_deletes_delivered_objects_and_keeps_unsent_ones(
    node: NodeProcess, orthanc: Orthanc, tmp_path: Path  # noqa: F811
) -> None:
    text = node_config(node.port, node.storage, orthanc.dicom_port, workers=1,
                       retry="{initial_delay_s: 0.3, max_delay_s: 0.5, multiplier: 2, max_attempts: 1000}")
    # 2e-5 days = 1.7 s; a retention pass every 0.5 s
    node.write_config(text.replace("  workers: 1\n", "  workers: 1\n  retention: {keep_objects_days: 2.0e-5, "
                                   "keep_results_days: 2.0e-5, keep_failed_days: 2.0e-5, interval_s: 0.5}\n"))
    node.start()

    def spooled() -> set[str]:
        return {p.stem for p in (node.storage / "objects").rglob("*.dcm")}

    delivered = make_small_images(tmp_path / "a", 2)
    assert len(storescu(node.port, delivered).succeeded) == 2
    uids = [str(read_file_meta_info(f).MediaStorageSOPInstanceUID) for f in delivered]
    orthanc.wait_for_count(2)
    wait_until(lambda: not (set(uids) & spooled()), 30, "delivered objects to be deleted")
    queue = JobQueue(node.storage / "queue.sqlite3")
    wait_until(lambda: sum(queue.job_counts().values()) == 0, 15, "their rows to be pruned")
    node.wait_log(r"retention: deleted 2 object\(s\)|retention: deleted 1 object\(s\)", 5)

    orthanc.stop()  # the PACS is down: the next object stays queued (pending, retried)
    unsent = make_small_images(tmp_path / "b", 1)
    assert len(storescu(node.port, unsent).succeeded) == 1
    uid = str(read_file_meta_info(unsent[0]).MediaStorageSOPInstanceUID)
    time.sleep(4)  # several retention passes, twice the retention time
    assert uid in spooled()
    orthanc.start(reject=True)  # the PACS refuses us: a dead letter, still kept
    wait_until(lambda: sum(c["dead"] for c in queue.outbound_summary().values()) == 1, 30, "a dead letter")
    time.sleep(3)
    assert uid in spooled() and queue.job_counts()["done"] == 1
    orthanc.stop()
    orthanc.start()  # fixed: the admin resubmits, the object is delivered, then deleted
    retry = subprocess.run([sys.executable, "-m", "dicom_node.cli", "retry", "--storage", str(node.storage)],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    wait_until(lambda: uid in orthanc.sop_instance_uids(), 30, "the resubmitted object at the PACS")
    wait_until(lambda: uid not in spooled(), 30, "the delivered object to be deleted")
    assert node.stop() == 0
