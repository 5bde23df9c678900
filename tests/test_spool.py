"""Spool: structure walk of raw dataset bytes, durable byte-exact storing, duplicates, watermark, full disks."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pynetdicom.dsutils import split_dataset

from dicom_node.spool import (
    PREAMBLE,
    DatasetMismatch,
    DuplicateRejected,
    MalformedDataset,
    OutOfSpace,
    Spool,
    encode_file_meta,
    scan_dataset,
)

IMPLICIT, EXPLICIT, DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"
CR = "1.2.840.10008.5.1.4.1.1.1"


def dataset_offset(raw: bytes) -> int:
    """Offset of the dataset in a DICOM file (after preamble and the group-length-prefixed file meta)."""
    assert raw[128:132] == b"DICM" and raw[132:138] == b"\x02\x00\x00\x00UL", "file meta must start with (0002,0000)"
    return 144 + int.from_bytes(raw[140:144], "little")


def split(path: Path) -> tuple[FileMetaDataset, bytes]:
    """(file meta, dataset bytes exactly as in the file)."""
    meta, _ = split_dataset(path)
    raw = path.read_bytes()
    return meta, raw[dataset_offset(raw):]


def store_meta(meta: FileMetaDataset) -> FileMetaDataset:
    out = FileMetaDataset()
    out.MediaStorageSOPClassUID = meta.MediaStorageSOPClassUID
    out.MediaStorageSOPInstanceUID = meta.MediaStorageSOPInstanceUID
    out.TransferSyntaxUID = meta.TransferSyntaxUID
    out.ImplementationClassUID = "1.2.3.4"
    return out


def encoded(ds: Dataset, ts: str) -> bytes:
    """Dataset bytes (no file meta) in transfer syntax ``ts``."""
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3.4.5")
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()[dataset_offset(buf.getvalue()):]


def nested_dataset(uid: str = "1.2.3.4.5") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = "1.2.3"
    ds.Modality = "CR"
    inner = Dataset()
    inner.CodeValue = "123"
    inner.CodingSchemeDesignator = "DCM"
    inner.CodeMeaning = "x"
    item = Dataset()
    item.ConceptNameCodeSequence = Sequence([inner])
    item.TextValue = "nested"
    ds.ContentSequence = Sequence([item, item.copy()])
    ds.PatientName = "Doe^Jane"
    return ds


# -- scan_dataset -----------------------------------------------------------------------------------------------


def test_scan_reads_uids_of_every_realdata_file(realdata_files: list[Path]) -> None:
    for path in realdata_files:
        meta, data = split(path)
        facts = scan_dataset(data, meta.TransferSyntaxUID)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert facts.sop_instance_uid == ds.SOPInstanceUID, path.name
        assert facts.sop_class_uid == ds.SOPClassUID, path.name
        assert facts.study_instance_uid == ds.StudyInstanceUID, path.name
        assert facts.modality == ds.Modality, path.name


@pytest.mark.parametrize("ts", [IMPLICIT, EXPLICIT, DEFLATED])
def test_scan_walks_nested_undefined_length_sequences(ts: str) -> None:
    data = encoded(nested_dataset(), ts)
    facts = scan_dataset(data, ts)
    assert (facts.sop_instance_uid, facts.study_instance_uid, facts.modality) == ("1.2.3.4.5", "1.2.3", "CR")


def test_scan_ignores_uids_inside_sequences() -> None:
    ds = nested_dataset()
    del ds.SOPInstanceUID
    ds.ContentSequence[0].SOPInstanceUID = "9.9.9"  # not top level: must not count
    assert scan_dataset(encoded(ds, EXPLICIT), EXPLICIT).sop_instance_uid == ""


def test_scan_rejects_truncated_data(realdata_files: list[Path]) -> None:
    for path in realdata_files:
        meta, data = split(path)
        ts = meta.TransferSyntaxUID
        for cut in (len(data) - 1, len(data) - 3, len(data) // 2):
            with pytest.raises(MalformedDataset, match=r"malformed dataset at byte \d+ of \d+"):
                scan_dataset(data[:cut], ts)
    explicit_nested = encoded(nested_dataset(), EXPLICIT)
    start = explicit_nested.index(b"\x40\x00\x30\xa7")  # (0040,A730) Content Sequence
    with pytest.raises(MalformedDataset, match="delimiter|runs past|truncated"):
        scan_dataset(explicit_nested[: start + 40], EXPLICIT)


def test_scan_rejects_garbage_and_empty() -> None:
    garbage = bytes((i * 131 + 7) % 251 for i in range(4000))
    for ts in (IMPLICIT, EXPLICIT):
        with pytest.raises(MalformedDataset):
            scan_dataset(garbage, ts)
    with pytest.raises(MalformedDataset, match="does not inflate"):
        scan_dataset(garbage, DEFLATED)
    with pytest.raises(MalformedDataset, match="empty dataset"):
        scan_dataset(b"", EXPLICIT)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), ts=st.sampled_from([IMPLICIT, EXPLICIT, DEFLATED, "1.2.840.10008.1.2.4.90"]))
def test_scan_never_fails_other_than_malformed(data: bytes, ts: str) -> None:
    try:
        scan_dataset(data, ts)
    except MalformedDataset:
        pass


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=1, max_value=10_000), flip=st.integers(min_value=0, max_value=255))
def test_scan_on_damaged_real_header_never_crashes(cut: int, flip: int, realdata_files: list[Path]) -> None:
    meta, data = split(realdata_files[0])
    damaged = bytearray(data[:cut])
    damaged[cut // 2] ^= flip
    try:
        scan_dataset(bytes(damaged), meta.TransferSyntaxUID)
    except MalformedDataset:
        pass


# -- Spool.store ------------------------------------------------------------------------------------------------


def test_store_is_byte_exact_and_readable(tmp_path: Path, realdata_files: list[Path]) -> None:
    spool = Spool(tmp_path / "spool", min_free_disk_mb=1, duplicate_policy="replace")
    for path in realdata_files:
        meta, data = split(path)
        stored = spool.store(store_meta(meta), data, calling_ae="CT1")
        raw = stored.path.read_bytes()
        assert raw.startswith(PREAMBLE)
        assert raw.endswith(data) and len(raw) == stored.size_bytes
        assert raw[dataset_offset(raw):] == data, path.name  # dataset bytes exactly as given
        ds = pydicom.dcmread(stored.path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == meta.TransferSyntaxUID
        assert ds.SOPInstanceUID == stored.sop_instance_uid == meta.MediaStorageSOPInstanceUID
        assert stored.calling_ae == "CT1" and stored.duplicate == "" and stored.study_instance_uid
        obj = stored.received_object(job_id=7)
        assert obj.job_id == 7 and obj.path == stored.path and obj.transfer_syntax_uid == meta.TransferSyntaxUID
    assert not list((tmp_path / "spool").rglob("*.tmp"))


@pytest.mark.parametrize("policy", ["replace", "keep", "reject"])
def test_duplicate_policies(tmp_path: Path, policy: str, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, 1, policy)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = CR, "1.2.3.4.5", EXPLICIT
    first = encoded(nested_dataset(), EXPLICIT)
    second_ds = nested_dataset()
    second_ds.TextValue = "second"
    second = encoded(second_ds, EXPLICIT)
    a = spool.store(meta, first, calling_ae="A")
    caplog.set_level("INFO", logger="dicom_node.spool")
    if policy == "reject":
        with pytest.raises(DuplicateRejected, match="1.2.3.4.5 is already spooled"):
            spool.store(meta, second, calling_ae="B")
        assert a.path.read_bytes().endswith(first)
        return
    b = spool.store(meta, second, calling_ae="B")
    assert b.path == a.path
    if policy == "replace":
        assert b.duplicate == "replaced" and a.path.read_bytes().endswith(second)
    else:
        assert b.duplicate == "kept" and a.path.read_bytes().endswith(first)
    assert f"policy {policy}" in caplog.text and "Doe" not in caplog.text


def test_watermark_refuses_before_writing(tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    spool = Spool(tmp_path, min_free_disk_mb=free_mb * 10, duplicate_policy="replace")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = CR, "1.2.3.4.5", EXPLICIT
    with pytest.raises(OutOfSpace, match="below the .* MiB watermark"):
        spool.store(meta, encoded(nested_dataset(), EXPLICIT), calling_ae="A")
    assert not [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]


def test_mismatch_and_missing_uid(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0, "replace")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = CR, "1.2.3.4.6", EXPLICIT
    data = encoded(nested_dataset("1.2.3.4.5"), EXPLICIT)
    with pytest.raises(DatasetMismatch, match="SOP Instance UID 1.2.3.4.5 differs from the request's 1.2.3.4.6") as e:
        spool.store(meta, data, calling_ae="A")
    assert e.value.attribute == "SOPInstanceUID"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(DatasetMismatch, match="SOP Class UID") as e:
        spool.store(meta, data, calling_ae="A")
    assert e.value.attribute == "SOPClassUID"
    ds = nested_dataset()
    del ds.SOPInstanceUID
    with pytest.raises(MalformedDataset, match=r"no SOP Instance UID \(0008,0018\)"):
        spool.store(meta, encoded(ds, EXPLICIT), calling_ae="A")
    with pytest.raises(MalformedDataset, match="invalid SOP Instance UID"):
        spool.object_path("../../etc")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_result_paths_and_atomic_result_write(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 0, "replace")
    path = spool.result_path(42, "sr", "2.25.1234")
    assert path == tmp_path / "results" / "00000042" / "sr_2.25.1234.dcm" and path.parent.is_dir()
    ds = nested_dataset("2.25.1234")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    spool.write_dataset_atomic(ds, path)
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == "2.25.1234" and back.ContentSequence[0].TextValue == "nested"
    with pytest.raises(ValueError, match="invalid result kind"):
        spool.result_path(1, "../x", "2.25.1")
    (path.parent / ".sr_x.dcm.abc.tmp").write_bytes(b"partial")
    assert spool.cleanup_temp_files() == 1
    assert path.exists()
    with pytest.raises(ValueError, match="duplicate_policy must be one of"):
        Spool(tmp_path, 0, "overwrite")


_TINY_FS_SCRIPT = textwrap.dedent(
    """
    import subprocess, sys
    from pathlib import Path
    from pydicom.dataset import FileMetaDataset
    from dicom_node.spool import OutOfSpace, Spool
    mount, opts, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", mount], check=True)
    spool = Spool(Path(mount), min_free_disk_mb=0, duplicate_policy="replace")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    # (0008,0018) UI "1.2.3.4.5\\0", then (7FE0,0010) OB of `size` bytes
    data = b"\\x08\\x00\\x18\\x00UI\\x0a\\x001.2.3.4.5\\x00" + b"\\xe0\\x7f\\x10\\x00OB\\x00\\x00" + size.to_bytes(4, "little")
    data += b"\\x01" * size
    try:
        spool.store(meta, data, calling_ae="A")
    except OutOfSpace as exc:
        left = [str(p) for p in Path(mount).rglob("*") if p.is_file()]
        print("OUT_OF_SPACE", exc, "LEFT", left)
    else:
        print("STORED")
    """
)


def _run_in_tiny_fs(tmp_path: Path, opts: str, size: int) -> str:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) not installed: cannot mount a private tiny filesystem")
    mount = tmp_path / "tiny"
    mount.mkdir()
    script = tmp_path / "tiny.py"
    script.write_text(_TINY_FS_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([unshare, "-Urm", sys.executable, str(script), str(mount), opts, str(size)],
                          capture_output=True, text=True, env=env, timeout=60)
    if proc.returncode != 0 and ("mount" in proc.stderr or "unshare" in proc.stderr):
        pytest.skip(f"user namespaces not available to mount a tiny tmpfs: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_tiny_filesystem_too_small_is_refused_before_writing(tmp_path: Path) -> None:
    out = _run_in_tiny_fs(tmp_path, "size=1m", 2 * 2**20)
    assert "OUT_OF_SPACE" in out and "watermark" in out and "LEFT []" in out, out


def test_full_filesystem_during_write_leaves_nothing(tmp_path: Path) -> None:
    # 3 inodes: root, objects/, results/ -> the shard directory or the temp file cannot be created (ENOSPC)
    out = _run_in_tiny_fs(tmp_path, "size=4m,nr_inodes=3", 1000)
    assert "OUT_OF_SPACE" in out and "disk full" in out and "LEFT []" in out, out


def test_deflated_bytes_are_stored_unchanged(tmp_path: Path) -> None:
    data = encoded(nested_dataset(), DEFLATED)
    assert zlib.decompress(data, -15)  # really deflated
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = CR, "1.2.3.4.5", DEFLATED
    stored = Spool(tmp_path, 0, "replace").store(meta, data, calling_ae="A")
    assert stored.path.read_bytes().endswith(data)
    assert pydicom.dcmread(stored.path).ContentSequence[1].TextValue == "nested"
    assert encode_file_meta(meta)[:4] == b"\x02\x00\x00\x00"
