"""Secondary capture: rendering (window, MONOCHROME1, colours at the box edges) and the DICOM object."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from nodecore.uids import result_uids
from sr_writer import write_sc
from sr_writer.render import colour_for, to_display
from tests.test_sr import LOCALIZER, MODEL, ctx, hand_measurements, labelled_detections, roundtrip

warnings.filterwarnings("ignore", category=UserWarning)


def test_sc_of_real_localizer(realdata_dir: Path, tmp_path: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    sc = roundtrip(write_sc(src, dets, hand_measurements(src, dets), ctx(), pixels=src.pixel_array), tmp_path)
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
