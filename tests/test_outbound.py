"""Outbound C-STORE against real peers: Orthanc (accepts every syntax), dcmtk storescp (uncompressed only),
a refusing Orthanc, a closed port, and a pynetdicom SCP answering chosen failure statuses."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]

from dicom_node.netutil import wait_port
from dicom_node.outbound import Outcome, classify_status, echo, next_delay_s, parse_peer, store_files
from nodecore.config_schema import Destination, RetryPolicy, Timeouts
from tests.conftest import require_tool
from tests.orthanc import Orthanc, free_port, orthanc  # noqa: F401

FAST = Timeouts(acse=5, dimse=10, network=10, connection=3)


def dest_for(port: int, ae: str = "ORTHANC", calling: str = "DICOMNODE") -> Destination:
    return Destination(name="pacs", ae_title=ae, host="127.0.0.1", port=port, calling_ae=calling)


def test_parse_peer_and_errors() -> None:
    d = parse_peer("PACS@10.0.0.5:104", calling_ae="ME")
    assert (d.ae_title, d.host, d.port, d.calling_ae) == ("PACS", "10.0.0.5", 104, "ME")
    for bad in ("PACS10.0.0.5:104", "PACS@host", "PACS@host:x", "@h:1", "PACS@h:70000", "A" * 17 + "@h:1"):
        with pytest.raises(ValueError):
            parse_peer(bad)


def test_backoff_grows_and_caps() -> None:
    p = RetryPolicy(initial_delay_s=2, max_delay_s=30, multiplier=2, max_attempts=5)
    assert [next_delay_s(p, n) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


def test_status_classes() -> None:
    assert classify_status(0x0000)[0] is Outcome.SENT
    assert classify_status(0xB007)[0] is Outcome.SENT
    assert classify_status(0xA700)[0] is Outcome.TRANSIENT
    assert classify_status(0xA7FF)[0] is Outcome.TRANSIENT
    assert classify_status(0xA900)[0] is Outcome.PERMANENT
    assert classify_status(0xC123)[0] is Outcome.PERMANENT
    assert classify_status(0x0122) == (Outcome.PERMANENT, "0x0122 SOP class not supported")


@pytest.mark.peers
def test_store_real_files_to_orthanc_in_their_own_syntax(orthanc: Orthanc, realdata_files: list[Path]) -> None:  # noqa: F811
    results = store_files(dest_for(orthanc.dicom_port), realdata_files, FAST)
    assert [r.outcome for r in results] == [Outcome.SENT] * len(realdata_files), [r.reason for r in results]
    for path, res in zip(realdata_files, results, strict=True):
        assert res.transfer_syntax == str(read_file_meta_info(path).TransferSyntaxUID), path.name
        assert res.status == 0
    expected = {str(read_file_meta_info(p).MediaStorageSOPInstanceUID) for p in realdata_files}
    assert set(orthanc.sop_instance_uids()) == expected
    # Orthanc stored every file (three files share the RG2 SOP Instance UID: stored three times).
    assert sum(orthanc.store_events().values()) == len(realdata_files)
    ok, msg = echo(dest_for(orthanc.dicom_port), FAST)
    assert ok, msg


@pytest.mark.peers
def test_uncompressed_only_peer_gets_decompressed_copies(tmp_path: Path, realdata_files: list[Path]) -> None:
    storescp = require_tool("storescp")
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    # storescp by default accepts only uncompressed transfer syntaxes.
    proc = subprocess.Popen([storescp, "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        picks = [p for p in realdata_files if p.name.startswith(("cr_fuji", "cr_wg04_RG3", "loc_philips_MAROTECH", "hard_"))]
        results = store_files(dest_for(port, ae="STORESCP"), picks, FAST)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    by_name = {p.name: r for p, r in zip(picks, results, strict=True)}
    hard = by_name.pop("hard_cr_wg04_RG2_hip_JPLY_12bit_invalid_SOS.dcm")
    assert hard.outcome is Outcome.PERMANENT and "could not be decompressed" in hard.reason, hard.reason
    for name, res in by_name.items():
        assert res.outcome is Outcome.SENT, (name, res.reason)
        assert res.transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian), name
    received = sorted(out.iterdir())
    assert len(received) == 3
    for f in received:
        ds = dcmread(f)
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
        assert ds.SOPInstanceUID in {r.sop_instance_uid for r in by_name.values()}  # UID kept on decompression
        ds.pixel_array  # noqa: B018 - the decompressed pixel data decodes


@pytest.mark.peers
def test_rejection_is_permanent_and_refused_is_transient(orthanc: Orthanc, realdata_files: list[Path]) -> None:  # noqa: F811
    f = realdata_files[:1]
    orthanc.start(reject=True)
    [res] = store_files(dest_for(orthanc.dicom_port, calling="UNKNOWNAE"), f, FAST)
    assert res.outcome is Outcome.PERMANENT
    assert "rejected" in res.reason and "Permanent" in res.reason, res.reason
    ok, msg = echo(dest_for(orthanc.dicom_port, calling="UNKNOWNAE"), FAST)
    assert not ok and "rejected" in msg
    orthanc.stop(kill=True)
    [res] = store_files(dest_for(orthanc.dicom_port), f, FAST)
    assert res.outcome is Outcome.TRANSIENT and res.reason == "connection refused", res.reason
    bad = Path(orthanc.workdir / "not-dicom.txt")
    bad.write_text("hello")
    [res] = store_files(dest_for(orthanc.dicom_port), [bad], FAST)
    assert res.outcome is Outcome.PERMANENT and "cannot read DICOM file meta" in res.reason


@pytest.mark.peers
def test_failure_statuses_from_a_real_scp(realdata_files: list[Path]) -> None:
    """A pynetdicom SCP answers 0xA700 (out of resources), then 0xA900, then 0xC001, then success."""
    statuses = [0xA700, 0xA900, 0xC001, 0x0000]
    seen: list[int] = []

    def handle(event: evt.Event) -> int:
        status = statuses[len(seen)]
        seen.append(status)
        return status

    scp = AE(ae_title="STATUSSCP")
    scp.add_supported_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        f = [p for p in realdata_files if p.name.startswith("cr_fuji")]
        results = store_files(dest_for(port, ae="STATUSSCP"), f * 4, FAST)
    finally:
        server.shutdown()
    assert [r.outcome for r in results] == [Outcome.TRANSIENT, Outcome.PERMANENT, Outcome.PERMANENT, Outcome.SENT]
    assert [r.status for r in results] == statuses
    assert "out of resources" in results[0].reason and "cannot understand" in results[2].reason


@pytest.mark.peers
def test_sender_backs_off_while_pacs_is_down_then_delivers(
    orthanc: Orthanc, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """PACS down: items retry with growing delays (0.3, 0.6, 1.2 -> capped 1.0 s); back up: delivered once."""
    import logging
    import re

    from dicom_node.jobqueue import JobQueue
    from dicom_node.outbound import DestinationSender
    from tests.node_process import make_small_images
    from tests.test_admin import config_for, queue_files

    queue = JobQueue(tmp_path / "storage" / "queue.sqlite3")
    files = make_small_images(tmp_path / "in", 5)
    orthanc.stop(kill=True)
    queue_files(queue, files, "pacs")
    dest = Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port,
                       calling_ae="NODE", retry=RetryPolicy(initial_delay_s=0.3, max_delay_s=1.0, multiplier=2,
                                                            max_attempts=100))
    config = config_for(dest)
    sender = DestinationSender("pacs", lambda: config, lambda: queue, poll_s=0.1)
    caplog.set_level(logging.WARNING, logger="dicom_node.outbound")
    sender.start()
    try:
        time.sleep(3.0)
        retries = [r.getMessage() for r in caplog.records if "outbound retry" in r.getMessage()]
        uid0 = str(read_file_meta_info(files[0]).MediaStorageSOPInstanceUID)
        mine = [m for m in retries if uid0 in m]
        attempts = [int(re.search(r"attempt=(\d+)/100", m).group(1)) for m in mine]
        delays = [float(re.search(r"next_try_in=([\d.]+)s", m).group(1)) for m in mine]
        assert attempts[:4] == [1, 2, 3, 4], mine
        assert delays[:4] == [0.3, 0.6, 1.0, 1.0], mine
        assert all("reason=connection refused" in m and "destination=pacs" in m for m in mine)
        assert len(mine) <= 6  # backoff, not a busy loop: ~0.3+0.6+1+1 s of waiting in 3 s
        assert queue.outbound_summary()["pacs"]["sent"] == 0
        orthanc.start()
        deadline = time.monotonic() + 15
        while queue.outbound_summary()["pacs"]["sent"] < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        sender.stop(2)
        sender.join(10)
    assert queue.outbound_summary()["pacs"] == {"pending": 0, "sending": 0, "sent": 5, "dead": 0}
    events = orthanc.store_events()
    assert sorted(events.values()) == [1] * 5  # each delivered exactly once


def test_unreachable_destination_gets_one_association_attempt_per_backoff_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Four due items in batches of one, nothing listening: the sender does not dial four times in a row; it waits
    out the backoff between association attempts (and a stop while unreachable returns at once)."""
    import logging

    from dicom_node.jobqueue import JobQueue
    from dicom_node.outbound import DestinationSender
    from tests.node_process import make_small_images
    from tests.test_admin import config_for, queue_files

    queue = JobQueue(tmp_path / "storage" / "queue.sqlite3")
    queue_files(queue, make_small_images(tmp_path / "in", 4), "pacs")
    dest = Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=free_port(), calling_ae="NODE",
                       retry=RetryPolicy(initial_delay_s=0.5, max_delay_s=0.5, multiplier=2, max_attempts=100))
    config = config_for(dest)
    sender = DestinationSender("pacs", lambda: config, lambda: queue, batch_size=1, poll_s=0.05)
    caplog.set_level(logging.WARNING, logger="dicom_node.outbound")
    sender.start()
    time.sleep(1.3)
    t0 = time.monotonic()
    sender.stop(30)
    sender.join(10)
    assert time.monotonic() - t0 < 1.0  # no flush attempts against an unreachable destination
    times = [r.created for r in caplog.records if "outbound retry" in r.getMessage()]
    assert 2 <= len(times) <= 4, len(times)  # t = 0, 0.5, 1.0 (not 4 at once, then again every 0.5 s)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(g >= 0.45 for g in gaps), gaps
    assert queue.outbound_summary()["pacs"]["sending"] == 0


