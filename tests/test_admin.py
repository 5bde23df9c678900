"""`dicom-node status/retry/echo/send` as real subprocesses against real peers (Orthanc, the job database).

Also the dead-letter path: a permanently rejecting PACS puts items in the dead letter queue at once; after the PACS
is fixed, `dicom-node retry` resubmits them and a running sender delivers them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

from dicom_node.jobqueue import JobQueue, OutboundItem
from dicom_node.outbound import DestinationSender
from nodecore.config_schema import Destination, NodeConfig, NodeSettings, RetryPolicy, Timeouts
from nodecore.received import ReceivedObject
from tests.conftest import ROOT
from tests.node_process import make_small_images
from tests.orthanc import Orthanc, free_port, orthanc  # noqa: F401


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_node.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def queue_files(queue: JobQueue, files: list[Path], destination: str) -> list[int]:
    """Jobs for ``files`` (as the SCP would add them) finished with one 'original' outbound item each."""
    ids = []
    for f in files:
        meta = read_file_meta_info(f)
        obj = ReceivedObject(f, str(meta.MediaStorageSOPInstanceUID), str(meta.MediaStorageSOPClassUID),
                             str(meta.TransferSyntaxUID), "MODALITY", received_at=time.time())
        queue.add_job(obj)
        claimed = queue.claim_job("test")
        assert claimed is not None and claimed.job_id is not None
        queue.finish_job(claimed.job_id, status="done", summary={"route": "images"}, outbound=[
            OutboundItem(destination, f, obj.sop_instance_uid, obj.sop_class_uid, "original")])
        ids.append(claimed.job_id)
    return ids


def config_for(dest: Destination) -> NodeConfig:
    return NodeConfig(path=None, node=NodeSettings(timeouts=Timeouts(acse=5, dimse=10, network=10, connection=3)),
                      destinations={dest.name: dest}, models={}, routes=())


@pytest.mark.peers
def test_echo_and_send(orthanc: Orthanc, tmp_path: Path, realdata_files: list[Path]) -> None:  # noqa: F811
    peer = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    ok = cli("echo", peer, "--aet", "ADMIN")
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    down = cli("echo", f"ORTHANC@127.0.0.1:{free_port()}", "--timeout", "3")
    assert down.returncode == 1 and "connection refused" in down.stdout
    bad = cli("echo", "ORTHANC-127.0.0.1")
    assert bad.returncode == 2 and "AE@HOST:PORT" in bad.stderr

    tree = tmp_path / "tree"
    images = make_small_images(tree / "a" / "b", 3)
    (tree / "README.txt").write_text("not dicom")
    kodak = next(p for p in realdata_files if p.name.startswith("cr_kodak"))  # odd-length J2K fragment: padded
    res = cli("send", str(tree), str(kodak), "--to", peer, "--aet", "ADMIN")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SKIPPED  {tree / 'README.txt'}: not a DICOM file" in res.stdout
    assert res.stdout.count("OK       ") == 4 and "4/4 sent" in res.stdout
    assert "Synthetic" not in res.stdout and "SYN0001" not in res.stdout  # no PHI printed
    uids = orthanc.sop_instance_uids()
    for f in [*images, kodak]:
        assert uids[str(read_file_meta_info(f).MediaStorageSOPInstanceUID)] == 1

    # one failure makes the command fail; the per-file line says why
    orthanc.start(reject=True)
    res = cli("send", str(images[0]), "--to", peer, "--aet", "STRANGER")
    assert res.returncode == 1
    assert "FAILED" in res.stdout and "rejected" in res.stdout and "permanent" in res.stdout
    res = cli("send", str(tmp_path / "nope.dcm"), "--to", peer)
    assert res.returncode == 1 and "nothing to send" in res.stderr


@pytest.mark.peers
def test_dead_letter_then_retry_delivers(orthanc: Orthanc, tmp_path: Path) -> None:  # noqa: F811
    storage = tmp_path / "storage"
    queue = JobQueue(storage / "queue.sqlite3")
    files = make_small_images(tmp_path / "in", 4)
    queue_files(queue, files, "pacs")
    orthanc.start(reject=True)  # permanent rejection of our calling AE
    dest = Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port,
                       calling_ae="NODE", retry=RetryPolicy(initial_delay_s=0.2, max_delay_s=1, max_attempts=10))
    config = config_for(dest)
    sender = DestinationSender("pacs", lambda: config, lambda: queue, poll_s=0.2)
    sender.start()
    try:
        deadline = time.monotonic() + 20
        while len(queue.dead_letters()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        dead = queue.dead_letters()
        assert len(dead) == 4, queue.outbound_summary()
        assert all(d.attempts == 1 for d in dead)  # permanent: no retries
        assert all("rejected" in d.last_error and "Permanent" in d.last_error for d in dead)

        status = cli("status", "--storage", str(storage), "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["outbound"]["pacs"]["dead"] == 4
        assert {d["sop_instance_uid"] for d in report["dead_letters"]} == {d.sop_instance_uid for d in dead}
        from tests.node_process import node_config

        (tmp_path / "node.yaml").write_text(node_config(free_port(), storage, orthanc.dicom_port))
        text = cli("status", "--config", str(tmp_path / "node.yaml"))
        assert "pacs: pending 0, sending 0, sent 0, dead 4" in text.stdout
        assert "Calling AE Title Not Recognised" in text.stdout or "Calling AE" in text.stdout
        assert "Synthetic" not in text.stdout + status.stdout and "SYN0001" not in text.stdout + status.stdout

        orthanc.start()  # fixed: accepts any AE again
        one = cli("retry", "--storage", str(storage), "--id", str(dead[0].id))
        assert one.returncode == 0 and "resubmitted 1" in one.stdout
        wrong = cli("retry", "--storage", str(storage), "--destination", "elsewhere")
        assert "resubmitted 0" in wrong.stdout
        rest = cli("retry", "--storage", str(storage), "--destination", "pacs")
        assert rest.returncode == 0 and "resubmitted 3" in rest.stdout
        deadline = time.monotonic() + 20
        while queue.outbound_summary()["pacs"]["sent"] < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queue.outbound_summary()["pacs"] == {"pending": 0, "sending": 0, "sent": 4, "dead": 0}
    finally:
        sender.stop(2)
        sender.join(10)
    assert set(orthanc.sop_instance_uids()) == {str(read_file_meta_info(f).MediaStorageSOPInstanceUID) for f in files}


def test_status_needs_a_storage(tmp_path: Path) -> None:
    res = cli("status", "--storage", str(tmp_path / "none"))
    assert res.returncode == 2 and "no job database" in res.stderr
    res = cli("status")
    assert res.returncode == 2 and "--config" in res.stderr
