"""JobQueue: job lifecycle, one-transaction finish, outbound retry/dead letters, crash recovery, multi-process claims."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import time
from pathlib import Path

import pytest

from dicom_node.jobqueue import JobQueue, JobStateError, OutboundItem
from dicom_node.pipeline import ReceivedObject

CR = "1.2.840.10008.5.1.4.1.1.1"
SR = "1.2.840.10008.5.1.4.1.1.88.22"


def _obj(i: int, tmp: Path) -> ReceivedObject:
    return ReceivedObject(
        path=tmp / f"{i}.dcm",
        sop_instance_uid=f"1.2.3.{i}",
        sop_class_uid=CR,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae="SCANNER",
        study_instance_uid="1.2.3",
        received_at=1000.0 + i,
    )


def _item(dest: str, uid: str, kind: str = "sr", path: str = "/r/x.dcm") -> OutboundItem:
    return OutboundItem(destination=dest, path=Path(path), sop_instance_uid=uid, sop_class_uid=SR, kind=kind)


@pytest.fixture()
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(tmp_path / "queue.sqlite3")


def test_pragmas_wal_and_full_sync(queue: JobQueue) -> None:
    conn = queue._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_job_lifecycle_and_outbound_in_one_transaction(queue: JobQueue, tmp_path: Path) -> None:
    job_id = queue.add_job(_obj(1, tmp_path))
    assert queue.get_job(job_id).status == "pending"
    claimed = queue.claim_job("w1")
    assert claimed is not None and claimed.job_id == job_id and claimed.sop_instance_uid == "1.2.3.1"
    assert claimed.path == tmp_path / "1.dcm" and claimed.received_at == 1001.0
    assert queue.claim_job("w2") is None
    items = [_item("pacs", "9.1"), _item("pacs", "9.2", "sc"), _item("archive", "9.1")]
    queue.finish_job(job_id, status="done", summary={"regions": 3}, outbound=items)
    row = queue.get_job(job_id)
    assert row.status == "done" and row.summary == {"regions": 3} and row.finished_at is not None
    assert queue.outbound_summary() == {
        "pacs": {"pending": 2, "sending": 0, "sent": 0, "dead": 0},
        "archive": {"pending": 1, "sending": 0, "sent": 0, "dead": 0},
    }
    assert [r.kind for r in queue.outbound_for_job(job_id)] == ["sr", "sc", "sr"]
    with pytest.raises(JobStateError, match=r"cannot finish job \d+: it is done"):
        queue.finish_job(job_id, status="error", error="again")
    with pytest.raises(JobStateError, match="does not exist"):
        queue.finish_job(9999, status="done")
    with pytest.raises(ValueError, match="done, error or dropped"):
        queue.finish_job(job_id, status="running")  # type: ignore[arg-type]


class _Exploding:
    """An outbound item whose path cannot be turned into text: fails in the middle of finish_job's inserts."""

    destination = "pacs"
    sop_instance_uid = "9.9"
    sop_class_uid = SR
    kind = "sr"

    @property
    def path(self) -> str:
        raise RuntimeError("disk vanished")


def test_finish_job_is_atomic(queue: JobQueue, tmp_path: Path) -> None:
    job_id = queue.add_job(_obj(1, tmp_path))
    queue.claim_job("w")
    with pytest.raises(RuntimeError, match="disk vanished"):
        queue.finish_job(job_id, status="done", outbound=[_item("pacs", "9.1"), _Exploding()])  # type: ignore[list-item]
    assert queue.get_job(job_id).status == "running"  # nothing of the failed transaction remains
    assert queue.outbound_summary() == {}
    queue.finish_job(job_id, status="done", outbound=[_item("pacs", "9.1")])
    assert queue.outbound_summary()["pacs"]["pending"] == 1


def test_rerun_replaces_unsent_items_but_not_one_being_sent(queue: JobQueue, tmp_path: Path) -> None:
    for run in range(2):
        job_id = queue.add_job(_obj(1, tmp_path))
        queue.claim_job("w")
        queue.finish_job(job_id, status="done", outbound=[_item("pacs", "9.1", path=f"/r/{run}.dcm")])
    assert queue.outbound_summary()["pacs"] == {"pending": 1, "sending": 0, "sent": 0, "dead": 0}
    row = queue.claim_outbound("pacs", time.time())
    assert row is not None and row.path == Path("/r/1.dcm")
    job_id = queue.add_job(_obj(1, tmp_path))
    queue.claim_job("w")
    queue.finish_job(job_id, status="done", outbound=[_item("pacs", "9.1", path="/r/2.dcm")])
    assert queue.outbound_summary()["pacs"] == {"pending": 1, "sending": 1, "sent": 0, "dead": 0}


