"""The receive side against real dcmtk peers: storescu sends every real file in every transfer syntax we accept,
echoscu; rejects, refused SOP classes, out-of-space and duplicates as dcmtk reports them; the node keeps serving."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from nodecore.config_schema import Caller
from nodecore.sopclasses import DEFAULT_SOP_CLASSES, TRANSFER_SYNTAXES
from tests.conftest import require_tool
from tests.test_scp import Node

pytestmark = pytest.mark.peers


def dataset_part(raw: bytes) -> bytes:
    """The dataset bytes of a DICOM file: after preamble, DICM and the group-length-prefixed file meta."""
    assert raw[128:132] == b"DICM" and raw[132:138] == b"\x02\x00\x00\x00UL"
    return raw[144 + int.from_bytes(raw[140:144], "little"):]


@pytest.fixture()
def node(tmp_path: Path):
    n = Node(tmp_path / "node")
    yield n
    n.scp.stop(drain_timeout=2)


@pytest.fixture(scope="module")
def storescu_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storescu association profile proposing every (SOP class, transfer syntax) pair the node accepts, one
    presentation context each, so storescu sends each file in its own syntax without converting it."""
    lines = ["[[TransferSyntaxes]]"]
    for uid, name in TRANSFER_SYNTAXES.items():
        lines += [f"[TS_{name}]", f"TransferSyntax1 = {uid}"]
    lines += ["[[PresentationContexts]]", "[AllNode]"]
    n = 0
    for sop in DEFAULT_SOP_CLASSES:
        for name in TRANSFER_SYNTAXES.values():
            n += 1
            lines.append(f"PresentationContext{n} = {sop}\\TS_{name}")
    # for the capturing storescp: one context per SOP class accepting every syntax
    lines += ["[CaptureAll]"]
    lines += [f"PresentationContext{i} = {sop}\\AllSyntaxes" for i, sop in enumerate(DEFAULT_SOP_CLASSES, 1)]
    lines[1:1] = ["[AllSyntaxes]", *(f"TransferSyntax{i} = {uid}" for i, uid in enumerate(TRANSFER_SYNTAXES, 1))]
    lines += ["[[Profiles]]", "[AllNode]", "PresentationContexts = AllNode", "[CaptureAll]",
              "PresentationContexts = CaptureAll"]
    path = tmp_path_factory.mktemp("storescu") / "node.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, realdata_dir: Path) -> list[Path]:
    """The syntaxes no real file uses, made by dcmtk from the uncompressed CT localizer."""
    src = realdata_dir / "loc_philips_surview_fodicom_GH342.dcm"
    out = tmp_path_factory.mktemp("variants")
    made = []
    for name, tool, option in [("jpeg_baseline", "dcmcjpeg", "+eb"), ("jpeg_lossless_p14", "dcmcjpeg", "+el"),
                               ("jpegls_near", "dcmcjpls", "+en"), ("deflated", "dcmconv", "+td")]:
        path = out / f"{name}.dcm"
        subprocess.run([require_tool(tool), option, str(src), str(path)], check=True, capture_output=True)
        made.append(path)
    return made


def storescu(node: Node, files: list[Path], *args: str, called: str = "NODE", calling: str = "CT1"):
    return subprocess.run([require_tool("storescu"), "-aet", calling, "-aec", called, *args, "127.0.0.1",
                           str(node.port), *map(str, files)], capture_output=True, text=True, timeout=120)


