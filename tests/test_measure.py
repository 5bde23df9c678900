"""Measurements on real files (labelled boxes), on simulated localizer pairs (true boxes), and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from bench.geometry_accuracy import collect, simulator_settings, summarise
from dicom_node.cli import main as cli_main
from inference.measure import combine_views, measure_image
from inference.types import Box, CodedConcept, Detection, GeometryLevel, ModelIdentity
from inference.types import QuantityKind as K
from nodecore.config_schema import MeasurementSettings, ScannerCalibration

MODEL = ModelIdentity("labels", "1")


def det(label: str, box: Box, score: float = 1.0) -> Detection:
    return Detection(label, CodedConcept("0", "99TEST", label), score, box, MODEL)


def labelled(realdata_dir: Path) -> dict[str, list[Detection]]:
    data = json.loads((realdata_dir / "labels.json").read_text())
    return {im["file"]: [det(b["label"], Box.from_inclusive_centres(*b["box"])) for b in im["boxes"]] for im in data["images"]}


@pytest.mark.parametrize("name", ["loc_philips_MAROTECH_CT_JP2Lossy.dcm", "loc_philips_surview_fodicom_GH342.dcm"])
def test_real_localizer_sizes_are_anatomical(realdata_dir: Path, name: str) -> None:
    ds = pydicom.dcmread(realdata_dir / name)
    m = measure_image(ds, labelled(realdata_dir)[name])
    assert m.geometry_level == GeometryLevel.PATIENT and m.view == "frontal"
    by = {r.detection.label: r for r in m.regions}
    for label in ("CHEST", "ABDOMEN", "PELVIS"):
        w = by[label].get(K.BOX_WIDTH)
        assert w is not None and 250.0 <= w.value <= 450.0, (label, w)
        assert "isocenter plane" in w.method
        area = by[label].get(K.ELLIPSE_AREA)
        assert area.value == pytest.approx(math.pi / 4 * w.value * by[label].get(K.BOX_HEIGHT).value / 100)
        # the polygon is in the frontal plane through the isocenter (y of the localizer plane)
        assert by[label].polygon_lps_mm is not None
        assert {round(p[1], 3) for p in by[label].polygon_lps_mm} == {round(m.isocenter_lps_mm[1], 3)}
    assert 40.0 <= by["SPINE"].get(K.BOX_WIDTH).value <= 120.0
    # no calibration configured: water-equivalent quantities are reported unavailable, never invented
    assert dict(by["ABDOMEN"].unavailable)[K.WATER_EQUIVALENT_DIAMETER]
    assert by["ABDOMEN"].get(K.WATER_EQUIVALENT_DIAMETER) is None
    # the chest estimate needs only the table height and the chest width; it is flagged with its uncertainty
    v = by["CHEST"].get(K.ISO_OFFSET_VERTICAL)
    assert v.estimated and v.uncertainty and 5.0 < v.uncertainty < 30.0
    assert abs(v.value) < 150.0
    # no SOD on Philips headers: lateral offsets are not fan-beam corrected, and the method says so
    assert "SOD unknown" in by["CHEST"].get(K.ISO_OFFSET_LATERAL).method


def test_real_diaphragm_level(realdata_dir: Path) -> None:
    name = "loc_philips_MAROTECH_CT_JP2Lossy.dcm"
    ds = pydicom.dcmread(realdata_dir / name, stop_before_pixels=True)
    m = measure_image(ds, labelled(realdata_dir)[name])
    (dz,) = m.image_quantities
    assert dz.kind == K.DIAPHRAGM_Z and dz.estimated
    # chest rows 40..278 and abdomen rows 210..438 overlap on rows 210..279: the level is their middle, in z
    ipp_z, dy = float(ds.ImagePositionPatient[2]), float(ds.PixelSpacing[0])
    expected = ipp_z - (244.5 - 0.5) * dy
    assert dz.value == pytest.approx(expected, abs=0.01)
    # the labeller's right dome (row ~210) and costophrenic angles (rows 233-275) lie within +-2 u of it
    for row in (210, 233, 275):
        assert abs((ipp_z - (row - 0.5) * dy) - dz.value) < 2.0 * dz.uncertainty + 1.0


def test_real_radiographs(realdata_dir: Path) -> None:
    boxes = labelled(realdata_dir)
    m = measure_image(pydicom.dcmread(realdata_dir / "dx_canon_chest_PA_pydicom966_fixed.dcm", stop_before_pixels=True),
                      boxes["dx_canon_chest_PA_pydicom966_fixed.dcm"])
    assert m.geometry_level == GeometryLevel.DETECTOR_PLANE
    (chest,) = m.regions
    w = chest.get(K.BOX_WIDTH)
    assert 250.0 <= w.value <= 450.0 and "detector plane" in w.method
    assert dict(chest.unavailable)[K.ISO_OFFSET_LATERAL].startswith("no patient frame")
    m = measure_image(pydicom.dcmread(realdata_dir / "cr_fuji_chest_CR-MONO1-10-chest.dcm", stop_before_pixels=True),
                      boxes["cr_fuji_chest_CR-MONO1-10-chest.dcm"])
    assert m.geometry_level == GeometryLevel.PIXELS
    assert dict(m.regions[0].unavailable)[K.BOX_WIDTH] == "no pixel spacing: pixel units only"


def test_dap_share_from_collimator_edges() -> None:
    ds = Dataset()
    ds.Modality, ds.Rows, ds.Columns = "DX", 1000, 800
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.ImageAndFluoroscopyAreaDoseProduct = 2.0
    ds.CollimatorShape = "RECTANGULAR"
    ds.CollimatorLeftVerticalEdge, ds.CollimatorRightVerticalEdge = 101, 700
    ds.CollimatorUpperHorizontalEdge, ds.CollimatorLowerHorizontalEdge = 1, 1000
    m = measure_image(ds, [det("CHEST", Box(100.0, 0.0, 400.0, 500.0))])
    r = m.regions[0]
    # field 600 x 1000 px, the box covers 300 x 500 of it: a quarter of the DAP
    assert r.get(K.DAP_FRACTION).value == pytest.approx(25.0)
    assert r.get(K.DAP_SHARE).value == pytest.approx(0.5) and not r.get(K.DAP_SHARE).estimated
    del ds.CollimatorShape
    r = measure_image(ds, [det("CHEST", Box(100.0, 0.0, 400.0, 500.0))]).regions[0]
    assert r.get(K.DAP_FRACTION).value == pytest.approx(18.75) and r.get(K.DAP_SHARE).estimated


@pytest.fixture(scope="module")
def sim_pair():
    from inference.simulator.simulate import simulate_pair

    return simulate_pair(4242, (35.0, -25.0), profile="siemens", randomize={"protocol": "chest_abdomen_pelvis",
                                                                            "roll_deg": 0.0, "yaw_deg": 0.0}, size=256)


def _measure_sim(case, settings: MeasurementSettings, *, pixels: bool = True):
    ds = case.dataset
    px = apply_modality_lut(ds.pixel_array, ds).astype(np.float32) if pixels else None
    return measure_image(ds, [det(r.label, r.box_px) for r in case.truth.regions], pixels=px, settings=settings)


def test_simulated_pair_wed_ssde_and_combination(sim_pair) -> None:
    frontal, lateral = sim_pair
    settings = simulator_settings()
    fm, lm = _measure_sim(frontal, settings), _measure_sim(lateral, settings)
    chest_t = frontal.truth.region("CHEST")
    chest = next(r for r in fm.regions if r.detection.label == "CHEST")
    dw = chest.get(K.WATER_EQUIVALENT_DIAMETER)
    assert dw.value * 10 == pytest.approx(chest_t.wed_mean_mm, rel=0.06)
    f = chest.get(K.SSDE_FACTOR)
    assert f.value == pytest.approx(3.704369 * math.exp(-0.03671937 * dw.value), rel=1e-9) and f.estimated
    combined = combine_views(fm, lm)
    c = combined.region("CHEST")
    tx, ty = chest_t.iso_offset_mm
    assert c.get(K.ISO_OFFSET_LATERAL).value == pytest.approx(tx, abs=0.5)
    assert c.get(K.ISO_OFFSET_VERTICAL).value == pytest.approx(ty, abs=0.5)
    lo, hi = np.asarray(chest_t.box_lps_mm)
    ap, lat = hi[1] - lo[1], hi[0] - lo[0]
    assert c.get(K.EFFECTIVE_DIAMETER).value == pytest.approx(math.sqrt(ap * lat) / 10, rel=0.01)
    assert any(m.startswith("move table") for m in c.table_moves)
    # a wrong pairing is refused with a clear error
    with pytest.raises(ValueError, match="frontal and a lateral"):
        combine_views(lm, fm)


def test_simulated_without_calibration_reports_unavailable(sim_pair) -> None:
    frontal, _ = sim_pair
    m = _measure_sim(frontal, MeasurementSettings(scanner_calibrations=(
        ScannerCalibration(match={"Manufacturer": "nobody"}, slope_mm_per_unit=1.0),)))
    ab = next(r for r in m.regions if r.detection.label == "ABDOMEN")
    assert "no scanner calibration" in dict(ab.unavailable)[K.WATER_EQUIVALENT_DIAMETER]
    assert "AP thickness" in dict(ab.unavailable)[K.ISO_OFFSET_VERTICAL]
    assert any("no scanner calibration matches" in n for n in m.notes)


@pytest.mark.slow
def test_geometry_accuracy_small(tmp_path: Path) -> None:
    """The benchmark's bounds on 20 simulated pairs (true boxes, no patient rotation; see docs/GEOMETRY.md)."""
    summary = summarise(collect(20, fixed_pose=True, jobs=1, size=256, first_seed=5000))
    chest = summary["CHEST"]
    assert chest["lat_combined"]["max"] < 0.5
    assert chest["vert_combined"]["max"] < 0.5
    assert summary["TRUNK"]["vert_frontal_est"]["within_10"] >= 0.95
    assert summary["TRUNK"]["lat_combined"]["p95"] < 1.0
    # per-region edge models (measure.SILHOUETTE_MODELS): the pelvis was 9-11 mm off vertically with the ellipse
    assert summary["PELVIS"]["vert_combined"]["p95"] < 1.0 and summary["PELVIS"]["lat_combined"]["p95"] < 0.5
    assert summary["ABDOMEN"]["lat_combined"]["p95"] < 0.5 and summary["ABDOMEN"]["vert_combined"]["p95"] < 0.5


