"""StorageSCP with pynetdicom as the peer SCU: association policy, statuses, durability order, drain; logsafe."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    MRImageStorage,
    Verification,
)

from dicom_node.jobqueue import JobQueue
from dicom_node.logsafe import PhiFilter, PhiSafeFormatter, describe, redact, set_debug_phi
from dicom_node.scp import StorageSCP
from dicom_node.spool import PREAMBLE, Spool, encode_file_meta
from nodecore.config_schema import Caller, NodeConfig, NodeSettings, Timeouts
from nodecore.received import ReceivedObject

CR = str(ComputedRadiographyImageStorage)


def cr_dataset(uid: str = "1.2.3.4.5", name: str = "Doe^Jane") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = "1.2.3"
    ds.Modality = "CR"
    ds.PatientName = name
    ds.PatientID = "PID-4711"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(range(32))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def raw_file(tmp_path: Path, name: str, dataset_bytes: bytes, uid: str = "1.2.3.4.9", sop: str = CR) -> Path:
    """A DICOM file whose dataset part is exactly ``dataset_bytes`` (sent unparsed with chunked C-STORE)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / name
    path.write_bytes(PREAMBLE + encode_file_meta(meta) + dataset_bytes)
    return path


def dataset_bytes(ds: Dataset) -> bytes:
    """Explicit VR LE dataset bytes (no file meta) of ``ds``."""
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.9"
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    raw = buf.getvalue()
    return raw[144 + int.from_bytes(raw[140:144], "little"):]


class Node:
    """A running StorageSCP on an ephemeral loopback port whose config can be swapped (a reload)."""

    def __init__(self, root: Path, **node_kw: object) -> None:
        self.root = root
        self.stored: list[ReceivedObject] = []
        self.set_config(**node_kw)
        self.spool = Spool(root, 0, "replace")
        self.queue = JobQueue(root / "queue.sqlite3")
        self.scp = StorageSCP(lambda: self.config, self.spool, self.queue, on_stored=self.stored.append)
        self.scp.start()
        self.port = self.scp.port

    def set_config(self, **node_kw: object) -> None:
        kw: dict[str, object] = {"ae_title": "NODE", "bind": "127.0.0.1", "port": 0, "storage": self.root,
                                 "min_free_disk_mb": 0.0, "max_associations": 4}
        kw.update(node_kw)
        self.config = NodeConfig(path=None, node=NodeSettings(**kw), destinations={}, models={}, routes=())  # type: ignore[arg-type]

    def spooled(self) -> list[Path]:
        return [p for p in (self.root / "objects").rglob("*.dcm")]


@pytest.fixture()
def node(tmp_path: Path):
    n = Node(tmp_path / "node")
    yield n
    n.scp.stop(drain_timeout=2)


def scu(calling: str = "SCU", contexts: tuple[str, ...] = (CR, str(Verification))) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for uid in contexts:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    return ae


def associate(node: Node, called: str = "NODE", calling: str = "SCU", **kw: object):
    return scu(calling, **kw).associate("127.0.0.1", node.port, ae_title=called)  # type: ignore[arg-type]


def reject_reason(assoc) -> tuple[int, int, int]:
    p = assoc.acceptor.primitive
    return (p.result, p.result_source, p.diagnostic)


def store(node: Node, ds_or_path, **kw: object) -> Dataset:
    assoc = associate(node, **kw)
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds_or_path)
    finally:
        assoc.release()


@pytest.fixture()
def chunked_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's dataset bytes unparsed (what a broken sender puts on the wire)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


# -- association policy ---------------------------------------------------------------------------------------


def test_echo_and_store_commit_job_before_success(node: Node) -> None:
    assoc = associate(node)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    status = assoc.send_c_store(cr_dataset())
    assoc.release()
    assert status.Status == 0x0000
    # success implies: file renamed into place and the job committed (seen from another connection)
    fresh = JobQueue(node.root / "queue.sqlite3")
    jobs = fresh.recent_jobs()
    assert len(jobs) == 1 and jobs[0].status == "pending" and jobs[0].sop_instance_uid == "1.2.3.4.5"
    obj = fresh.claim_job("w")
    assert obj is not None and obj.path.exists() and obj.calling_ae == "SCU" and obj.study_instance_uid == "1.2.3"
    assert pydicom.dcmread(obj.path).PatientName == "Doe^Jane"
    assert [o.job_id for o in node.stored] == [obj.job_id]