def echoscu(node: Node, called: str = "NODE", calling: str = "ECHOSCU"):
    return subprocess.run([require_tool("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(node.port)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture()
def wire_capture(tmp_path: Path, storescu_profile: Path):
    """dcmtk storescp in bit-preserving mode (+B, every syntax accepted): records exactly what storescu sent."""
    out = tmp_path / "wire"
    out.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([require_tool("storescp"), "+B", "-xf", str(storescu_profile), "CaptureAll", "-aet",
                             "CAPTURE", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.05)
    yield port, out
    proc.terminate()
    proc.wait(10)


def test_every_file_and_syntax_stored_byte_identical(node: Node, realdata_files: list[Path], variants: list[Path],
                                                     storescu_profile: Path, wire_capture) -> None:
    """Each file goes through storescu in its own transfer syntax; the node stores exactly the bytes storescu put
    on the wire (recorded by storescp +B); those are the source file's bytes unless dcmtk re-encodes on the way."""
    capture_port, capture_dir = wire_capture
    syntaxes = set()
    altered_by_dcmtk = []
    for src in [*realdata_files, *variants]:
        before = len(node.stored)
        proc = storescu(node, [src], "-xf", str(storescu_profile), "AllNode")
        assert proc.returncode == 0, f"{src.name}: {proc.stderr}"
        assert len(node.stored) == before + 1, src.name
        obj = node.stored[-1]
        source_meta = pydicom.dcmread(src, stop_before_pixels=True).file_meta
        assert obj.transfer_syntax_uid == source_meta.TransferSyntaxUID, src.name  # no conversion on the way
        stored = dataset_part(obj.path.read_bytes())
        for old in capture_dir.iterdir():
            old.unlink()
        cap = subprocess.run([require_tool("storescu"), "-aec", "CAPTURE", "-xf", str(storescu_profile), "AllNode",
                              "127.0.0.1", str(capture_port), str(src)], capture_output=True, text=True, timeout=60)
        assert cap.returncode == 0, cap.stderr
        (wire_file,) = list(capture_dir.iterdir())
        assert stored == dataset_part(wire_file.read_bytes()), f"{src.name}: stored bytes differ from the wire"
        if stored != dataset_part(src.read_bytes()):
            altered_by_dcmtk.append(src.name)
        meta = pydicom.dcmread(obj.path, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == source_meta.TransferSyntaxUID
        assert meta.SourceApplicationEntityTitle == "CT1"
        assert obj.job_id is not None
        job = node.queue.get_job(obj.job_id)
        assert job is not None and job.status == "pending" and job.sop_instance_uid == obj.sop_instance_uid
        syntaxes.add(obj.transfer_syntax_uid)
    assert syntaxes == set(TRANSFER_SYNTAXES), set(TRANSFER_SYNTAXES) - syntaxes
    # dcmtk re-encodes on the way (drops group lengths, OW -> OB for encapsulated data, pads odd fragments), so
    # for most compressed files the wire differs from the file; the raw-sender test below covers source identity.
    assert len(altered_by_dcmtk) < len(realdata_files) + len(variants), "dcmtk altered every file: check the test"


def test_raw_sender_every_real_file_byte_identical_to_source(node: Node, realdata_files: list[Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sending each file's dataset bytes unparsed: the spool holds the source file's dataset bytes."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="RAWSCU")
    for src in realdata_files:
        meta = pydicom.dcmread(src, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NODE")
    assert assoc.is_established
    try:
        for src in realdata_files:
            assert assoc.send_c_store(src).Status == 0, src.name
            obj = node.stored[-1]
            assert dataset_part(obj.path.read_bytes()) == dataset_part(src.read_bytes()), src.name
            assert node.queue.get_job(obj.job_id).status == "pending"
    finally:
        assoc.release()
    assert len(node.stored) == len(realdata_files)


def test_all_real_files_in_one_association(node: Node, realdata_files: list[Path],
                                           storescu_profile: Path) -> None:
    proc = storescu(node, realdata_files, "-xf", str(storescu_profile), "AllNode")
    assert proc.returncode == 0, proc.stderr
    assert len(node.stored) == len(realdata_files)
    assert node.queue.job_counts()["pending"] == len(realdata_files)
    assert len(node.spooled()) == len({o.sop_instance_uid for o in node.stored})


def test_echo_and_association_rejects_as_dcmtk_sees_them(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicom_node.scp")
    ok = echoscu(node)
    assert ok.returncode == 0, ok.stderr
    wrong_called = echoscu(node, called="NOTNODE")
    assert wrong_called.returncode != 0
    out = wrong_called.stdout + wrong_called.stderr
    assert "Rejected Permanent" in out and "Called AE Title Not Recognized" in out, out
    assert "rejected association from AE 'ECHOSCU' at 127.0.0.1 to 'NOTNODE'" in caplog.text
    node.set_config(allowed_callers=(Caller("CT1", host="127.0.0.1"),))
    stranger = echoscu(node, calling="STRANGER")
    out = stranger.stdout + stranger.stderr
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in out, out
    assert "calling AE title not in allowed_callers" in caplog.text
    assert echoscu(node, calling="CT1").returncode == 0  # still serving, allowed caller passes


def test_unconfigured_sop_class_refused(node: Node, tmp_path: Path, realdata_dir: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicom_node.scp")
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.Modality = "MR"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\x00" * 8
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    mr = tmp_path / "mr.dcm"
    ds.save_as(mr, enforce_file_format=True)
    proc = storescu(node, [mr], "-R")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "No Acceptable Presentation Contexts" in out, out
    assert "MR Image Storage" in caplog.text and "refused" in caplog.text
    assert node.stored == [] and node.spooled() == []
    good = storescu(node, [realdata_dir / "cr_fuji_chest_CR-MONO1-10-chest.dcm"], "-R", "-xi")
    assert good.returncode == 0, good.stderr


def test_out_of_space_a700_then_serves_again(node: Node, realdata_dir: Path) -> None:
    src = realdata_dir / "loc_philips_surview_fodicom_GH342.dcm"
    node.set_config(min_free_disk_mb=1e12)
    proc = storescu(node, [src], "-v", "-R", "-xe")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Received Store Response (Refused: OutOfResources)" in out, out
    assert node.spooled() == [] and node.queue.recent_jobs() == []
    assert not list(node.root.rglob("*.tmp"))
    node.set_config(min_free_disk_mb=0)
    proc = storescu(node, [src], "-R", "-xe")
    assert proc.returncode == 0, proc.stderr
    assert len(node.spooled()) == 1


def test_duplicate_rejected_with_0111(node: Node, realdata_dir: Path) -> None:
    node.set_config(duplicate_policy="reject")
    src = realdata_dir / "cr_fuji_chest_CR-MONO1-10-chest.dcm"
    assert storescu(node, [src], "-R", "-xi").returncode == 0
    second = storescu(node, [src], "-v", "-R", "-xi")
    out = second.stdout + second.stderr
    # dcmtk knows 0x0111 (PS3.7 C "Duplicate SOP Instance") only as a general failure: "Unknown Status: 0x111"
    assert second.returncode != 0 and "Received Store Response (Unknown Status: 0x111)" in out, out
    assert len(node.queue.recent_jobs()) == 1