def test_measure_cli(realdata_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = realdata_dir / "loc_philips_MAROTECH_CT_JP2Lossy.dcm"
    assert cli_main(["measure", str(f), "--labels", str(realdata_dir / "labels.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["geometry_level"] == "patient" and doc["view"] == "frontal"
    assert "localizer image plane" in doc["isocenter_source"]
    assert {r["detection"]["label"] for r in doc["regions"]} == {"CHEST", "ABDOMEN", "PELVIS", "SPINE"}
    assert doc["table_moves"]["CHEST"][0].startswith("move table towards the patient's")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"label": "chest", "box": [100, 40, 380, 280]}]))
    assert cli_main(["measure", str(f), "--boxes", str(boxes)]) == 0
    out = capsys.readouterr().out
    assert "isocenter (LPS mm)" in out and "CHEST" in out and "box_width" in out
    boxes.write_text(json.dumps([{"label": "chest", "box": [100, 40]}]))
    assert cli_main(["measure", str(f), "--boxes", str(boxes)]) == 2
    assert "expected" in capsys.readouterr().err
    # the undecodable file is measured without pixels, and says so
    hard = realdata_dir / "hard_cr_wg04_RG2_hip_JPLY_12bit_invalid_SOS.dcm"
    boxes.write_text(json.dumps([{"label": "pelvis", "box": [10, 10, 500, 600]}]))
    assert cli_main(["measure", str(hard), "--boxes", str(boxes)]) == 0
    assert "detector plane" in capsys.readouterr().out
