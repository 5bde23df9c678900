"""In-plane orientation (inference.orientation), its recorded preprocessing step, the route setting
``radiograph_orientation``, and the vendor conventions of docs/GEOMETRY.md (issue 19).

Vendor rows are checked on a real header (Philips, Canon DX, Fuji CR, the Rentgenprom DX of ../shared/realdata) or
on a header DERIVED from the real Philips surview by rewriting the attributes the way the vendor writes them
(Siemens, GE, Canon/Toshiba, United Imaging: no real localizer of theirs is in ../shared/realdata). What each
derivation assumes about the vendor is stated in docs/GEOMETRY.md.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest

from inference.geometry import geometry_from_dataset
from inference.orientation import (
    ALL_ORIENTATIONS,
    Orientation,
    canonical_orientation,
    orientation_for,
    parse_patient_orientation,
)
from inference.preprocessing import GeometricStep, Transform, orient_step
from sr_writer.source import read_source_header
from tests.conformance import restore

SURVIEW = "loc_philips_surview_fodicom_GH342.dcm"
MAROTECH = "loc_philips_MAROTECH_CT_JP2Lossy.dcm"


# ---------------------------------------------------------------------------------------------------- the 8 turns


@pytest.mark.parametrize("op", ALL_ORIENTATIONS, ids=lambda o: o.name)
def test_each_turn_and_its_inverse_restore_the_image_and_the_points(op: Orientation) -> None:
    img = np.arange(3 * 5).reshape(3, 5)
    turned = op.apply(img)
    assert turned.shape == op.output_size(3, 5)
    assert np.array_equal(op.inverse().apply(turned), img)
    # the recorded step maps the corner-coordinate centre of every pixel to its turned position, exactly
    step = orient_step(op, 3, 5)
    rows, cols = np.indices(img.shape)
    centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    mapped = step.forward(centres)
    r2, c2 = (mapped[:, 1] - 0.5).astype(int), (mapped[:, 0] - 0.5).astype(int)
    assert np.array_equal(turned[r2, c2], img.ravel())
    assert np.array_equal(step.backward(mapped), centres)


def test_a_transform_with_a_turn_inverts_boxes_exactly() -> None:
    op = Orientation(True, True, False)  # rotate 90 clockwise
    t = Transform((716, 512)).then(orient_step(op, 716, 512))
    t = t.then(GeometricStep("letterbox", (512, 716), (160, 160), 160 / 716, 0.0, 112 / 512, 24.0))
    boxes = np.array([[10.25, 20.5, 300.125, 600.0], [0.0, 0.0, 512.0, 716.0]])
    back = t.boxes_to_original(t.boxes_to_model(boxes))
    assert np.max(np.abs(back - boxes)) < 1e-12
    assert t.swaps_axes
    sx, tx, sy, ty = t.affine()  # after swapping x and y: model x from original y, and so on
    p = np.array([[100.0, 200.0]])
    assert np.allclose(t.points_to_model(p), [[200.0 * sx + tx, 100.0 * sy + ty]])


def test_toshiba_rotated_lateral_scanogram_is_turned_head_up() -> None:
    """The issue's case: rows [0, 0, -1] (head on the image's left), columns [0, 1, 0] (anterior at the top)."""
    op = orientation_for((0, 0, -1), (0, 1, 0), "test")
    assert op.name == "transpose"
    rows_dir, cols_dir = op.directions(np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0]))
    assert tuple(rows_dir) == (0.0, 1.0, 0.0) and tuple(cols_dir) == (0.0, 0.0, -1.0)  # P\F: as trained


@pytest.mark.parametrize("row, col, name", [
    ((1, 0, 0), (0, 0, -1), "identity"),  # frontal L\F
    ((-1, 0, 0), (0, 0, -1), "flip left-right"),  # frontal R\F (seen from behind)
    ((1, 0, 0), (0, 0, 1), "flip up-down"),  # feet up
    ((0, 1, 0), (0, 0, -1), "identity"),  # lateral P\F
    ((0, -1, 0), (0, 0, -1), "flip left-right"),  # lateral A\F
    ((0, 0, 1), (1, 0, 0), "rotate 90 counter-clockwise"),
    ((0, 0, -1), (-1, 0, 0), "rotate 90 clockwise"),
])
def test_orientation_from_directions(row: tuple[int, ...], col: tuple[int, ...], name: str) -> None:
    assert orientation_for(row, col, "test").name == name


def test_patient_orientation_parsing() -> None:
    assert parse_patient_orientation(["L", "F"]) is not None
    assert parse_patient_orientation("H\\L") is not None and parse_patient_orientation("A,FL") is not None
    for bad in ("", "L", "L\\L", "L\\Q", ["L"], None, "L\\R"):
        assert parse_patient_orientation(bad) is None, bad


# ------------------------------------------------------------------------------------------- radiograph headers


@pytest.mark.parametrize("name, expected", [
    ("dx_canon_chest_PA_pydicom966_fixed.dcm", "identity"),  # L\F
    ("cr_wg04_RG3_leg_RLE.dcm", "flip left-right"),  # R\F
    ("dx_rentgenprom_DX_J2K_0Padding.dcm", "rotate 90 counter-clockwise"),  # H\L (the header; see GEOMETRY.md)
])
def test_real_radiographs_are_turned_by_their_patient_orientation(realdata_dir: Path, name: str, expected: str) -> None:
    ds = pydicom.dcmread(realdata_dir / name, stop_before_pixels=True)
    op = canonical_orientation(ds)
    assert op.name == expected and op.source.startswith("Patient Orientation (0020,0020)")


@pytest.mark.parametrize("name", ["cr_fuji_chest_CR-MONO1-10-chest.dcm", "cr_wg04_RG2_hip_JPLL.dcm"])
def test_radiographs_without_patient_orientation_follow_the_route_setting(realdata_dir: Path, name: str) -> None:
    ds = pydicom.dcmread(realdata_dir / name, stop_before_pixels=True)
    as_stored = canonical_orientation(ds)
    assert as_stored.is_identity and any("taken as stored" in n for n in as_stored.notes)
    assumed = canonical_orientation(ds, assumed="R\\F")
    assert assumed.name == "flip left-right" and "route setting" in assumed.source
    assert canonical_orientation(ds, assumed="F,L").name == "transpose"
    bad = canonical_orientation(ds, assumed="X\\Y")
    assert bad.is_identity and any("not a Patient Orientation" in n for n in bad.notes)


def test_malformed_image_orientation_is_noted_and_falls_back(realdata_dir: Path) -> None:
    from tests.conformance import _set_raw

    ds = pydicom.dcmread(realdata_dir / SURVIEW, stop_before_pixels=True)
    _set_raw(ds, "ImageOrientationPatient", "DS", b"1\\0\\abc\\0\\0\\-1")
    op = canonical_orientation(ds)
    assert op.is_identity and any("Image Orientation (Patient)" in n for n in op.notes)


# ------------------------------------------------------------------------------------------------ configuration


def _config_with(tmp_path: Path, value: object) -> Path:
    import yaml

    from tests.conftest import ROOT

    cfg = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    for route in cfg["routes"]:
        if route["name"] == "radiograph":
            route["pipeline"]["options"] = {"radiograph_orientation": value}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_route_setting_is_checked_at_load_time_with_file_and_line(tmp_path: Path) -> None:
    from dicom_node.config import ConfigError, load_config

    good = load_config(_config_with(tmp_path, "L\\F"), storage_override=tmp_path / "s")
    route = next(r for r in good.routes if r.name == "radiograph")
    assert route.pipeline is not None and route.pipeline.options["radiograph_orientation"] == "L\\F"
    for bad in ("L\\Q", "LF", 3):
        with pytest.raises(ConfigError) as err:
            load_config(_config_with(tmp_path, bad), storage_override=tmp_path / "s")
        text = str(err.value)
        assert "node.yaml:" in text and "routes[2].pipeline.options.radiograph_orientation" in text, text


# --------------------------------------------------------------------------------------------- vendor conventions


def _surview(realdata_dir: Path) -> pydicom.Dataset:
    return pydicom.dcmread(realdata_dir / SURVIEW, stop_before_pixels=True)


def _lateral(ds: pydicom.Dataset, plane_x: float, centre_y: float) -> pydicom.Dataset:
    """The header rewritten as a lateral localizer (rows -> posterior, columns -> feet) whose fan is centred on
    ``centre_y`` (the image content is irrelevant to these header checks)."""
    out = copy.deepcopy(ds)
    n, step = int(ds.Columns), float(ds.PixelSpacing[1])
    out.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    out.ImagePositionPatient = [plane_x, centre_y - (n // 2) * step, float(ds.ImagePositionPatient[2])]
    return out


@pytest.mark.parametrize("name, plane_y, table_height", [(SURVIEW, 90.0, 165.0), (MAROTECH, 144.0, 111.0)])
def test_philips_real_headers(realdata_dir: Path, name: str, plane_y: float, table_height: float) -> None:
    """Philips (real): table-based frame, frontal plane at y = 255 - Table Height, x = 0 at the centre of pixel 256
    across the fan, no SOD/SID, FFS, no View Position (tube side assumed above the table)."""
    ds = pydicom.dcmread(realdata_dir / name, stop_before_pixels=True)
    g = geometry_from_dataset(ds)
    assert canonical_orientation(ds).is_identity
    assert g.view == "frontal" and g.fan_axis == "x" and g.patient_position == "FFS"
    assert g.isocenter is not None and g.isocenter[:2] == (0.0, plane_y)
    assert g.table_height_mm == table_height and plane_y + table_height == 255.0
    assert g.sod_mm is None and g.source_direction_source == "assumed: tube above the table"
    assert any("not y = 0" in n for n in g.notes)


def test_siemens_table_top_frame_derived(realdata_dir: Path) -> None:
    """Siemens (derived): y = 0 at the table top, the frontal plane at y = -Table Height; a lateral topogram's
    fan centred at y = -Table Height: the isocenter is read from the image, never from y = 0."""
    ds = _surview(realdata_dir)
    ds.Manufacturer, ds.PatientPosition, ds.TableHeight = "SIEMENS", "HFS", "150"
    ds.ImagePositionPatient = [-250, -150, 0]
    ds.SeriesDescription = "Topogram 0.6 T20"  # AP/PA only here: not read, the tube side is assumed and noted
    g = geometry_from_dataset(ds)
    assert g.isocenter is not None and g.isocenter[1] == -150.0
    assert any("table top 150 mm below the isocenter, at y = 0.0 mm" in n for n in g.notes)
    lat = geometry_from_dataset(_lateral(ds, 0.0, -150.0))
    assert lat.view == "lateral" and lat.isocenter is not None and lat.isocenter[1] == pytest.approx(-150.0)
    assert any("vendor convention y = 0 is contradicted" in n for n in lat.notes)


def test_ge_isocenter_frame_and_scan_length_in_slice_thickness_derived(realdata_dir: Path) -> None:
    """GE (derived): y = 0 at the isocenter (frontal plane at y = 0), the scan length in Slice Thickness: it is
    not read as a spacing or a distance (sizes come from Pixel Spacing only)."""
    ds = _surview(realdata_dir)
    ds.Manufacturer, ds.PatientPosition = "GE MEDICAL SYSTEMS", "HFS"
    ds.ImagePositionPatient = [-250, 0, 0]
    base = geometry_from_dataset(ds)
    ds.SliceThickness = "500"
    g = geometry_from_dataset(ds)
    assert g.isocenter == base.isocenter and g.isocenter is not None and g.isocenter[1] == 0.0
    assert (g.spacing_x_mm, g.spacing_y_mm) == (base.spacing_x_mm, base.spacing_y_mm)
    lat = geometry_from_dataset(_lateral(ds, 0.0, 0.0))
    assert lat.isocenter is not None and lat.isocenter[1] == 0.0 and "vendor convention" in lat.isocenter_source


def test_canon_toshiba_rotated_lateral_and_empty_character_set_derived(realdata_dir: Path) -> None:
    """Canon/Toshiba (derived): y = 0 at the isocenter; a lateral scanogram stored rotated (rows [0,0,-1],
    columns [0,1,0]) and an empty Specific Character Set: turned head-up (transpose) before detection, the fan runs
    along image y, the table along x; the character set is read as the default repertoire, noted."""
    ds = pydicom.dcmread(realdata_dir / SURVIEW)
    lateral = _lateral(ds, 0.0, 0.0)
    lateral.Manufacturer = "TOSHIBA"
    pixels = lateral.pixel_array
    rotated = restore(lateral, Orientation(True, False, False), pixels)  # stored transposed
    assert [float(v) for v in rotated.ImageOrientationPatient] == [0, 0, -1, 0, 1, 0]
    rotated.SpecificCharacterSet = ""
    op = canonical_orientation(rotated)
    assert op.name == "transpose"
    g = geometry_from_dataset(rotated)
    assert g.view == "lateral" and g.fan_axis == "y"
    assert g.isocenter is not None and g.isocenter[1] == pytest.approx(0.0)
    header = read_source_header(rotated)
    assert "SpecificCharacterSet" not in header.dataset
    assert any("present but empty: read as the default repertoire" in n for n in header.notes)


def test_united_imaging_standard_header_derived(realdata_dir: Path) -> None:
    """United Imaging (derived; no real header and no vendor-specific convention known to us): a standard header
    (isocenter frame, Distance Source to Patient / Detector present) is read by the generic rules."""
    ds = _surview(realdata_dir)
    ds.Manufacturer, ds.PatientPosition = "UIH", "HFS"
    ds.ImagePositionPatient = [-250, 0, 0]
    ds.DistanceSourceToPatient, ds.DistanceSourceToDetector = "570", "1040"
    g = geometry_from_dataset(ds)
    assert g.isocenter is not None and g.isocenter[:2] == (0.0, 0.0)
    assert g.sod_mm == 570.0 and g.magnification == pytest.approx(1040 / 570)
    assert canonical_orientation(ds).is_identity


def test_canon_dx_real_header(realdata_dir: Path) -> None:
    """Canon DX (real): Patient Orientation L\\F, View Position PA, SID but no SOD: detector-plane sizes."""
    ds = pydicom.dcmread(realdata_dir / "dx_canon_chest_PA_pydicom966_fixed.dcm", stop_before_pixels=True)
    g = geometry_from_dataset(ds)
    assert canonical_orientation(ds).is_identity and g.view == "frontal" and g.sid_mm == 1450.0


@pytest.mark.parametrize("op", ALL_ORIENTATIONS, ids=lambda o: o.name)
def test_corpus_restore_keeps_every_physical_point(realdata_dir: Path, op: Orientation) -> None:
    """The conformance corpus's re-stored image: the pixel found at a physical point is the original's there."""
    from inference.geometry import patient_to_pixel, pixel_to_patient
    from inference.preprocessing import stored_pixels

    src = pydicom.dcmread(realdata_dir / SURVIEW)
    pixels = stored_pixels(src)
    var = restore(src, op, pixels)
    turned = np.frombuffer(var.PixelData, dtype="<u2").reshape(int(var.Rows), int(var.Columns))
    g0, g1 = geometry_from_dataset(src), geometry_from_dataset(var)
    rng = np.random.default_rng(19)
    ij = rng.integers(0, 512, size=(200, 2))
    lps = pixel_to_patient(g0, ij[:, ::-1] + 0.5)  # (x, y) = (column, row) centres
    xy = patient_to_pixel(g1, lps, perspective=False)
    rc = np.floor(xy[:, ::-1]).astype(int)
    assert np.allclose(xy - 0.5, np.rint(xy - 0.5), atol=1e-6)  # lands on pixel centres
    assert np.array_equal(turned[rc[:, 0], rc[:, 1]], pixels[ij[:, 0], ij[:, 1]])


# ------------------------------------------------------------------------------------------------------ padding


def test_declared_ct_padding_is_air_whatever_the_vendor_value(realdata_dir: Path) -> None:
    """Derived from the real surview, stored signed in HU (intercept 0): the outer 16 columns marked as padding
    with three declared Pixel Padding Values outside the data (-2048 and -3024 HU, as Siemens and GE pad, and
    3500): the model sees the same image, so the regions are identical, and they agree with the unpadded image;
    an undeclared padding is left as it is."""
    from inference.engine import Detector
    from inference.preprocessing import stored_pixels

    src = pydicom.dcmread(realdata_dir / SURVIEW)
    hu = stored_pixels(src).astype(np.int16) - 1024
    src.PixelRepresentation, src.RescaleIntercept = 1, 0
    det = Detector.from_card("builtin:reference", "onnxruntime")
    base = {d.label: d.box for d in det.detect(src, hu)}
    results = []
    for pad in (-2048, -3024, 3500):
        padded = hu.copy()
        padded[:, :16] = pad
        padded[:, -16:] = pad
        ds = copy.deepcopy(src)
        ds.PixelPaddingValue = pad
        prepared = det.prepare(ds, padded)
        assert any("padding (Pixel Padding Value)" in n for n in prepared.notes)
        results.append({d.label: d.box.as_tuple() for d in det.detect(ds, padded)})
        assert not any("padding" in n for n in det.prepare(src, padded).notes)
    assert results[0] == results[1] == results[2]
    assert set(results[0]) == set(base)
    for label, box in base.items():
        got = results[0][label]
        ix = max(0.0, min(box.x_max, got[2]) - max(box.x_min, got[0]))
        iy = max(0.0, min(box.y_max, got[3]) - max(box.y_min, got[1]))
        inter = ix * iy
        iou = inter / (box.width * box.height + (got[2] - got[0]) * (got[3] - got[1]) - inter)
        assert iou > 0.9, (label, iou)