def test_outbound_retry_dead_resubmit(queue: JobQueue, tmp_path: Path) -> None:
    job_id = queue.add_job(_obj(1, tmp_path))
    queue.claim_job("w")
    queue.finish_job(job_id, status="done", outbound=[_item("pacs", "9.1"), _item("pacs", "9.2")])
    now = time.time()
    a = queue.claim_outbound("pacs", now)
    b = queue.claim_outbound("pacs", now)
    assert a and b and a.status == b.status == "sending" and {a.sop_instance_uid, b.sop_instance_uid} == {"9.1", "9.2"}
    assert queue.claim_outbound("pacs", now) is None
    assert queue.claim_outbound("other", now) is None
    queue.mark_retry(a.id, "connection refused", now + 60)
    assert queue.claim_outbound("pacs", now) is None  # not due yet
    assert queue.next_outbound_due("pacs") == pytest.approx(now + 60)
    again = queue.claim_outbound("pacs", now + 61)
    assert again is not None and again.id == a.id and again.attempts == 1 and again.last_error == "connection refused"
    queue.mark_dead(again.id, "0x0122 SOP class not supported")
    queue.mark_sent(b.id)
    with pytest.raises(JobStateError, match="it is sent"):
        queue.mark_sent(b.id)
    with pytest.raises(JobStateError, match="does not exist"):
        queue.mark_retry(12345, "x", now)
    dead = queue.dead_letters()
    assert [d.id for d in dead] == [a.id] and dead[0].attempts == 2 and dead[0].status == "dead"
    assert queue.dead_letters("elsewhere") == []
    assert queue.outbound_summary()["pacs"] == {"pending": 0, "sending": 0, "sent": 1, "dead": 1}
    assert queue.resubmit_dead("pacs", ids=[]) == 0
    assert queue.resubmit_dead("pacs", ids=[a.id]) == 1
    row = queue.claim_outbound("pacs", time.time() + 1)
    assert row is not None and row.id == a.id and row.attempts == 0 and row.last_error.startswith("0x0122")


def test_due_order_oldest_due_first(queue: JobQueue, tmp_path: Path) -> None:
    job_id = queue.add_job(_obj(1, tmp_path))
    queue.claim_job("w")
    queue.finish_job(job_id, status="done", outbound=[_item("pacs", f"9.{i}") for i in range(3)])
    now = time.time()
    rows = [queue.claim_outbound("pacs", now) for _ in range(3)]
    queue.mark_retry(rows[0].id, "busy", now + 30)
    queue.mark_retry(rows[1].id, "busy", now + 10)
    queue.mark_retry(rows[2].id, "busy", now + 20)
    order = [queue.claim_outbound("pacs", now + 100).id for _ in range(3)]
    assert order == [rows[1].id, rows[2].id, rows[0].id]


def test_structured_reports_go_first(queue: JobQueue, tmp_path: Path) -> None:
    """A burst of scouts: every due SR is sent before the companions (SC, GSPS, plain SR, original) of any job."""
    kinds = ("sc", "sr", "gsps", "plain_sr", "original")
    for j in range(3):
        job_id = queue.add_job(_obj(j, tmp_path))
        queue.claim_job("w")
        queue.finish_job(job_id, status="done",
                         outbound=[_item("pacs", f"9.{j}.{k}", kind=kind) for k, kind in enumerate(kinds)])
    claimed = [queue.claim_outbound("pacs", time.time() + 1) for _ in range(3 * len(kinds))]
    order = [(r.kind, r.sop_instance_uid) for r in claimed]
    assert [k for k, _ in order[:3]] == ["sr"] * 3  # the three SRs first, oldest job first
    assert [u for _, u in order[:3]] == ["9.0.1", "9.1.1", "9.2.1"]
    assert [u for _, u in order[3:]] == [f"9.{j}.{k}" for j in range(3) for k in (0, 2, 3, 4)]  # then oldest first