def test_called_ae_mismatch_rejected_permanent_called_ae(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicom_node.scp")
    assoc = associate(node, called="OTHER")
    assert assoc.is_rejected and reject_reason(assoc) == (1, 1, 7)
    assert "rejected association from AE 'SCU'" in caplog.text and "reason=7" in caplog.text
    node.set_config(require_called_ae=False)  # reload: any called AE title accepted now
    assoc = associate(node, called="OTHER")
    assert assoc.is_established
    assoc.release()


def test_calling_ae_allow_list_with_host_pinning(node: Node) -> None:
    node.set_config(allowed_callers=(Caller("CT1"), Caller("XR1", host="10.9.9.9"), Caller("XR2", host="127.0.0.1")))
    rejected = associate(node, calling="INTRUDER")
    assert rejected.is_rejected and reject_reason(rejected) == (1, 1, 3)
    wrong_host = associate(node, calling="XR1")
    assert wrong_host.is_rejected and reject_reason(wrong_host) == (1, 1, 3)
    for calling in ("CT1", "XR2"):
        ok = associate(node, calling=calling)
        assert ok.is_established, calling
        ok.release()


def test_max_associations_local_limit(node: Node) -> None:
    node.set_config(max_associations=1)
    first = associate(node)
    assert first.is_established
    second = associate(node)
    assert second.is_rejected and reject_reason(second) == (2, 3, 2)
    first.release()
    time.sleep(0.2)
    third = associate(node)
    assert third.is_established
    third.release()


def test_unconfigured_sop_class_refused_at_negotiation(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicom_node.scp")
    node.set_config(sop_classes=("cr",))
    assoc = associate(node, contexts=(str(MRImageStorage), CR))
    assert assoc.is_established
    results = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
    assert results == {str(MRImageStorage): 0x03}  # abstract syntax not supported
    mr = cr_dataset("1.2.3.4.77")
    mr.SOPClassUID = MRImageStorage
    with pytest.raises(ValueError, match="No presentation context"):
        assoc.send_c_store(mr)
    assert assoc.send_c_store(cr_dataset()).Status == 0
    assoc.release()
    assert "1 refused" in caplog.text and "MR Image Storage" in caplog.text


def test_acse_and_network_timeouts_from_config(node: Node) -> None:
    node.set_config(timeouts=Timeouts(acse=1.0, dimse=5.0, network=1.5))
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as silent:  # never sends A-ASSOCIATE-RQ
        t0 = time.monotonic()
        assert silent.recv(1024) == b""  # the node hangs up
        assert time.monotonic() - t0 < 8
    idle = associate(node)
    assert idle.is_established
    deadline = time.monotonic() + 10
    while idle.is_established and time.monotonic() < deadline:
        time.sleep(0.1)
    assert idle.is_aborted  # idle past the network timeout: the node aborts the association
    assert store(node, cr_dataset()).Status == 0


# -- C-STORE statuses -----------------------------------------------------------------------------------------


def test_watermark_answers_a700_without_writing_and_keeps_serving(node: Node) -> None:
    node.set_config(min_free_disk_mb=1e12)
    status = store(node, cr_dataset())
    assert status.Status == 0xA700 and "watermark" in status.ErrorComment
    assert node.spooled() == [] and node.queue.recent_jobs() == []
    node.set_config(min_free_disk_mb=0)
    assert store(node, cr_dataset()).Status == 0
    assert len(node.spooled()) == 1


@pytest.mark.usefixtures("chunked_send")
def test_malformed_datasets_get_c000_and_node_keeps_serving(node: Node, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicom_node.scp")
    good = dataset_bytes(cr_dataset("1.2.3.4.9"))
    garbage = raw_file(tmp_path, "garbage.dcm", bytes((i * 37 + 11) % 256 for i in range(3000)))
    truncated = raw_file(tmp_path, "truncated.dcm", good[:-7])
    no_uid_ds = cr_dataset("1.2.3.4.9")
    del no_uid_ds.SOPInstanceUID
    no_uid = raw_file(tmp_path, "no_uid.dcm", dataset_bytes(no_uid_ds))
    other_uid = raw_file(tmp_path, "other.dcm", good, uid="1.2.3.4.10")
    other_class = raw_file(tmp_path, "class.dcm", good, sop="1.2.840.10008.5.1.4.1.1.1.1")
    assoc = associate(node, contexts=(CR, "1.2.840.10008.5.1.4.1.1.1.1"))
    assert assoc.is_established
    expected = [(garbage, 0xC000, "malformed"), (truncated, 0xC000, "runs past the end"),
                (no_uid, 0xC000, "no SOP Instance UID"), (other_uid, 0xC001, "differs"),
                (other_class, 0xA900, "differs")]
    for path, code, words in expected:
        status = assoc.send_c_store(path)
        assert status.Status == code, path.name
        assert status.ErrorComment
        assert words in caplog.text
    assert assoc.send_c_store(raw_file(tmp_path, "good.dcm", good)).Status == 0  # same association still works
    assoc.release()
    assert len(node.spooled()) == 1 and len(node.queue.recent_jobs()) == 1
    stats = node.scp.stats
    assert stats["failed"] == 5 and stats["stored"] == 1 and stats["bytes"] > len(good)
    assert "Doe" not in caplog.text and "PID-4711" not in caplog.text
    assert not list(node.root.rglob("*.tmp"))


@pytest.mark.parametrize("policy", ["replace", "keep", "reject"])
def test_duplicate_policies_over_the_wire(node: Node, policy: str) -> None:
    node.set_config(duplicate_policy=policy)
    assert store(node, cr_dataset(name="First^One")).Status == 0
    status = store(node, cr_dataset(name="Second^Two"))
    (path,) = node.spooled()
    stored_name = str(pydicom.dcmread(path).PatientName)
    jobs = node.queue.recent_jobs()
    if policy == "replace":
        assert status.Status == 0 and stored_name == "Second^Two" and len(jobs) == 2
    elif policy == "keep":
        assert status.Status == 0 and stored_name == "First^One" and len(jobs) == 1
    else:
        assert status.Status == 0x0111 and stored_name == "First^One" and len(jobs) == 1


def test_concurrent_associations_store_everything(node: Node) -> None:
    node.set_config(max_associations=8)
    statuses: list[int] = []
    lock = threading.Lock()

    def sender(k: int) -> None:
        assoc = associate(node, calling=f"MOD{k}")
        assert assoc.is_established
        for i in range(10):
            ds = cr_dataset(f"1.2.3.{k}.{i}")
            ds.PixelData = bytes([k, i]) * (600_000 + 1000 * i)  # ~1.2 MB: the direct I/O path
            ds.Rows, ds.Columns = 600 + i, 1000
            status = assoc.send_c_store(ds).Status
            with lock:
                statuses.append(status)
        assoc.release()

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [0] * 40
    jobs = node.queue.recent_jobs(100)
    assert len(jobs) == 40 and len({j.sop_instance_uid for j in jobs}) == 40
    for obj in node.stored:
        k, i = map(int, obj.sop_instance_uid.split(".")[-2:])
        raw = obj.path.read_bytes()
        assert raw.endswith(bytes([k, i]) * (600_000 + 1000 * i)), obj.sop_instance_uid


def test_failing_on_stored_hook_does_not_fail_the_store(node: Node) -> None:
    def boom(obj: ReceivedObject) -> None:
        raise RuntimeError("hook broke")

    node.scp.on_stored = boom
    assert store(node, cr_dataset()).Status == 0
    assert len(node.queue.recent_jobs()) == 1


def test_stop_drains_open_associations_and_refuses_new_ones(tmp_path: Path) -> None:
    n = Node(tmp_path / "drain")
    held = associate(n)
    assert held.is_established
    stopper = threading.Thread(target=n.scp.stop, kwargs={"drain_timeout": 10})
    stopper.start()
    time.sleep(0.3)
    assert stopper.is_alive()  # waiting for the open association
    late = associate(n)
    assert late.is_rejected and reject_reason(late) == (2, 3, 1)
    assert held.send_c_store(cr_dataset()).Status == 0  # the open one still completes its work
    held.release()
    stopper.join(10)
    assert not stopper.is_alive()
    assert len(n.queue.recent_jobs()) == 1
    refused = associate(n)
    assert not refused.is_established


def test_stop_aborts_stragglers_after_timeout(tmp_path: Path) -> None:
    n = Node(tmp_path / "abort")
    held = associate(n)
    assert held.is_established
    t0 = time.monotonic()
    n.scp.stop(drain_timeout=0.5)
    assert time.monotonic() - t0 < 5
    deadline = time.monotonic() + 5
    while not held.is_aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held.is_aborted


# -- logsafe ----------------------------------------------------------------------------------------------------


def test_describe_is_phi_free() -> None:
    ds = cr_dataset()
    text = describe(ds)
    assert text == "Computed Radiography Image Storage sop=1.2.3.4.5 modality=CR ts=Explicit VR Little Endian"
    assert "Doe" not in text and "PID" not in text
    obj = ReceivedObject(Path("/x"), "1.2.3.4.5", CR, "1.2.840.10008.1.2.4.90", "CT1")
    assert describe(obj).endswith("sop=1.2.3.4.5 modality=? ts=JPEG 2000 Image Compression (Lossless Only)")


def test_redact_and_filter_and_debug_switch() -> None:
    ds = cr_dataset()
    dump = redact(str(ds))
    assert "Doe^Jane" not in dump and "PID-4711" not in dump and "1.2.3.4.5" in dump and "<redacted>" in dump
    assert redact("PatientName=Doe^Jane, PatientID: 'X 1'; ok") == "PatientName=<redacted>, PatientID: <redacted>; ok"
    logger = logging.getLogger("test_logsafe_phi")
    logger.propagate = False
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PhiFilter())
    logger.addHandler(handler)
    try:
        logger.warning("bad object PatientName=%s from %s", "Doe^Jane", "CT1")
        try:
            raise ValueError("PatientID=PID-4711 not parseable")
        except ValueError:
            logger.exception("failed")
        set_debug_phi(True)
        logger.warning("debug PatientName=%s", "Doe^Jane")
    finally:
        set_debug_phi(False)
        logger.removeHandler(handler)
    lines = stream.getvalue()
    assert "bad object PatientName=<redacted>" in lines  # unquoted values are redacted up to , ; ) or line end
    assert "PID-4711" not in lines.split("debug")[0]
    assert "debug PatientName=Doe^Jane" in lines  # the admin switch lets it through
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "(0010,0010) Patient's Name  PN: 'Doe^Jane'", None,
                               None)
    assert "Doe" not in PhiSafeFormatter().format(record)