def _queue_results(queue: Any, files_per_job: list[list[tuple[Path, str]]], destination: str) -> None:
    """One finished job per entry, with its (file, kind) outbound items (as a worker queues an SR and companions)."""
    from dicom_node.jobqueue import OutboundItem, ReceivedObject

    for items in files_per_job:
        src = items[0][0]
        meta = read_file_meta_info(src)
        obj = ReceivedObject(src, f"{meta.MediaStorageSOPInstanceUID}.9", str(meta.MediaStorageSOPClassUID),
                             str(meta.TransferSyntaxUID), "MODALITY", received_at=time.time())
        queue.add_job(obj)
        claimed = queue.claim_job("test")
        assert claimed is not None and claimed.job_id is not None
        out = []
        for f, kind in items:
            m = read_file_meta_info(f)
            out.append(OutboundItem(destination, f, str(m.MediaStorageSOPInstanceUID), str(m.MediaStorageSOPClassUID),
                                    kind))
        queue.finish_job(claimed.job_id, status="done", summary={"route": "images"}, outbound=out)


@pytest.mark.peers
@pytest.mark.slow
def test_parallel_lanes_keep_srs_ahead_of_companions(tmp_path: Path) -> None:
    """30 jobs x (SR + 3 companions) due at once, a pynetdicom SCP that takes 40 ms per SR: the sender opens more
    associations (up to the cap, never beyond), each object arrives exactly once, and no companion object is on
    the wire before every SR that was due before it (all 30 SRs were due first)."""
    import threading

    from dicom_node.jobqueue import JobQueue
    from dicom_node.outbound import DestinationSender
    from tests.node_process import make_small_images
    from tests.test_admin import config_for

    files = make_small_images(tmp_path / "in", 120)
    jobs = [[(files[4 * j], "sr"), (files[4 * j + 1], "sc"), (files[4 * j + 2], "gsps"), (files[4 * j + 3], "sc")]
            for j in range(30)]
    kind_of = {str(read_file_meta_info(f).MediaStorageSOPInstanceUID): k for job in jobs for f, k in job}
    queue = JobQueue(tmp_path / "storage" / "queue.sqlite3")
    _queue_results(queue, jobs, "pacs")

    lock = threading.Lock()
    arrivals: list[tuple[str, float, float]] = []  # (uid, start, end) per C-STORE
    open_assocs = {"now": 0, "max": 0}

    def on_store(event: evt.Event) -> int:
        t0 = time.monotonic()
        uid = str(event.request.AffectedSOPInstanceUID)
        if kind_of.get(uid) == "sr":
            time.sleep(0.04)
        with lock:
            arrivals.append((uid, t0, time.monotonic()))
        return 0x0000

    def on_open(event: evt.Event) -> None:
        with lock:
            open_assocs["now"] += 1
            open_assocs["max"] = max(open_assocs["max"], open_assocs["now"])

    def on_close(event: evt.Event) -> None:
        with lock:
            open_assocs["now"] -= 1

    scp_ae = AE(ae_title="PACS")
    scp_ae.maximum_associations = 16
    scp_ae.add_supported_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    server = scp_ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, on_store), (evt.EVT_ESTABLISHED, on_open), (evt.EVT_RELEASED, on_close),
        (evt.EVT_ABORTED, on_close)])
    dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port, calling_ae="NODE",
                       max_associations=3)
    config = config_for(dest)
    sender = DestinationSender("pacs", lambda: config, lambda: queue, poll_s=0.05)
    sender.start()
    try:
        deadline = time.monotonic() + 60
        while queue.outbound_summary()["pacs"].get("sent", 0) < 120 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sender.stop(2)
        sender.join(10)
        server.shutdown()
    assert queue.outbound_summary()["pacs"] == {"pending": 0, "sending": 0, "sent": 120, "dead": 0}
    assert sorted(kind_of) == sorted(u for u, _, _ in arrivals)  # each object exactly once
    assert sender.max_lanes_seen == 3 and open_assocs["max"] == 3, (sender.max_lanes_seen, open_assocs)
    last_sr_end = max(end for u, _, end in arrivals if kind_of[u] == "sr")
    first_companion = min(start for u, start, _ in arrivals if kind_of[u] != "sr")
    assert first_companion >= last_sr_end, "a companion object went out before an SR that was due before it"


