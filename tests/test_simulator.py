"""Scout simulator: valid DICOM, exact ground truth, determinism, CLI, fan-beam magnification."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_node.cli import main as cli_main
from inference.simulator import SimTruth, SimulationError, simulate_case, simulate_pair, write_case
from inference.simulator.phantom import build_phantom, sample_subject
from tests.conftest import require_tool

# a clean rendering: no noise, blur or edge enhancement, so stored = offset + gain * P exactly
CLEAN = {"noise": 0, "blur_px": 0.0, "edge": 0.0, "latitude": 0.0, "roll_deg": 0.0, "yaw_deg": 0.0}


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = require_tool("dciodvfy")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.peers
@pytest.mark.parametrize("profile", ["philips", "siemens", "ge", "canon"])
def test_ct_localizers_pass_dciodvfy(tmp_path: Path, profile: str) -> None:
    front, lat = simulate_pair(3, profile=profile, size=96)
    for case in (front, lat):
        dcm, _ = write_case(case, tmp_path)
        assert _dciodvfy_errors(dcm) == [], profile


@pytest.mark.peers
@pytest.mark.parametrize("profile", ["canon_dx", "agfa_dx", "fuji_dx"])
def test_dx_passes_dciodvfy(tmp_path: Path, profile: str) -> None:
    dcm, _ = write_case(simulate_case(4, kind="dx", profile=profile, size=96), tmp_path)
    assert _dciodvfy_errors(dcm) == [], profile


def test_ct_roundtrip_header_and_sidecar(tmp_path: Path) -> None:
    case = simulate_case(21, profile="philips", size=128, randomize={"protocol": "chest_abdomen_pelvis"})
    dcm, js = write_case(case, tmp_path)
    ds = pydicom.dcmread(dcm)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 12
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    assert np.array_equal(ds.pixel_array, case.dataset.pixel_array)
    assert int(ds.pixel_array.max()) <= 4095
    g = case.truth.geometry
    # Philips-like: table height present, no source distances, image plane at y = 255 - TableHeight
    assert "DistanceSourceToDetector" not in ds and "TableHeight" in ds
    assert float(ds.ImagePositionPatient[1]) == pytest.approx(255.0 - float(ds.TableHeight), abs=1e-3)
    assert float(ds.ImagePositionPatient[1]) == pytest.approx(g["isocenter_lps_mm"][1], abs=1e-3)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(g["pixel_spacing_mm"], rel=1e-5)
    back = SimTruth.from_json_dict(json.loads(js.read_text()))
    assert back == case.truth
    assert "SIM" in str(ds.PatientName)  # synthetic identifiers only


def test_profiles_write_their_geometry_tags() -> None:
    canon = simulate_case(5, profile="canon", size=64).dataset
    assert [float(v) for v in canon.DataCollectionCenterPatient][:2] == pytest.approx(
        [0.0, -float(canon.TableHeight)], abs=1e-6)
    assert float(canon.DistanceSourceToPatient) == 600.0
    ge = simulate_case(5, profile="ge", size=64).dataset
    dz, du = (float(v) for v in ge.PixelSpacing)
    assert dz == pytest.approx(1.1 * du)  # anisotropic rows (table travel) vs columns
    assert "DataCollectionCenterPatient" not in ge


@pytest.mark.slow  # renders several full localizers (1-4 s): in `make test`, not `make test-fast`
def test_determinism() -> None:
    a = simulate_case(42, size=64, randomize={"strength": 1.0})
    b = simulate_case(42, size=64, randomize={"strength": 1.0})
    c = simulate_case(43, size=64, randomize={"strength": 1.0})
    assert a.dataset.PixelData == b.dataset.PixelData
    assert a.truth == b.truth
    assert a.dataset.SOPInstanceUID == b.dataset.SOPInstanceUID
    assert a.dataset.PixelData != c.dataset.PixelData


def test_box_is_the_silhouette() -> None:
    """Outside the ABDOMEN / HEAD boxes (within their rows) the image is air; just inside it is body."""
    for protocol, label in (("abdomen_pelvis", "ABDOMEN"), ("head", "HEAD")):
        case = simulate_case(8, profile="siemens", size=256, shift_mm=(25.0, -10.0),
                             randomize={**CLEAN, "arms": "none", "table": False, "protocol": protocol})
        img = case.dataset.pixel_array.astype(int)
        air = 40  # the profile's offset: stored value of a ray through air
        region = case.truth.region(label)
        assert region is not None and not region.truncated
        b = region.box_px
        # pixels whose centres lie inside the box's rows; columns whose centres lie outside / inside its edges
        rows = slice(int(np.ceil(b.y_min - 0.5)), int(np.floor(b.y_max - 0.5)) + 1)
        first_in = int(np.ceil(b.x_min - 0.5))
        last_in = int(np.floor(b.x_max - 0.5))
        assert (img[rows, :first_in] == air).all(), label
        assert (img[rows, last_in + 1:] == air).all(), label
        # the silhouette reaches the box edges: the edge columns contain body somewhere in these rows
        assert (img[rows, first_in] > air).any() and (img[rows, last_in] > air).any(), label
        # and the box top/bottom are exact in z for a fan beam (rows are parallel along z)
        g = case.truth.geometry
        z_top = g["image_position_mm"][2] + 0.5 * g["pixel_spacing_mm"][0]
        assert b.y_max == pytest.approx((z_top - region.box_lps_mm[0][2]) / g["pixel_spacing_mm"][0], abs=0.05)


def test_regions_ordered_head_to_pelvis() -> None:
    case = simulate_case(9, size=128, randomize={"protocol": "whole", "crop_mm": 0.0})
    got = {r.label: r for r in case.truth.regions}
    assert set(got) == {"HEAD", "SPINE", "CHEST", "ABDOMEN", "PELVIS"}
    zc = [got[k].center_lps_mm[2] for k in ("HEAD", "CHEST", "ABDOMEN", "PELVIS")]
    assert zc == sorted(zc, reverse=True)
    assert got["HEAD"].box_px.y_max <= got["CHEST"].box_px.y_min + 1e-6
    # ABDOMEN ends where PELVIS starts (iliac crest); CHEST and ABDOMEN overlap (diaphragm dome above the sulci)
    assert got["ABDOMEN"].box_px.y_max == pytest.approx(got["PELVIS"].box_px.y_min)
    assert got["CHEST"].box_px.y_max > got["ABDOMEN"].box_px.y_min
    for r in got.values():
        assert r.visible_fraction == pytest.approx(1.0)
        (x0, y0, z0), (x1, y1, z1) = r.box_lps_mm
        assert x0 < r.center_lps_mm[0] < x1 and y0 < r.center_lps_mm[1] < y1 and z0 < r.center_lps_mm[2] < z1


def test_partial_coverage_is_reported() -> None:
    case = simulate_case(10, size=128, randomize={"protocol": "abdomen_pelvis", "crop_mm": 0.0})
    chest = case.truth.region("CHEST")
    assert chest is not None and 0.0 < chest.visible_fraction < 1.0 and chest.truncated
    assert chest.box_px.y_min == 0.0
    assert case.truth.region("HEAD") is None


def _trunk_width_mm(case, row: int) -> float:
    """Projected trunk width (mm at the isocenter plane) on one image row, from the pixels (sub-pixel edges)."""
    img = case.dataset.pixel_array[row].astype(float)
    air = case.truth.geometry["value_model"]["offset"]
    idx = np.flatnonzero(img > air)
    lo, hi = idx[0], idx[-1]
    # linear sub-pixel edge: P grows like a square root at a tangent, so use the first body pixel's value
    return float(hi - lo + 1) * case.truth.geometry["pixel_spacing_mm"][1]


def test_lateral_shift_magnifies_as_fan_beam_predicts() -> None:
    """A shift toward the source (lateral view, tube at the patient's right) enlarges the projected AP width."""
    kw = dict(kind="ct_lateral", profile="siemens", size=512,
              randomize={**CLEAN, "arms": "none", "table": False, "protocol": "abdomen_pelvis", "crop_mm": 0.0})
    d = 60.0
    ref = simulate_case(12, shift_mm=(0.0, 0.0), **kw)
    near = simulate_case(12, shift_mm=(-d, 0.0), **kw)  # -x = toward the patient's right = toward the source
    assert ref.truth.projection == "LAT_R"
    sod = ref.truth.geometry["sod_mm"]
    # analytic silhouette of the trunk ellipse at one slice, by tangents from the source
    subject = sample_subject(np.random.default_rng([12, 7211]), arms="none")
    ph = build_phantom(subject)
    abd = ref.truth.region("ABDOMEN")
    assert abd is not None
    row = int(abd.box_px.center[1])
    g = ref.truth.geometry
    z_world = g["image_position_mm"][2] - row * g["pixel_spacing_mm"][0]
    widths = {}
    for name, case in (("ref", ref), ("near", near)):
        t = case.truth.geometry["placement"]["t"]
        _, cy, a, b = ph.trunk_params(np.array([z_world - t[2]]))
        xc, yc = t[0], float(cy[0]) + t[1]
        src = np.array([-sod, 0.0])  # isocenter at (0, 0) for this profile
        s = np.array([(src[0] - xc) / float(a[0]), (src[1] - yc) / float(b[0])])
        n2 = float(s @ s)
        perp = np.array([-s[1], s[0]])
        us = []
        for sign in (-1.0, 1.0):
            p = s / n2 + sign * np.sqrt(n2 - 1.0) / n2 * perp
            px, py = xc + float(a[0]) * p[0], yc + float(b[0]) * p[1]
            us.append(py * sod / (px - src[0]))
        analytic = abs(us[1] - us[0])
        measured = _trunk_width_mm(case, row)
        assert measured == pytest.approx(analytic, abs=2.0 * g["pixel_spacing_mm"][1]), name
        widths[name] = (measured, analytic)
    ratio = widths["near"][1] / widths["ref"][1]
    # a thin object at the trunk centre would be magnified by exactly SOD / (SOD - d) relative to the isocenter
    assert ratio == pytest.approx(sod / (sod - d), rel=0.02)
    assert widths["near"][0] > widths["ref"][0] + 10.0
    # the truth box follows the same magnification
    assert near.truth.region("ABDOMEN").box_px.width / abd.box_px.width == pytest.approx(ratio, rel=0.01)


@pytest.mark.parametrize(("profile", "kind"), [("siemens", "ct_frontal"), ("philips", "ct_frontal"),
                                               ("canon", "ct_lateral"), ("ge", "ct_lateral")])
def test_header_geometry_maps_truth_into_the_box(profile: str, kind: str) -> None:
    """Using only the header (IPP, IOP, Pixel Spacing) plus the profile's SOD, the 3-D centre of a symmetric
    region projects to the centre of its truth box (fan-beam magnification at the isocenter plane)."""
    case = simulate_case(31, kind=kind, profile=profile, size=256, shift_mm=(35.0, -25.0),
                         randomize={"roll_deg": 0.0, "yaw_deg": 0.0, "protocol": "abdomen_pelvis", "crop_mm": 0.0})
    ds, g = case.dataset, case.truth.geometry
    ipp = [float(v) for v in ds.ImagePositionPatient]
    iop = [float(v) for v in ds.ImageOrientationPatient]
    dz, du = (float(v) for v in ds.PixelSpacing)
    sod = g["sod_mm"]
    frontal = iop[:3] == [1.0, 0.0, 0.0]
    view = case.truth.projection
    iso_x, iso_y = (0.0, ipp[1]) if frontal else (ipp[0], 0.0)  # the image plane passes through the isocenter
    if not frontal:
        iso_y = g["isocenter_lps_mm"][1]  # lateral images do not carry the isocenter's y; the truth does
    r = case.truth.region("ABDOMEN")
    assert r is not None
    cx, cy, cz = r.center_lps_mm
    if frontal:
        depth = (iso_y - cy) if view == "AP" else (cy - iso_y)
        u = iso_x + (cx - iso_x) * sod / (sod - depth)
        x_px = (u - ipp[0]) / du + 0.5
    else:
        depth = (iso_x - cx) if view == "LAT_R" else (cx - iso_x)
        v = iso_y + (cy - iso_y) * sod / (sod - depth)
        x_px = (v - ipp[1]) / du + 0.5
    y_px = (ipp[2] - cz) / dz + 0.5
    b = r.box_px
    assert x_px == pytest.approx(b.center[0], abs=1.5)  # a symmetric outline: silhouette centre ~ centre
    assert y_px == pytest.approx(b.center[1], abs=1.0 / 32)  # rows are exact in z (edges refined to 1/32 px)


@pytest.mark.slow  # renders several full localizers (1-4 s): in `make test`, not `make test-fast`
def test_isocenter_offsets_follow_the_requested_shift() -> None:
    front, lat = simulate_pair(14, shift_mm=(30.0, -20.0), profile="ge", size=96,
                               randomize={"roll_deg": 0.0, "yaw_deg": 0.0})
    off = front.truth.isocenter_offset_mm
    assert off["x"] == pytest.approx(30.0, abs=1e-6) and off["y"] == pytest.approx(-20.0, abs=1e-6)
    assert front.dataset.FrameOfReferenceUID == lat.dataset.FrameOfReferenceUID
    assert front.dataset.SOPInstanceUID != lat.dataset.SOPInstanceUID
    assert [float(v) for v in lat.dataset.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
    assert front.truth.region("CHEST").box_lps_mm == lat.truth.region("CHEST").box_lps_mm
    th = float(front.dataset.TableHeight)
    # table height moves with the vertical offset: the patient lies on the table
    other = simulate_case(14, shift_mm=(30.0, 0.0), profile="ge", size=96,
                          randomize={"roll_deg": 0.0, "yaw_deg": 0.0})
    assert float(other.dataset.TableHeight) - th == pytest.approx(20.0, abs=1e-3)


def test_wed_truth_is_plausible() -> None:
    case = simulate_case(15, size=64, randomize={"protocol": "chest_abdomen_pelvis", "arms": "none"})
    abd = case.truth.region("ABDOMEN")
    chest = case.truth.region("CHEST")
    assert abd is not None and chest is not None
    eff = np.sqrt(abd.ap_mm * abd.lat_mm)
    assert 0.95 * eff < abd.wed_center_mm < 1.12 * eff  # soft tissue is ~1.06 x water, bowel gas lowers it
    # the lungs make the chest less water-equivalent per unit of size than the abdomen
    assert chest.wed_center_mm / np.sqrt(chest.ap_mm * chest.lat_mm) < abd.wed_center_mm / eff - 0.05


def test_dx_geometry_and_truth() -> None:
    case = simulate_case(16, kind="dx", profile="canon_dx", size=256, randomize={"exam": "chest"})
    ds, g = case.dataset, case.truth.geometry
    assert ds.Modality == "DX" and ds.ViewPosition == "PA" and ds.PhotometricInterpretation == "MONOCHROME1"
    ermf = float(ds.EstimatedRadiographicMagnificationFactor)
    assert ermf == pytest.approx(float(ds.DistanceSourceToDetector) / float(ds.DistanceSourceToPatient), rel=1e-4)
    assert float(ds.PixelSpacing[0]) == pytest.approx(float(ds.ImagerPixelSpacing[0]) / ermf, rel=1e-4)
    assert ds.PixelSpacingCalibrationType == "GEOMETRY"
    assert float(ds.ImageAndFluoroscopyAreaDoseProduct) > 0
    left, right = int(ds.CollimatorLeftVerticalEdge), int(ds.CollimatorRightVerticalEdge)
    upper, lower = int(ds.CollimatorUpperHorizontalEdge), int(ds.CollimatorLowerHorizontalEdge)
    chest = case.truth.region("CHEST")
    assert chest is not None and case.truth.region("SPINE") is None  # SPINE is for CT localizers only
    b = chest.box_px
    assert left <= b.x_min < b.x_max <= right and upper <= b.y_min < b.y_max <= lower
    assert g["magnification_true_object_plane"] == pytest.approx(g["sid_mm"] / g["sod_true_mm"])


@pytest.mark.slow  # renders 10 localizers (4 s): in `make test`, not `make test-fast`
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["ct_frontal", "ct_lateral", "dx"]),
       strength=st.sampled_from([0.0, 1.0]))
