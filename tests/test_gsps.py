"""GSPS: one layer per region with the box and its label, legend layer, VOI and presentation LUT; dcmpschk."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sr_writer import write_gsps
from sr_writer.regions import tracking
from tests.conftest import require_tool
from tests.test_sr import LOCALIZER, ctx, hand_measurements, labelled_detections, roundtrip
from tests.validators import dciodvfy, dcmpschk

warnings.filterwarnings("ignore", category=UserWarning)


def test_layers_boxes_and_labels(realdata_dir: Path, tmp_path: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    pr = roundtrip(write_gsps(src, dets, hand_measurements(src, dets), ctx(), pixels=src.pixel_array), tmp_path)
    assert pr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
    assert pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    layers = [layer.GraphicLayer for layer in pr.GraphicLayerSequence]
    assert layers == [f"REGION_{i}_{d.label}"[:16] for i, d in enumerate(dets, 1)] + ["LEGEND"]
    for i, d in enumerate(dets, 1):
        ann = [a for a in pr.GraphicAnnotationSequence if a.GraphicLayer == layers[i - 1]][0]
        (obj,) = ann.GraphicObjectSequence
        assert obj.GraphicType == "POLYLINE" and obj.GraphicAnnotationUnits == "PIXEL"
        pts = np.asarray(obj.GraphicData, float).reshape(-1, 2)
        assert pts.shape == (5, 2) and (pts[0] == pts[-1]).all()
        assert (pts.min(0) == [d.box.x_min, d.box.y_min]).all() and (pts.max(0) == [d.box.x_max, d.box.y_max]).all()
        assert obj.TrackingUID == tracking(src.SOPInstanceUID, ctx(), i, d.label)[1]
        assert ann.TextObjectSequence[0].UnformattedTextValue.startswith(d.label)
    legend = [a for a in pr.GraphicAnnotationSequence if a.GraphicLayer == "LEGEND"][0]
    texts = [t.UnformattedTextValue for t in legend.TextObjectSequence]
    assert any(t.startswith("CHEST") and " mm" in t and "cm2" in t for t in texts)
    assert "isocenter" in texts
    assert pr.PresentationLUTShape == "IDENTITY"
    assert pr.SoftcopyVOILUTSequence[0].WindowWidth > 0


def test_monochrome1_gets_inverse_and_percentile_window(realdata_dir: Path) -> None:
    name = "cr_fuji_chest_CR-MONO1-10-chest.dcm"
    src = pydicom.dcmread(realdata_dir / name)
    pr = write_gsps(src, labelled_detections(realdata_dir, name), None, ctx(), pixels=src.pixel_array)
    assert pr.PresentationLUTShape == "INVERSE"
    name = "dx_rentgenprom_DX_J2K_0Padding.dcm"  # header window 2725/5310 misses the stored 32744-65535
    src = pydicom.dcmread(realdata_dir / name)
    pr = write_gsps(src, labelled_detections(realdata_dir, name), None, ctx(), pixels=src.pixel_array)
    voi = pr.SoftcopyVOILUTSequence[0]
    assert voi.WindowCenterWidthExplanation.startswith("percentile") and float(voi.WindowCenter) > 30000


@pytest.mark.peers
def test_dcmpschk_and_dciodvfy_accept_gsps(realdata_dir: Path, tmp_path: Path) -> None:
    require_tool("dcmpschk")
    require_tool("dciodvfy")
    src = pydicom.dcmread(realdata_dir / LOCALIZER)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    path = tmp_path / "pr.dcm"
    write_gsps(src, dets, hand_measurements(src, dets), ctx(), pixels=src.pixel_array).save_as(
        path, enforce_file_format=True)
    for report in (dcmpschk(path), dciodvfy(path)):
        assert report.ok, str(report)


def _same(fast, ref) -> None:
    from tests.test_sr import _encoded, tree_differences

    for obj in (fast, ref):
        for kw in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime",
                   "PresentationCreationDate", "PresentationCreationTime"):
            setattr(obj, kw, "")
        for eq in obj.ContributingEquipmentSequence:
            if "ContributionDateTime" in eq:
                eq.ContributionDateTime = ""
    diff = tree_differences(fast, ref)
    assert not diff, "\n".join(diff[:20])
    assert _encoded(fast) == _encoded(ref)


@pytest.mark.slow  # byte-for-byte against the highdicom builder on every real file: in `make test` only
def test_fast_annotations_equal_highdicom_built(realdata_files: list[Path], realdata_dir: Path) -> None:
    """Region annotations assembled from the legend's (default) give the dataset highdicom builds (reference)."""
    from sr_writer.source import read_source_header

    for f in realdata_files:
        if f.name.startswith("hard_"):
            continue  # not decodable here; its header equals cr_wg04_RG2's
        src = pydicom.dcmread(f)
        dets = labelled_detections(realdata_dir, f.name)
        header = read_source_header(src)
        for meas in (hand_measurements(src, dets), None):
            fast = write_gsps(src, dets, meas, ctx(), pixels=src.pixel_array, header=header)
            _same(fast, write_gsps(src, dets, meas, ctx(), pixels=src.pixel_array, header=header, reference=True))


def test_graphics_stay_inside_the_image(realdata_dir: Path) -> None:
    """A caption of a box at the right edge and an isocenter marker near or beyond the border are kept inside the
    image (highdicom rejects PIXEL graphics outside it, which would lose every result of the job)."""
    import dataclasses

    from inference.types import Box, Detection
    from sr_writer.sc import lps_to_pixel
    from tests.test_sr import CONCEPTS, MODEL

    src = pydicom.dcmread(realdata_dir / LOCALIZER)
    cols, rows = float(src.Columns), float(src.Rows)
    corner = [Detection("PELVIS", CONCEPTS["PELVIS"], 0.5, Box(cols - 1.0, rows - 1.5, cols, rows), MODEL)]
    meas = hand_measurements(src, corner)
    ipp = np.asarray(src.ImagePositionPatient, float)
    for iso, inside in (((float(ipp[0]) + 1.0, float(ipp[1]), float(ipp[2]) - 1.0), True),  # near pixel (1.5, 1.5)
                        ((float(ipp[0]) - 50.0, float(ipp[1]), float(ipp[2])), False)):  # left of the image
        m = dataclasses.replace(meas, isocenter_lps_mm=iso)
        assert (0 <= lps_to_pixel(iso, src)[0] <= cols) == inside
        fast = write_gsps(src, corner, m, ctx(), pixels=src.pixel_array)
        _same(fast, write_gsps(src, corner, m, ctx(), pixels=src.pixel_array, reference=True))
        for ann in fast.GraphicAnnotationSequence:
            for obj in ann.get("GraphicObjectSequence", []):
                pts = np.asarray(obj.GraphicData, float).reshape(-1, 2)
                assert (pts >= 0).all() and (pts[:, 0] <= cols).all() and (pts[:, 1] <= rows).all()
        legend = [t.UnformattedTextValue for a in fast.GraphicAnnotationSequence if a.GraphicLayer == "LEGEND"
                  for t in a.TextObjectSequence]
        assert ("isocenter" in legend) == inside
        assert ("isocenter outside the image" in legend) == (not inside)
