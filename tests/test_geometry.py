"""Geometry: pixel <-> patient mappings (round trips, highdicom agreement, fan-beam model) and every real file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.spatial import ImageToReferenceTransformer
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from inference.geometry import (
    GeometryError,
    geometry_from_dataset,
    magnification_at_depth,
    patient_to_pixel,
    pixel_to_patient,
    table_move_instruction,
)
from inference.types import GeometryLevel
from nodecore.config_schema import ScannerGeometry


def localizer(
    *,
    view: str = "frontal",
    ipp: tuple[float, float, float] = (-250.0, 0.0, 100.0),
    spacing: tuple[float, float] = (1.0, 0.9765625),
    rows: int = 600,
    columns: int = 512,
    sod: float | None = 570.0,
    sid: float | None = 1040.0,
    view_position: str | None = None,
    patient_position: str = "HFS",
    table_height: float | None = 150.0,
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "2.25.1"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.Rows, ds.Columns = rows, columns
    ds.PixelSpacing = list(spacing)
    ds.ImagePositionPatient = list(ipp)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1] if view == "frontal" else [0, 1, 0, 0, 0, -1]
    ds.PatientPosition = patient_position
    ds.FrameOfReferenceUID = "2.25.2"
    if sod is not None:
        ds.DistanceSourceToPatient = sod
    if sid is not None:
        ds.DistanceSourceToDetector = sid
    if view_position:
        ds.ViewPosition = view_position
    if table_height is not None:
        ds.TableHeight = table_height
    return ds


unit = st.floats(-1.0, 1.0, allow_nan=False)


@st.composite
def orientations(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    """Random orthonormal row/column direction cosines."""
    v = np.array([draw(unit), draw(unit), draw(unit)])
    w = np.array([draw(unit), draw(unit), draw(unit)])
    if np.linalg.norm(v) < 0.1:
        v = np.array([1.0, 0.0, 0.0])
    r = v / np.linalg.norm(v)
    w = w - np.dot(w, r) * r
    if np.linalg.norm(w) < 0.1:
        w = np.cross(r, [0.0, 0.0, 1.0]) if abs(r[2]) < 0.9 else np.cross(r, [1.0, 0.0, 0.0])
    c = w / np.linalg.norm(w)
    return r.round(12).tolist(), c.round(12).tolist()


coords = st.floats(-5000.0, 5000.0, allow_nan=False)
spacings = st.floats(0.05, 5.0)
pixel_xy = st.lists(st.tuples(st.floats(-100, 1100), st.floats(-100, 1100)), min_size=1, max_size=20)


@given(orientations(), st.tuples(coords, coords, coords), st.tuples(spacings, spacings), pixel_xy)
@settings(max_examples=200, deadline=None)
def test_pixel_patient_round_trip_and_highdicom_agreement(orient, ipp, spacing, xy) -> None:
    r, c = orient
    ds = localizer(ipp=ipp, spacing=spacing, sod=None, sid=None)
    ds.ImageOrientationPatient = r + c
    geom = geometry_from_dataset(ds)
    assert geom.level == GeometryLevel.PATIENT
    pts = np.asarray(xy, dtype=float)
    lps = pixel_to_patient(geom, pts)
    # highdicom's ImageToReferenceTransformer takes SCOORD-style coordinates (0,0 = corner of the first pixel) too
    ref = ImageToReferenceTransformer(image_position=ipp, image_orientation=r + c, pixel_spacing=spacing)(pts)
    np.testing.assert_allclose(lps, ref, atol=1e-6)
    np.testing.assert_allclose(patient_to_pixel(geom, lps), pts, atol=1e-6)


def test_pixel_centre_convention() -> None:
    geom = geometry_from_dataset(localizer(sod=None))
    # Image Position (Patient) is the CENTRE of the first pixel: SCOORD (0.5, 0.5)
    np.testing.assert_allclose(pixel_to_patient(geom, np.array([[0.5, 0.5]]))[0], (-250.0, 0.0, 100.0))
    # the top-left corner is half a pixel further out along both axes (rows go to -z)
    np.testing.assert_allclose(pixel_to_patient(geom, np.array([[0.0, 0.0]]))[0], (-250.0 - 0.9765625 / 2, 0.0, 100.5))


@given(st.floats(-400, 400), st.floats(-400, 400), st.floats(0.0, 40.0))
def test_magnification_monotonic_in_depth(d1: float, d2: float, gap: float) -> None:
    geom = geometry_from_dataset(localizer())
    lo, hi = sorted((d1, d2))
    m_lo, m_hi = magnification_at_depth(geom, lo), magnification_at_depth(geom, hi + gap)
    assert m_hi >= m_lo
    assert magnification_at_depth(geom, 0.0) == pytest.approx(1.0)
    if hi + gap - lo > 1e-6:
        assert m_hi > m_lo


@given(
    st.sampled_from(["frontal", "lateral"]),
    st.sampled_from(["AP", "PA", None]),
    st.lists(st.tuples(st.floats(0, 512), st.floats(0, 600)), min_size=1, max_size=10),
    st.floats(-200.0, 200.0),
)
@settings(max_examples=100, deadline=None)
def test_fan_beam_round_trip_at_depth(view: str, vp: str | None, xy, depth: float) -> None:
    if view == "lateral":
        vp = {"AP": "LL", "PA": "RL", None: "RL"}[vp]
    geom = geometry_from_dataset(localizer(view=view, view_position=vp, patient_position="HFS"))
    pts = np.asarray(xy, dtype=float)
    lps = pixel_to_patient(geom, pts, depth_mm=depth)
    # the point sits ``depth`` mm from the image plane towards the source...
    plane = np.asarray(geom.image_position) @ np.asarray(geom.source_direction)
    np.testing.assert_allclose(lps @ np.asarray(geom.source_direction) - plane, depth, atol=1e-6)
    # ...and projects back through the source onto the same pixel
    np.testing.assert_allclose(patient_to_pixel(geom, lps), pts, atol=1e-6)


def test_fan_beam_ray_passes_through_the_source() -> None:
    geom = geometry_from_dataset(localizer(view_position="AP"))
    px = np.array([[100.0, 300.0]])
    a = pixel_to_patient(geom, px, depth_mm=-150.0)[0]
    b = pixel_to_patient(geom, px, depth_mm=120.0)[0]
    iso = np.asarray(geom.isocenter)
    source = iso + np.asarray(geom.source_direction) * geom.sod_mm
    source[2] = a[2]  # the fan lies in the transverse plane of the row
    # a, b and the source are collinear
    assert np.linalg.norm(np.cross(b - a, source - a)) / np.linalg.norm(b - a) == pytest.approx(0.0, abs=1e-6)


def test_depth_needs_sod() -> None:
    geom = geometry_from_dataset(localizer(sod=None, sid=None))
    assert any("Distance Source to Patient (0018,1111) absent" in n for n in geom.notes)
    np.testing.assert_allclose(pixel_to_patient(geom, np.array([[1.0, 2.0]]), depth_mm=0.0), pixel_to_patient(geom, np.array([[1.0, 2.0]])))
    with pytest.raises(GeometryError, match=r"Distance Source to Patient \(0018,1111\) unknown"):
        pixel_to_patient(geom, np.array([[1.0, 2.0]]), depth_mm=50.0)


def test_views_sources_and_isocenter_precedence() -> None:
    g = geometry_from_dataset(localizer(view="lateral", ipp=(12.0, -250.0, 0.0)))
    assert g.view == "lateral" and g.fan_axis == "x"
    assert g.source_direction is None  # horizontal beam, no View Position: unknown, not invented
    assert g.isocenter == (12.0, 0.0, pytest.approx(g.isocenter[2]))
    assert "x = localizer image plane" in g.isocenter_source
    g = geometry_from_dataset(localizer(patient_position="HFP"))
    assert g.source_direction == (0.0, 1.0, 0.0)  # prone: tube above the table is posterior
    assert any("source side assumed" in n for n in g.notes)
    ds = localizer(ipp=(-250.0, 30.0, 0.0))
    ds.ReconstructionTargetCenterPatient = [1.0, 2.0, 3.0]
    assert geometry_from_dataset(ds).isocenter_source.startswith("Reconstruction Target Center")
    ds.DataCollectionCenterPatient = [4.0, 5.0, 6.0]
    g = geometry_from_dataset(ds)
    assert g.isocenter == (4.0, 5.0, 6.0) and g.isocenter_source.startswith("Data Collection Center")


def test_missing_and_malformed_tags_never_raise() -> None:
    ds = localizer()
    del ds.ImagePositionPatient
    # a malformed Pixel Spacing as it arrives from the network: converted (and rejected) by pydicom on access
    ds[0x00280030] = RawDataElement(Tag(0x00280030), "DS", 3, b"abc", 0, True, True)
    g = geometry_from_dataset(ds)
    assert g.level == GeometryLevel.PIXELS
    assert any("Image Position (Patient) (0020,0032)" in n for n in g.notes)
    with pytest.raises(GeometryError, match="no patient frame"):
        pixel_to_patient(g, np.array([[0.0, 0.0]]))
    assert geometry_from_dataset(Dataset()).level == GeometryLevel.PIXELS


def radiograph(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = 100, 100
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_radiograph_levels() -> None:
    g = geometry_from_dataset(radiograph(ImagerPixelSpacing=[0.2, 0.2], DistanceSourceToDetector=1000, DistanceSourceToPatient=800))
    assert g.level == GeometryLevel.OBJECT_PLANE and g.spacing_x_mm == pytest.approx(0.16)
    g = geometry_from_dataset(radiograph(ImagerPixelSpacing=[0.2, 0.2], EstimatedRadiographicMagnificationFactor=1.25))
    assert g.level == GeometryLevel.OBJECT_PLANE and g.spacing_y_mm == pytest.approx(0.16)
    g = geometry_from_dataset(radiograph(ImagerPixelSpacing=[0.2, 0.2], PixelSpacing=[0.17, 0.17], PixelSpacingCalibrationType="GEOMETRY"))
    assert g.level == GeometryLevel.OBJECT_PLANE and g.spacing_x_mm == pytest.approx(0.17)
    g = geometry_from_dataset(radiograph(ImagerPixelSpacing=[0.2, 0.2], DistanceSourceToDetector=1000))
    assert g.level == GeometryLevel.DETECTOR_PLANE
    assert any("Distance Source to Patient (0018,1111)" in n for n in g.notes)
    assert geometry_from_dataset(radiograph()).level == GeometryLevel.PIXELS
    g = geometry_from_dataset(radiograph(ViewPosition="LL"))
    assert g.view == "lateral"


def test_table_move_words() -> None:
    # supine: +y (posterior) is down in the room; a centre 20 mm below the isocenter needs the table up
    assert table_move_instruction(20.0, (0, 1, 0), "HFS") == "move table up by 20.0 mm"
    assert table_move_instruction(-20.0, (0, 1, 0), "FFS") == "move table down by 20.0 mm"
    assert table_move_instruction(20.0, (0, 1, 0), "HFP") == "move table down by 20.0 mm"
    assert table_move_instruction(15.0, (1, 0, 0), "HFS") == "move table towards the patient's right by 15.0 mm"
    assert table_move_instruction(-15.0, (1, 0, 0), "HFS") == "move table towards the patient's left by 15.0 mm"


# ---- real data: every file yields a geometry object; unknowns reported


EXPECTED_LEVEL = {
    "loc_philips_MAROTECH_CT_JP2Lossy.dcm": GeometryLevel.PATIENT,
    "loc_philips_surview_fodicom_GH342.dcm": GeometryLevel.PATIENT,
    "dx_canon_chest_PA_pydicom966_fixed.dcm": GeometryLevel.DETECTOR_PLANE,
    "dx_rentgenprom_DX_J2K_0Padding.dcm": GeometryLevel.DETECTOR_PLANE,
    "cr_fuji_chest_CR-MONO1-10-chest.dcm": GeometryLevel.PIXELS,
    "cr_wg04_RG2_hip_JPLL.dcm": GeometryLevel.DETECTOR_PLANE,
    "cr_wg04_RG2_hip_JLSL.dcm": GeometryLevel.DETECTOR_PLANE,
    "hard_cr_wg04_RG2_hip_JPLY_12bit_invalid_SOS.dcm": GeometryLevel.DETECTOR_PLANE,
    "cr_wg04_RG3_leg_RLE.dcm": GeometryLevel.PIXELS,
    "cr_kodak_hand_PA_Kakadu44.dcm": GeometryLevel.DETECTOR_PLANE,
}


def test_every_real_file_yields_a_geometry(realdata_files: list[Path]) -> None:
    assert {p.name for p in realdata_files} == set(EXPECTED_LEVEL), "real data set changed: update EXPECTED_LEVEL"
    for path in realdata_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        g = geometry_from_dataset(ds)
        assert g.level == EXPECTED_LEVEL[path.name], (path.name, g.level, g.notes)
        assert g.rows == ds.Rows and g.columns == ds.Columns
        if g.level == GeometryLevel.PIXELS:
            assert any("pixels only" in n for n in g.notes), path.name
        if g.level == GeometryLevel.DETECTOR_PLANE:
            assert any("magnification unknown" in n for n in g.notes), path.name
        if g.level != GeometryLevel.PATIENT:
            assert g.isocenter is None and any("no patient frame" in n for n in g.notes)


def test_real_surview_notes(realdata_dir: Path) -> None:
    g = geometry_from_dataset(pydicom.dcmread(realdata_dir / "loc_philips_surview_fodicom_GH342.dcm", stop_before_pixels=True))
    assert g.view == "frontal" and g.fan_axis == "x" and g.table_height_mm == 165.0
    assert g.sod_mm is None and any("Distance Source to Patient (0018,1111) absent" in n for n in g.notes)
    # the frontal localizer plane (y = 90) is the isocenter's y; 90 + 165 = 255 on both Philips files
    assert g.isocenter[:2] == (0.0, 90.0)
    assert any("plane y + Table Height = 255.0 mm" in n for n in g.notes)
    g2 = geometry_from_dataset(pydicom.dcmread(realdata_dir / "loc_philips_MAROTECH_CT_JP2Lossy.dcm", stop_before_pixels=True))
    assert g2.isocenter[:2] == (0.0, 144.0) and any("= 255.0 mm" in n for n in g2.notes)
    # the 512-column fan is centred on x = 0: the vendor convention holds across the fan
    centre = pixel_to_patient(g2, np.array([[256.0, 0.0]]))[0]
    assert centre[0] == pytest.approx(0.0, abs=0.5)


def test_lateral_isocenter_from_the_central_ray_when_the_convention_fails() -> None:
    # a table-based frame (Philips-like): isocenter y = 90 mm; the lateral fan is centred on it
    ds = localizer(view="lateral", ipp=(0.0, 90.0 - 250.0, 0.0), spacing=(1.0, 0.9765625), sod=None, sid=None)
    g = geometry_from_dataset(ds)
    assert g.isocenter[:2] == (0.0, pytest.approx(90.0))
    assert "central ray" in g.isocenter_source
    assert any("vendor convention y = 0 is contradicted" in n for n in g.notes)


def test_scanner_geometry_configuration_fills_what_the_header_lacks() -> None:
    ds = localizer(sod=None, sid=None)
    ds.Manufacturer = "Philips"
    cfg = [ScannerGeometry({"Manufacturer": "philips"}, sod_mm=570, sid_mm=1040, frontal_view_position="PA")]
    g = geometry_from_dataset(ds, scanner_geometry=cfg)
    assert g.sod_mm == 570.0 and g.sid_mm == 1040.0 and g.source_direction == (0.0, 1.0, 0.0)
    assert any("site configuration" in n for n in g.notes)
    # the header wins over the configuration
    ds.DistanceSourceToPatient = 600
    assert geometry_from_dataset(ds, scanner_geometry=cfg).sod_mm == 600.0
    assert geometry_from_dataset(ds, scanner_geometry=[ScannerGeometry({"Manufacturer": "GE"}, sod_mm=1)]).sid_mm is None


def test_one_scanner_matching_rule_for_geometry_and_calibration() -> None:
    """A missing or empty attribute never matches, in geometry.py and dose.py alike (nodecore.scanners)."""
    from inference.dose import match_calibration
    from inference.geometry import match_scanner
    from nodecore.config_schema import ScannerCalibration

    ds = localizer(sod=None, sid=None)
    ds.Manufacturer = "  Philips "
    geometry = ScannerGeometry({"Manufacturer": "PHILIPS", "StationName": "CT1"}, sod_mm=570)
    calibration = ScannerCalibration({"Manufacturer": "PHILIPS", "StationName": "CT1"}, 0.1)
    assert match_scanner(ds, [geometry]) is None and match_calibration(ds, [calibration]) is None  # no StationName
    ds.StationName = ""
    assert match_scanner(ds, [geometry]) is None and match_calibration(ds, [calibration]) is None  # empty
    ds.StationName = "ct1"
    assert match_scanner(ds, [geometry]) is geometry and match_calibration(ds, [calibration]) is calibration
    assert geometry_from_dataset(ds, scanner_geometry=[geometry]).sod_mm == 570.0


@given(st.floats(-150, 150), st.floats(-150, 150), st.floats(20, 200), st.floats(20, 150))
def test_silhouette_inversion_round_trip(cu: float, cd: float, a: float, b: float) -> None:
    from inference.geometry import invert_silhouette, silhouette_extents

    lo, hi = silhouette_extents(cu, cd, a, b, 570.0)
    assert lo < hi
    cu2, a2 = invert_silhouette(lo, hi, cd, b, 570.0)
    assert cu2 == pytest.approx(cu, abs=1e-6) and a2 == pytest.approx(a, rel=1e-6)
    # the shadow of an ellipse nearer the source is wider (magnification monotonic in depth)
    lo2, hi2 = silhouette_extents(cu, cd + 10.0, a, b, 570.0)
    assert hi2 - lo2 > hi - lo


def _source_xy(sod: float, view: str, sign: float) -> np.ndarray:
    return np.array([0.0, sign * sod]) if view == "frontal" else np.array([sign * sod, 0.0])


@settings(max_examples=40, deadline=None)
@given(st.floats(-60, 60), st.floats(-60, 60), st.floats(80, 180), st.floats(40, 130),
       st.sampled_from([-1.0, 1.0]), st.sampled_from([-1.0, 1.0]))
def test_solve_extent_elliptical_and_corner_models(cx: float, cy: float, hx: float, hy: float, sf: float,
                                                   sl: float) -> None:
    """solve_extent recovers the extent exactly: for an ellipse (tangent rays, compared with the closed form) and for
    a box whose edges are cast by its corners nearest the source (rays through the corners, computed here)."""
    from inference.geometry import EdgeModel, SilhouetteModel, silhouette_extents, solve_extent

    sod_f, sod_l = 595.0, 541.0
    kw = dict(frontal_sod_mm=sod_f, frontal_source_sign=sf, lateral_sod_mm=sod_l, lateral_source_sign=sl)
    # ellipse: the closed-form shadows of the elliptical cross-section (depth = towards the source)
    fs = silhouette_extents(cx, sf * cy, hx, hy, sod_f)
    ls = silhouette_extents(cy, sl * cx, hy, hx, sod_l)
    (x0, x1), (y0, y1) = solve_extent(fs, ls, **kw)
    assert (x0, x1, y0, y1) == pytest.approx((cx - hx, cx + hx, cy - hy, cy + hy), abs=1e-6)
    # box: each shadow edge is the ray from the source through the corner nearest it (central projection)
    corners = np.array([[x, y] for x in (cx - hx, cx + hx) for y in (cy - hy, cy + hy)])

    def shadow(sod: float, src: np.ndarray, axis: int) -> tuple[float, float]:
        other = 1 - axis
        depth = (corners[:, other] * np.sign(src[other]))
        u = corners[:, axis] * sod / (sod - depth)
        return float(u.min()), float(u.max())

    corner = EdgeModel(across=0.0, depth=0.0, offset_pair=1.0)
    box = SilhouetteModel(corner, corner, corner, corner, "box")
    (x0, x1), (y0, y1) = solve_extent(shadow(sod_f, _source_xy(sod_f, "frontal", sf), 0),
                                      shadow(sod_l, _source_xy(sod_l, "lateral", sl), 1), model=box, **kw)
    assert (x0, x1, y0, y1) == pytest.approx((cx - hx, cx + hx, cy - hy, cy + hy), abs=1e-6)


def test_solve_extent_without_sod_is_orthographic_and_rejects_a_source_inside() -> None:
    from inference.geometry import GeometryError, solve_extent

    (x0, x1), (y0, y1) = solve_extent((-100.0, 120.0), (-90.0, 80.0), frontal_sod_mm=None, frontal_source_sign=1.0,
                                      lateral_sod_mm=None, lateral_source_sign=1.0)
    assert (x0, x1, y0, y1) == (-100.0, 120.0, -90.0, 80.0)
    with pytest.raises(GeometryError, match="source"):
        solve_extent((-100.0, 120.0), (-90.0, 80.0), frontal_sod_mm=60.0, frontal_source_sign=1.0,
                     lateral_sod_mm=60.0, lateral_source_sign=1.0)