def test_truth_invariants(seed: int, kind: str, strength: float) -> None:
    """For any seed: boxes inside the image (or DX field), 3-D centre inside its box, CT regions ordered."""
    case = simulate_case(seed, kind=kind, size=48, randomize={"strength": strength})
    rows, cols = case.dataset.Rows, case.dataset.Columns
    assert case.dataset.pixel_array.shape == (rows, cols)
    lim = (0, 0, cols, rows)
    if kind == "dx":
        c = case.truth.geometry["collimator_px"]
        lim = (c["left"], c["upper"], c["right"], c["lower"])
    for r in case.truth.regions:
        b = r.box_px
        assert lim[0] <= b.x_min < b.x_max <= lim[2] and lim[1] <= b.y_min < b.y_max <= lim[3], r.label
        assert 0.0 < r.visible_fraction <= 1.0
        (x0, y0, z0), (x1, y1, z1) = r.box_lps_mm
        assert x0 < r.center_lps_mm[0] < x1 and y0 < r.center_lps_mm[1] < y1 and z0 < r.center_lps_mm[2] < z1
    zc = [r.center_lps_mm[2] for r in case.truth.regions if r.label != "SPINE"]
    assert zc == sorted(zc, reverse=True)


@pytest.mark.slow  # renders several full localizers (1-4 s): in `make test`, not `make test-fast`
def test_cli_writes_n_pairs(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    rc = cli_main(["simulate", "--count", "3", "--out", str(out), "--seed", "7",
                   "--kind", "ct_frontal,ct_lateral,dx", "--size", "64", "--shift-range", "60"])
    assert rc == 0
    dcms = sorted(out.glob("*.dcm"))
    jss = sorted(out.glob("*.json"))
    assert len(dcms) == 3 and len(jss) == 3
    assert [p.stem for p in dcms] == [p.stem for p in jss]
    kinds = {json.loads(p.read_text())["kind"] for p in jss}
    assert kinds == {"ct_frontal", "ct_lateral", "dx"}
    assert cli_main(["simulate", "--count", "1", "--out", str(out), "--kind", "mri"]) == 2


def test_bad_input_is_rejected_clearly() -> None:
    with pytest.raises(SimulationError, match="unknown kind 'mri'"):
        simulate_case(1, kind="mri")
    with pytest.raises(SimulationError, match="unknown profile 'toshiba'"):
        simulate_case(1, profile="toshiba", size=64)
    with pytest.raises(SimulationError, match="size must be between"):
        simulate_case(1, size=4)
    with pytest.raises(SimulationError, match="unknown protocol"):
        simulate_case(1, size=64, randomize={"protocol": "knee"})