def test_claim_sr_only(queue: JobQueue, tmp_path: Path) -> None:
    """The sender's lane kept free for SRs claims SRs only; companions stay pending for the other lanes."""
    job_id = queue.add_job(_obj(0, tmp_path))
    queue.claim_job("w")
    queue.finish_job(job_id, status="done", outbound=[_item("pacs", f"9.0.{k}", kind=kind)
                                                      for k, kind in enumerate(("sc", "sr", "gsps"))])
    now = time.time() + 1
    assert queue.claim_outbound("pacs", now, sr_only=True).kind == "sr"
    assert queue.claim_outbound("pacs", now, sr_only=True) is None
    assert [queue.claim_outbound("pacs", now).kind for _ in range(2)] == ["sc", "gsps"]


def _claim_then_die(db: str) -> None:
    q = JobQueue(Path(db))
    q.claim_job("doomed")
    item = q.claim_outbound("pacs", time.time() + 1)
    assert item is not None
    os._exit(3)  # a crash: no finish, no mark_sent


def test_crash_recovery_requeues_running_and_sending(queue: JobQueue, tmp_path: Path) -> None:
    job_id = queue.add_job(_obj(1, tmp_path))
    queue.claim_job("w")
    queue.finish_job(job_id, status="done", outbound=[_item("pacs", "9.1")])
    second = queue.add_job(_obj(2, tmp_path))
    proc = mp.get_context("fork").Process(target=_claim_then_die, args=(str(queue.db_path),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 3
    fresh = JobQueue(queue.db_path)  # "restart"
    assert fresh.get_job(second).status == "running"
    assert fresh.outbound_summary()["pacs"]["sending"] == 1
    assert fresh.requeue_interrupted() == 1 and fresh.requeue_sending() == 1
    again = fresh.claim_job("w2")
    assert again is not None and again.job_id == second
    assert fresh.claim_outbound("pacs", time.time() + 1) is not None


def _claimer(db: str, worker: str, out: mp.Queue) -> None:
    q = JobQueue(Path(db))
    got = []
    while (obj := q.claim_job(worker)) is not None:
        got.append(obj.job_id)
        assert obj.job_id is not None
        q.finish_job(obj.job_id, status="done", summary={"worker": worker})
    out.put(got)


def test_concurrent_claims_across_processes_never_share_a_job(queue: JobQueue, tmp_path: Path) -> None:
    ids = [queue.add_job(_obj(i, tmp_path)) for i in range(200)]
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(queue.db_path), f"w{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    claimed = [j for r in results for j in r]
    assert sorted(claimed) == ids  # every job exactly once
    assert queue.job_counts() == {"pending": 0, "running": 0, "done": 200, "error": 0, "dropped": 0}
    rows = queue.recent_jobs(limit=5)
    assert [r.id for r in rows] == ids[::-1][:5] and rows[0].summary["worker"].startswith("w")


def test_committed_job_survives_connection_loss(queue: JobQueue, tmp_path: Path) -> None:
    job_id = queue.add_job(_obj(1, tmp_path))
    # another raw connection (as another process would) sees the row immediately: it is committed
    raw = sqlite3.connect(str(queue.db_path))
    assert raw.execute("SELECT status FROM jobs WHERE id=?", (job_id,)).fetchone() == ("pending",)
    raw.close()


def test_outbound_item_validation() -> None:
    with pytest.raises(ValueError, match="unknown outbound kind 'pdf'"):
        OutboundItem("pacs", Path("/x"), "1.2", SR, "pdf")
    with pytest.raises(ValueError, match="without a destination"):
        OutboundItem("", Path("/x"), "1.2", SR, "sr")


def test_requeue_after_a_transient_failure(queue: JobQueue, tmp_path: Path) -> None:
    job_id = queue.add_job(_obj(1, tmp_path))
    claimed = queue.claim_job("w1")
    assert claimed is not None and claimed.job_id == job_id
    assert queue.requeue_job(job_id, "no Triton server answers", max_runs=2)
    row = queue.get_job(job_id)
    assert row is not None and row.status == "pending" and row.error == "no Triton server answers"
    with pytest.raises(JobStateError, match="expected running"):
        queue.requeue_job(job_id, "again")
    assert queue.claim_job("w2") is not None  # second run
    assert not queue.requeue_job(job_id, "still down", max_runs=2)
    row = queue.get_job(job_id)
    assert row is not None and row.status == "error" and "gave up after 2 runs" in row.error