@pytest.mark.peers
@pytest.mark.slow
def test_a_lane_stays_free_for_a_new_sr_while_companions_are_slow(tmp_path: Path) -> None:
    """A PACS that takes 0.5 s per companion object, 24 companions due, cap 3: at most two lanes carry companions,
    so an SR queued later (with a wake-up, as the workers give) is stored well before any companion batch ends."""
    import threading

    from dicom_node.jobqueue import JobQueue
    from dicom_node.outbound import DestinationSender
    from tests.node_process import make_small_images
    from tests.test_admin import config_for

    files = make_small_images(tmp_path / "in", 25)
    queue = JobQueue(tmp_path / "storage" / "queue.sqlite3")
    _queue_results(queue, [[(f, "sc")] for f in files[:24]], "pacs")
    sr_uid = str(read_file_meta_info(files[24]).MediaStorageSOPInstanceUID)
    lock = threading.Lock()
    arrived: dict[str, float] = {}
    busy = {"now": 0, "max": 0}

    def on_store(event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid != sr_uid:
            with lock:
                busy["now"] += 1
                busy["max"] = max(busy["max"], busy["now"])
            time.sleep(0.5)
            with lock:
                busy["now"] -= 1
        with lock:
            arrived[uid] = time.monotonic()
        return 0x0000

    scp_ae = AE(ae_title="PACS")
    scp_ae.maximum_associations = 16
    scp_ae.add_supported_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    server = scp_ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port, calling_ae="NODE",
                       max_associations=3)
    config = config_for(dest)
    sender = DestinationSender("pacs", lambda: config, lambda: queue, poll_s=0.05)
    sender.start()
    try:
        deadline = time.monotonic() + 20
        while sender.lanes < 2 and time.monotonic() < deadline:  # the backlog opened a second lane
            time.sleep(0.02)
        time.sleep(0.3)
        _queue_results(queue, [[(files[24], "sr")]], "pacs")
        queued_at = time.monotonic()
        sender.wake()
        while sr_uid not in arrived and time.monotonic() < deadline:
            time.sleep(0.01)
        sr_latency = arrived.get(sr_uid, float("inf")) - queued_at
        while queue.outbound_summary()["pacs"].get("sent", 0) < 25 and time.monotonic() < deadline + 20:
            time.sleep(0.05)
    finally:
        sender.stop(2)
        sender.join(10)
        server.shutdown()
    assert busy["max"] <= 2, busy  # one lane of three kept for SRs
    assert sr_latency < 1.0, f"the new SR waited {sr_latency:.2f} s behind companion batches (2 s each)"
    assert queue.outbound_summary()["pacs"] == {"pending": 0, "sending": 0, "sent": 25, "dead": 0}
