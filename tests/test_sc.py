"""Secondary capture: rendering (window, MONOCHROME1, colours at the box edges) and the DICOM object."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.netutil import wait_port
from dicom_node.outbound import Outcome, store_files
from inference.types import Box, Detection
from nodecore.config_schema import Destination, Timeouts
from nodecore.uids import result_uids
from sr_writer import write_results, write_sc
from sr_writer.render import colour_for, to_display
from sr_writer.sc import sc_scale
from tests.conftest import require_tool
from tests.orthanc import Orthanc, free_port, orthanc  # noqa: F401
from tests.test_sr import CONCEPTS, LOCALIZER, MODEL, ctx, hand_measurements, labelled_detections, roundtrip
from tests.validators import dciodvfy

warnings.filterwarnings("ignore", category=UserWarning)


def test_sc_of_real_localizer(realdata_dir: Path, tmp_path: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    plain = dataclasses.replace(ctx(), sc_compression="none")  # exact colours: no lossy compression
    sc = roundtrip(write_sc(src, dets, hand_measurements(src, dets), plain, pixels=src.pixel_array), tmp_path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.SOPInstanceUID == result_uids(src.SOPInstanceUID, MODEL.version, "sc")["SOPInstanceUID"]
    assert (sc.StudyInstanceUID, sc.PatientID) == (src.StudyInstanceUID, src.PatientID)
    assert sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert list(sc.PatientOrientation) == ["L", "F"]  # derived from ImageOrientationPatient
    rgb = sc.pixel_array
    assert rgb.shape == (src.Rows, src.Columns, 3)
    # every box's right edge is drawn in its region colour at mid-height (the caption sits at the top-left)
    for d in dets:
        x = int(d.box.x_max) - 1
        y = int(d.box.center[1])
        assert tuple(rgb[y, x]) == colour_for(d.label), d.label
    # outside boxes and overlays the image stays grey
    grey = rgb[300, 20]
    assert grey[0] == grey[1] == grey[2]


def test_window_and_monochrome1() -> None:
    h = Dataset()
    h.PhotometricInterpretation = "MONOCHROME1"
    h.WindowCenter, h.WindowWidth = 500, 1000
    px = np.tile(np.arange(0, 1001, dtype=np.uint16), (4, 1))
    grey, win = to_display(px, h)
    assert win.source == "header"
    assert grey[0, 0] == 255 and grey[0, -1] == 0  # MONOCHROME1: high values dark
    h.PhotometricInterpretation = "MONOCHROME2"
    h.WindowCenter, h.WindowWidth = 30000, 10  # window far from the data: percentiles instead
    grey, win = to_display(px, h)
    assert win.source.startswith("percentile") and grey[0, 0] == 0 and grey[0, -1] == 255


def test_radiograph_without_spacing_and_undecodable(realdata_dir: Path) -> None:
    name = "cr_fuji_chest_CR-MONO1-10-chest.dcm"
    src = pydicom.dcmread(realdata_dir / name)
    dets = labelled_detections(realdata_dir, name)
    sc = write_sc(src, dets, hand_measurements(src, dets), ctx())  # decodes the source itself
    assert sc.PatientOrientation == ""  # unknown: left empty, not invented
    hard = pydicom.dcmread(realdata_dir / "hard_cr_wg04_RG2_hip_JPLY_12bit_invalid_SOS.dcm")
    with pytest.raises(ValueError, match="source pixel data not decodable"):
        write_sc(hard, [], None, ctx())
    with pytest.raises(ValueError, match="do not match the source's Rows x Columns"):
        write_sc(src, dets, None, ctx(), pixels=np.zeros((10, 10), np.uint16))


DX = "dx_canon_chest_PA_pydicom966_fixed.dcm"  # 2128 x 2000, the size of a 2048 x 2048 detector's image
FAST = Timeouts(acse=5, dimse=20, network=20, connection=3)


def _dx(realdata_dir: Path) -> tuple[Dataset, np.ndarray, list[Detection]]:
    src = pydicom.dcmread(realdata_dir / DX)
    px = src.pixel_array
    h, w = px.shape
    return src, px, [Detection("CHEST", CONCEPTS["CHEST"], 0.9, Box(w * 0.2, h * 0.25, w * 0.8, h * 0.75), MODEL)]


def _bytes(ds: Dataset) -> int:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return len(buf.getvalue())


def _sc(realdata_dir: Path, compression: str, max_size: int = 0) -> Dataset:
    src, px, dets = _dx(realdata_dir)
    return write_sc(src, dets, None, dataclasses.replace(ctx(), sc_compression=compression, sc_max_size=max_size),
                    pixels=px)


def test_sc_scale_rules() -> None:
    assert sc_scale(2000, 2128, "jpeg") == 2048 / 2128
    assert sc_scale(512, 716, "jpeg") == 1.0  # never enlarged
    assert sc_scale(2000, 2128, "jpeg-ls") == 1024 / 2128
    assert sc_scale(2000, 2128, "jpeg-ls", 4096) == 1.0
    with pytest.raises(ValueError, match="unknown secondary capture compression 'png'"):
        sc_scale(10, 10, "png")


@pytest.mark.peers
@pytest.mark.slow
@pytest.mark.parametrize("compression", ["jpeg", "jpeg-ls", "jpeg2000"])
def test_all_results_of_a_large_radiograph_weigh_under_2_mb(
    realdata_dir: Path, tmp_path: Path, compression: str
) -> None:
    """SR + SC + GSPS of the 2128 x 2000 DX <= 2 MB; the SC passes dciodvfy and decodes to the rendered image
    (exactly for the lossless syntaxes, closely for JPEG Baseline)."""
    require_tool("dciodvfy")
    src, px, dets = _dx(realdata_dir)
    c = dataclasses.replace(ctx(), sc_compression=compression)
    results = write_results(src, dets, None, ("sr", "sc", "gsps"), c, pixels=px)
    total = sum(_bytes(d) for d in results)
    assert total <= 2_000_000, f"{compression}: {total} bytes"
    sc = next(d for d in results if d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7")
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    report = dciodvfy(path)
    assert report.ok, str(report)
    back = pydicom.dcmread(path)
    expected_ts = {"jpeg": "1.2.840.10008.1.2.4.50", "jpeg-ls": "1.2.840.10008.1.2.4.80",
                   "jpeg2000": "1.2.840.10008.1.2.4.90"}[compression]
    assert back.file_meta.TransferSyntaxUID == expected_ts
    rgb = back.pixel_array
    reference = _sc(realdata_dir, "none", 2048 if compression == "jpeg" else 1024).pixel_array
    assert rgb.shape == reference.shape and max(rgb.shape[:2]) == (2048 if compression == "jpeg" else 1024)
    if compression == "jpeg":
        assert back.LossyImageCompression == "01" and back.LossyImageCompressionMethod == "ISO_10918_1"
        assert np.abs(rgb.astype(int) - reference.astype(int)).mean() < 2.0
    else:
        assert "LossyImageCompression" not in back
        assert np.array_equal(rgb, reference)


def _orthanc_raw(orthanc: Orthanc, path: str) -> bytes:  # noqa: F811
    with urllib.request.urlopen(f"{orthanc.url}{path}", timeout=30) as resp:
        return resp.read()


@pytest.mark.peers
@pytest.mark.slow
def test_compressed_sc_stored_and_decoded_by_orthanc_and_decompressed_for_storescp(
    realdata_dir: Path, tmp_path: Path, orthanc: Orthanc  # noqa: F811
) -> None:
    """Orthanc accepts each compressed SC in its own syntax and renders the JPEG and JPEG-LS ones (its core cannot
    decode JPEG 2000 without the GDCM plugin: one reason JPEG-LS is the lossless choice); dcmtk storescp
    (uncompressed only) gets the same SOP Instance decompressed to RGB by the sender."""
    paths = []
    for comp in ("jpeg", "jpeg-ls", "jpeg2000"):
        sc = _sc(realdata_dir, comp)
        sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = f"{sc.SOPInstanceUID}.{len(paths) + 1}"
        p = tmp_path / f"sc_{comp}.dcm"
        sc.save_as(p, enforce_file_format=True)
        paths.append(p)
    dest = Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port)
    results = store_files(dest, paths, FAST)
    assert [r.outcome for r in results] == [Outcome.SENT] * 3, [r.reason for r in results]
    assert [r.transfer_syntax for r in results] == [
        "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"]
    for p in paths:
        uid = str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        (inst,) = orthanc.find_instance(uid)
        ts = _orthanc_raw(orthanc, f"/instances/{inst}/metadata/TransferSyntax").decode()
        assert ts == str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        stored = pydicom.dcmread(io.BytesIO(_orthanc_raw(orthanc, f"/instances/{inst}/file")))
        assert stored.PixelData == pydicom.dcmread(p).PixelData  # stored as sent, not transcoded
        if "jpeg2000" in p.name:
            continue  # Orthanc's core has no JPEG 2000 decoder (it needs the GDCM plugin): stored, not rendered
        png = _orthanc_raw(orthanc, f"/instances/{inst}/preview")  # Orthanc decodes the frame to render it
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, p.name

    port = free_port()
    out = tmp_path / "storescp"
    out.mkdir()
    proc = subprocess.Popen([require_tool("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        plain = Destination(name="plain", ae_title="STORESCP", host="127.0.0.1", port=port)
        results = store_files(plain, paths, FAST)
    finally:
        proc.terminate()
        proc.wait(10)
    assert [r.outcome for r in results] == [Outcome.SENT] * 3, [r.reason for r in results]
    assert all(r.transfer_syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2") for r in results)
    received = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f) for f in out.iterdir())}
    for p in paths:
        orig = pydicom.dcmread(p)
        got = received[str(orig.SOPInstanceUID)]
        assert got.PhotometricInterpretation == "RGB" and not got.file_meta.TransferSyntaxUID.is_compressed
        assert np.abs(got.pixel_array.astype(int) - orig.pixel_array.astype(int)).max() <= 1


def test_sender_decodes_a_jpeg_capture_like_pydicom(realdata_dir: Path) -> None:
    """The sender's Pillow fast path (PACS refuses JPEG) gives exactly pydicom's RGB pixels, as Explicit VR LE."""
    from dicom_node.outbound import _decompress_jpeg_baseline

    sc = _sc(realdata_dir, "jpeg")
    buf = io.BytesIO()
    sc.save_as(buf, enforce_file_format=True)
    expected = pydicom.dcmread(io.BytesIO(buf.getvalue())).pixel_array
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert _decompress_jpeg_baseline(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(out.getvalue()))
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and back.PhotometricInterpretation == "RGB"
    assert np.array_equal(back.pixel_array, expected)
    assert not _decompress_jpeg_baseline(_sc(realdata_dir, "jpeg-ls"))  # other syntaxes: pydicom's decoders
