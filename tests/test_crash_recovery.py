"""kill -9 of `dicom-node serve` in the middle of a stream of C-STOREs, then a restart.

Every object the node acknowledged with Success must be processed and reach Orthanc; Orthanc's index holds each
SOP Instance UID once, and Orthanc's own store log (Lua OnStoredInstance, counting re-deliveries too) shows a
second delivery only for items whose send was interrupted by the kill (reported at restart as "interrupted
send(s) queued again"). Worker processes must die with the node (no orphans).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.filereader import read_file_meta_info

from dicom_node.jobqueue import JobQueue
from tests.conftest import require_tool
from tests.node_process import NodeProcess, make_small_images, node_config, parse_storescu
from tests.orthanc import Orthanc, orthanc  # noqa: F401

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.parametrize("lanes", [1, 4])
def test_kill9_mid_stream_then_restart_delivers_each_acknowledged_object(
    tmp_path: Path, orthanc: Orthanc, lanes: int  # noqa: F811
) -> None:
    """With ``lanes`` parallel outbound associations (4: the kill lands while several are open)."""
    node = NodeProcess(tmp_path / "node")
    node.write_config(node_config(node.port, node.storage, orthanc.dicom_port, workers=2, max_associations=lanes))
    files = make_small_images(tmp_path / "in", 150)
    uid = {f: str(read_file_meta_info(f).MediaStorageSOPInstanceUID) for f in files}
    try:
        node.start()
        workers = node.children()
        assert len(workers) >= 2, workers
        log_path = tmp_path / "storescu.log"
        with open(log_path, "w") as out:
            modality = subprocess.Popen(
                [require_tool("storescu"), "-v", "-R", "-aet", "MODALITY", "-aec", "NODE", "127.0.0.1",
                 str(node.port), *map(str, files)], stdout=out, stderr=subprocess.STDOUT,
            )
        # Kill once objects are flowing through all stages: received, processed and (some) sent.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = node.log()
            parallel = lanes == 1 or "opening association lane" in text
            if text.count("outbound sent") >= 10 and log_path.read_text().count("(Success)") >= 40 and parallel:
                break
            time.sleep(0.02)
        assert lanes == 1 or "opening association lane" in node.log(), "no parallel association before the kill"
        assert node.kill9() == -signal.SIGKILL
        modality.wait(60)
        acked = parse_storescu(modality.returncode, log_path.read_text())
        assert 40 <= len(acked.succeeded) < len(files), "the kill did not land mid-stream"
        time.sleep(0.5)
        orphans = [pid for pid in workers if _alive(pid)]
        assert not orphans, f"worker processes outlived the node: {orphans}"

        queue = JobQueue(node.storage / "queue.sqlite3")
        node.start()
        text = node.log()
        m = re.search(r"recovered after an unclean stop: (\d+) interrupted job\(s\) and (\d+) interrupted send\(s\)",
                      text)
        interrupted_sends = int(m.group(2)) if m else 0
        expected = {uid[f] for f in acked.succeeded}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            counts = queue.job_counts()
            pacs = queue.outbound_summary().get("pacs", {})
            if counts["pending"] == counts["running"] == 0 and pacs.get("pending", 1) == pacs.get("sending", 1) == 0:
                break
            time.sleep(0.2)
        assert node.stop() == 0
    finally:
        node.close()

    jobs: dict[str, list[Any]] = {}
    for j in queue.recent_jobs(10_000):
        jobs.setdefault(j.sop_instance_uid, []).append(j)
    for u in expected:
        assert u in jobs, f"acknowledged object {u} has no job"
        assert [j.status for j in jobs[u]] == ["done"], (u, [(j.status, j.error) for j in jobs[u]])
    in_orthanc = orthanc.sop_instance_uids()
    missing = expected - set(in_orthanc)
    assert not missing, f"{len(missing)} acknowledged objects never reached the PACS"
    assert all(in_orthanc[u] == 1 for u in expected)
    events = orthanc.store_events()
    redelivered = {u: n for u, n in events.items() if n > 1}
    assert all(n == 2 for n in redelivered.values()), redelivered
    # outcomes are recorded per file as they arrive: only the files in flight at the kill (one per open
    # association) can go twice, with the same SOP Instance UIDs (Orthanc replaces them: one copy each above)
    assert len(redelivered) <= min(lanes, interrupted_sends), (redelivered, interrupted_sends)
    assert queue.dead_letters() == []
    print(f"acknowledged {len(acked.succeeded)}/{len(files)} before the kill; interrupted sends "
          f"{interrupted_sends}; re-delivered {len(redelivered)}")
