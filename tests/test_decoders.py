"""Pixel decoders on the real data (every file, the hard one through dcmtk), cross-decoder agreement, clear errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless

from dicom_node.decode_pipeline import DecodePipeline
from dicom_node.pipeline import ReceivedObject, build_pipeline
from inference.decoders import UndecodableImage, decode_pixels
from nodecore.config_schema import NodeConfig, NodeSettings, PipelineSpec, Route
from tests.conftest import require_tool

HARD = "hard_cr_wg04_RG2_hip_JPLY_12bit_invalid_SOS.dcm"


def by_name(files: list[Path], name: str) -> Path:
    return next(p for p in files if p.name == name)


@pytest.mark.peers
def test_every_realdata_file_decodes(realdata_files: list[Path]) -> None:
    require_tool("dcmdjpeg")
    for path in realdata_files:
        image = decode_pixels(path)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (image.rows, image.cols) == (ds.Rows, ds.Columns) == image.pixels.shape, path.name
        assert image.bits == ds.BitsStored and image.photometric == ds.PhotometricInterpretation, path.name
        assert image.pixels.max() > image.pixels.min(), path.name  # not blank
        assert int(image.pixels.max()) < 2**ds.BitsStored, path.name
        expected = "dcmtk:dcmdjpeg" if path.name == HARD else "pydicom:"
        assert image.decoder_used.startswith(expected), (path.name, image.decoder_used)


@pytest.mark.peers
def test_hard_file_via_dcmdjpeg_matches_the_lossless_copy(realdata_files: list[Path]) -> None:
    require_tool("dcmdjpeg")
    hard = decode_pixels(by_name(realdata_files, HARD))
    assert any("Invalid SOS parameters" in w for w in hard.warnings), hard.warnings
    assert any(w.startswith("pydicom:gdcm failed") for w in hard.warnings)
    lossless = decode_pixels(by_name(realdata_files, "cr_wg04_RG2_hip_JPLL.dcm")).pixels.astype(np.float64)
    lossy = hard.pixels.astype(np.float64)
    assert np.corrcoef(lossless.ravel(), lossy.ravel())[0, 1] > 0.98
    assert np.mean(np.abs(lossless - lossy)) < 0.03 * (lossless.max() - lossless.min())


def test_lossless_copies_decode_identically(realdata_files: list[Path]) -> None:
    jpll = decode_pixels(by_name(realdata_files, "cr_wg04_RG2_hip_JPLL.dcm"))
    jlsl = decode_pixels(by_name(realdata_files, "cr_wg04_RG2_hip_JLSL.dcm"))
    assert jpll.decoder_used != jlsl.decoder_used
    np.testing.assert_array_equal(jpll.pixels, jlsl.pixels)


def test_without_dcmtk_the_error_lists_every_decoder(realdata_files: list[Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no dcmdjpeg
    with pytest.raises(UndecodableImage) as info:
        decode_pixels(by_name(realdata_files, HARD))
    message = str(info.value)
    assert message.startswith(f"cannot decode pixel data of {HARD} (JPEG Extended")
    assert "pydicom:gdcm: GDCM does not support 'JPEG Extended' for samples with 12-bit precision" in message
    assert "pydicom:pillow" in message and "dcmtk:dcmdjpeg: not installed (not on PATH)" in message
    assert set(info.value.attempts) == {"pydicom:gdcm", "pydicom:pillow", "dcmtk:dcmdjpeg"}


@pytest.mark.peers
def test_dcmtk_encoded_variants_decode(realdata_files: list[Path], tmp_path: Path) -> None:
    """Every JPEG / JPEG-LS flavour the node accepts, made by dcmtk from the uncompressed localizer."""
    src = by_name(realdata_files, "loc_philips_surview_fodicom_GH342.dcm")
    reference = decode_pixels(src).pixels.astype(np.int64)
    variants = {  # name: (tool, option, transfer syntax, lossless)
        "jpeg_baseline": ("dcmcjpeg", "+eb", "1.2.840.10008.1.2.4.50", False),
        "jpeg_extended": ("dcmcjpeg", "+ee", "1.2.840.10008.1.2.4.51", False),
        "jpeg_lossless": ("dcmcjpeg", "+el", "1.2.840.10008.1.2.4.57", True),
        "jpeg_sv1": ("dcmcjpeg", "+e1", "1.2.840.10008.1.2.4.70", True),
        "jpegls": ("dcmcjpls", "+el", "1.2.840.10008.1.2.4.80", True),
        "jpegls_near": ("dcmcjpls", "+en", "1.2.840.10008.1.2.4.81", False),
    }
    for name, (tool, option, ts, lossless) in variants.items():
        out = tmp_path / f"{name}.dcm"
        subprocess.run([require_tool(tool), option, str(src), str(out)], check=True, capture_output=True)
        assert pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
        image = decode_pixels(out)
        got = image.pixels.astype(np.int64)
        assert got.shape == reference.shape, name
        if lossless:
            np.testing.assert_array_equal(got, reference, err_msg=name)
        elif image.bits > 8:
            assert np.corrcoef(got.ravel(), reference.ravel())[0, 1] > 0.99, name
        else:  # baseline JPEG is 8-bit: dcmtk rescaled the 12-bit values
            assert np.corrcoef(got.ravel(), reference.ravel())[0, 1] > 0.95, name


def _multiframe(frames: int = 3) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 8, 6, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(frames * 48, dtype=np.uint16).reshape(frames, 8, 6) * 3).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless])
def test_number_of_frames_is_honoured(tmp_path: Path, ts: str) -> None:
    ds = _multiframe()
    if ts == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    else:
        ds.file_meta.TransferSyntaxUID = ts
    path = tmp_path / "mf.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = decode_pixels(path, frame=2)
    assert image.number_of_frames == 3 and image.frame == 2 and image.pixels.shape == (8, 6)
    np.testing.assert_array_equal(image.pixels, (np.arange(96, 144, dtype=np.uint16).reshape(8, 6) * 3))
    with pytest.raises(ValueError, match=r"frame 3 out of range: mf.dcm has 3 frame\(s\)"):
        decode_pixels(path, frame=3)


@pytest.mark.peers
def test_bad_inputs_raise_clear_errors(tmp_path: Path, realdata_files: list[Path]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not dicom")
    with pytest.raises(UndecodableImage, match="cannot read notes.txt as DICOM"):
        decode_pixels(text)
    ds = _multiframe()
    del ds.PixelData
    with pytest.raises(UndecodableImage, match=r"has no Pixel Data \(7FE0,0010\)"):
        decode_pixels(ds)
    # a dataset without a file on disk still reaches dcmtk (written to a temporary file)
    require_tool("dcmdjpeg")
    hard = pydicom.dcmread(by_name(realdata_files, HARD))
    hard.filename = None
    assert decode_pixels(hard).decoder_used == "dcmtk:dcmdjpeg"


class _Always:
    def explain(self, ds: Dataset, calling_ae: str) -> tuple[bool, list[str]]:
        return True, ["always"]


def _route(**options: object) -> Route:
    return Route(name="decode-all", match=_Always(), pipeline=PipelineSpec(name="decode", options=options),
                 outputs=frozenset(), destinations=())


def test_decode_pipeline_summary_and_errors(realdata_files: list[Path]) -> None:
    config = NodeConfig(path=None, node=NodeSettings(), destinations={}, models={}, routes=())
    pipeline = build_pipeline("decode", config)
    assert isinstance(pipeline, DecodePipeline)
    src = by_name(realdata_files, "cr_wg04_RG3_leg_RLE.dcm")
    obj = ReceivedObject(path=src, sop_instance_uid="1.2", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                         transfer_syntax_uid="1.2.840.10008.1.2.5", calling_ae="X", job_id=1)
    outcome = pipeline.process(obj, _route())
    assert outcome.errors == [] and outcome.datasets == []
    s = outcome.summary
    assert s["decoded"] and s["shape"] == [1760, 1760] and s["decoder"] == "pydicom:pylibjpeg"
    assert s["min"] == 0 and s["max"] == 1023 and s["photometric"] == "MONOCHROME1"
    hard = ReceivedObject(path=by_name(realdata_files, HARD), sop_instance_uid="1.3", sop_class_uid="x",
                          transfer_syntax_uid="1.2.840.10008.1.2.4.51", calling_ae="X", job_id=2)
    failed = pipeline.process(hard, _route(external=False))
    assert failed.datasets == [] and len(failed.errors) == 1 and "cannot decode pixel data" in failed.errors[0]
    assert failed.summary["decoded"] is False and "pydicom:gdcm" in failed.summary["attempts"]
