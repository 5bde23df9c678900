"""TID 1500 SR writer: round trip through highdicom, UIDs, identity, odd headers, bad input.

Inputs: real files from ../shared/realdata with their hand-drawn boxes (labels.json) as detections, and
measurements computed here from each header's own geometry (``hand_measurements``), so values are realistic and
checkable independently of inference/measure.py.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from inference.types import (
    Box,
    CodedConcept,
    Detection,
    GeometryLevel,
    ImageMeasurements,
    ModelIdentity,
    Quantity,
    QuantityKind,
    RegionMeasurement,
)
from nodecore.uids import result_uids
from sr_writer import ResultContext, read_image_notes, read_sr, write_plain_sr, write_results, write_sr
from sr_writer import codes as C

warnings.filterwarnings("ignore", message=".*exceeds the maximum length.*")

MODEL = ModelIdentity("region-detector", "1.2.0", weights_sha256="ab" * 32)
CONCEPTS = {
    "HEAD": CodedConcept("69536005", "SCT", "Head"),
    "SPINE": CodedConcept("421060004", "SCT", "Spine"),
    "CHEST": CodedConcept("816094009", "SCT", "Chest"),
    "ABDOMEN": CodedConcept("818981001", "SCT", "Abdomen"),
    "PELVIS": CodedConcept("816092008", "SCT", "Pelvis"),
}
LOCALIZER = "loc_philips_MAROTECH_CT_JP2Lossy.dcm"


def ctx(model: ModelIdentity = MODEL) -> ResultContext:
    return ResultContext(model=model, institution_name="Test Hospital", kinds=("sr", "sc", "gsps", "plain_sr"))


def labelled_detections(realdata: Path, name: str, model: ModelIdentity = MODEL) -> list[Detection]:
    """labels.json boxes of ``name`` (RG2 duplicates share the JPLL labels) as detections, score 0.9 - 0.05 i."""
    images = {i["file"]: i for i in json.loads((realdata / "labels.json").read_text())["images"]}
    key = "cr_wg04_RG2_hip_JPLL.dcm" if "RG2" in name else name
    boxes = images[key]["boxes"] if key in images else []
    return [
        Detection(b["label"], CONCEPTS[b["label"]], 0.9 - 0.05 * i, Box.from_inclusive_centres(*b["box"]), model)
        for i, b in enumerate(boxes)
    ]


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(kw)
        if v is not None and len(v) == 2:
            return float(v[0]), float(v[1])
    return None


def hand_measurements(ds: Dataset, detections: list[Detection]) -> ImageMeasurements:
    """Measurements from the header's own geometry (what measure_image computes, done by hand here)."""
    spacing = _spacing(ds)
    patient = ds.Modality == "CT" and "ImagePositionPatient" in ds and spacing is not None
    regions = []
    iso = None
    if patient:
        ipp = np.asarray(ds.ImagePositionPatient, float)
        row, col = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
        dr, dc = spacing

        def lps(x: float, y: float) -> np.ndarray:
            return ipp + (x - 0.5) * dc * row + (y - 0.5) * dr * col

        iso = (0.0, float(ipp[1]) + 100.0, float(ipp[2]) - 300.0)
    for det in detections:
        b = det.box
        if spacing is None:
            regions.append(RegionMeasurement(det, (), (
                (QuantityKind.BOX_WIDTH, "no pixel spacing in the source"),
                (QuantityKind.ELLIPSE_AREA, "no pixel spacing in the source"),
            )))
            continue
        w, h = b.width * spacing[1], b.height * spacing[0]
        qs = [
            Quantity(QuantityKind.BOX_WIDTH, w, "mm"),
            Quantity(QuantityKind.BOX_HEIGHT, h, "mm"),
            Quantity(QuantityKind.ELLIPSE_AREA, math.pi / 4 * w * h / 100.0, "cm2"),
        ]
        unavailable = [(QuantityKind.WATER_EQUIVALENT_DIAMETER, "no scanner calibration for this model")]
        polygon = None
        if patient:
            c = lps(*b.center)
            qs += [
                Quantity(QuantityKind.CENTER_X, float(c[0]), "mm"),
                Quantity(QuantityKind.CENTER_Z, float(c[2]), "mm"),
                Quantity(QuantityKind.ISO_OFFSET_LATERAL, float(c[0] - iso[0]), "mm"),
                Quantity(QuantityKind.ISO_OFFSET_VERTICAL, -42.5, "mm", estimated=True, uncertainty=15.0,
                         method="frontal view: AP centre assumed at the body midline"),
                Quantity(QuantityKind.EFFECTIVE_DIAMETER, 28.3, "cm", estimated=True),
                Quantity(QuantityKind.SSDE_FACTOR, 1.42, "1", estimated=True),
                Quantity(QuantityKind.DLP, 123.4, "mGy.cm", estimated=True),
            ]
            corners = [(b.x_min, b.y_min), (b.x_max, b.y_min), (b.x_max, b.y_max), (b.x_min, b.y_max)]
            polygon = tuple(tuple(float(v) for v in lps(x, y)) for x, y in corners)
        else:
            unavailable.append((QuantityKind.ISO_OFFSET_LATERAL, "no patient frame in a radiograph"))
            qs.append(Quantity(QuantityKind.DAP_FRACTION, 37.5, "%", estimated=True))
        regions.append(RegionMeasurement(det, tuple(qs), tuple(unavailable), polygon))
    level = GeometryLevel.PATIENT if patient else (GeometryLevel.DETECTOR_PLANE if spacing else GeometryLevel.PIXELS)
    image_q = (Quantity(QuantityKind.DIAPHRAGM_Z, 1480.0, "mm", estimated=True),) if patient else ()
    return ImageMeasurements(
        sop_instance_uid=str(ds.SOPInstanceUID), geometry_level=level, regions=tuple(regions), view="frontal",
        isocenter_lps_mm=iso, isocenter_source="table height (test)" if iso else "",
        notes=("hand-made test measurements",), image_quantities=image_q,
    )


def roundtrip(obj: Dataset, tmp_path: Path) -> Dataset:
    path = tmp_path / f"{obj.SOPInstanceUID}.dcm"
    obj.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def check_regions(read, detections, measurements):
    assert len(read) == len(detections)
    regions = {r.detection: r for r in measurements.regions} if measurements else {}
    for got, det in zip(read, detections, strict=True):
        assert got.label == det.label
        # pixels: SCOORD data are FL (float32): integer corners survive exactly, others to ~1e-4 px
        assert got.box.as_tuple() == pytest.approx(det.box.as_tuple(), abs=1e-3)
        assert got.finding_site.value == det.concept.value
        assert got.quantities[QuantityKind.CONFIDENCE].value == pytest.approx(det.score * 100)
        region = regions.get(det)
        if region is None:
            continue
        for q in region.quantities:
            r = got.quantities[q.kind]
            assert r.value == pytest.approx(q.value, rel=1e-9, abs=1e-9), q.kind
            assert r.unit == q.unit
            assert r.estimated == q.estimated
        for kind, reason in region.unavailable:
            assert any(kind.value in t and reason in t for t in got.not_computed)
        if region.polygon_lps_mm is not None:
            # SCOORD3D coordinates are FL (float32): ~1e-4 mm resolution at 1.6 m from the origin
            np.testing.assert_allclose(np.asarray(got.polygon_lps_mm), np.asarray(region.polygon_lps_mm), atol=1e-3)
        else:
            assert got.polygon_lps_mm is None


def test_roundtrip_localizer_recovers_boxes_and_measurements(realdata_dir: Path, tmp_path: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    meas = hand_measurements(src, dets)
    sr = roundtrip(write_sr(src, dets, meas, ctx()), tmp_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    read = read_sr(sr)
    check_regions(read, dets, meas)
    # each region: own tracking UID, shared by its 2D and 3D groups; 3D polygon in the source's frame
    assert len({r.tracking_uid for r in read}) == len(dets)
    assert all(r.frame_of_reference_uid == src.FrameOfReferenceUID for r in read)
    assert all(r.source_sop_instance_uid == src.SOPInstanceUID for r in read)
    # the polygon's corners are the box corners mapped through the header geometry
    chest = read[0]
    ipp = np.asarray(src.ImagePositionPatient, float)
    x0 = ipp[0] + (chest.box.x_min - 0.5) * float(src.PixelSpacing[1])
    assert chest.polygon_lps_mm[0][0] == pytest.approx(x0, abs=1e-3)
    notes = read_image_notes(sr)
    assert "Geometry level of measurements: patient" in notes and "Isocenter source: table height (test)" in notes
    # vertical offset -42.5 mm: centre anterior of the isocenter -> move the patient posterior; FFS: lower the table
    assert src.PatientPosition == "FFS"
    assert any("42.5 mm posterior (supine: lower the table 42.5 mm)" in n for n in read[0].notes)


def test_structure_identity_and_codes(realdata_dir: Path, tmp_path: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    c = ctx()
    sr = roundtrip(write_sr(src, dets, hand_measurements(src, dets), c), tmp_path)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "AccessionNumber",
               "StudyID"):
        assert sr.get(kw) == src.get(kw), kw
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.SeriesNumber == 9901
    eq = sr.ContributingEquipmentSequence[0]
    assert eq.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert eq.DeviceUID == c.device_uid
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99DCMNODE"
    root = sr.ContentSequence
    names = [(i.ConceptNameCodeSequence[0].CodeValue, i.ValueType) for i in root]
    proc = [i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "121058"][0]
    assert proc.ConceptCodeSequence[0].CodeValue == "25045-6"
    assert ("111028", "CONTAINER") in names  # image library
    assert names[-1] == ("C0034375", "CONTAINER")  # qualitative evaluations (notes)
    # device observer carries the Device UID; TID 4019 carries model name, version, family AI
    flat = str(sr)
    assert c.device_uid in flat and "Artificial Intelligence" in flat and MODEL.version in flat
    # a changed model changes the Device UID and every result UID
    other = ResultContext(model=ModelIdentity("region-detector", "1.2.0", weights_sha256="cd" * 32))
    assert other.device_uid != c.device_uid


def test_uids_deterministic(realdata_dir: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    a = write_sr(src, dets, None, ctx())
    b = write_sr(src, dets, None, ctx())
    expected = result_uids(src.SOPInstanceUID, MODEL.version, "sr")
    assert a.SOPInstanceUID == b.SOPInstanceUID == expected["SOPInstanceUID"]
    assert a.SeriesInstanceUID == expected["SeriesInstanceUID"]
    assert [r.tracking_uid for r in read_sr(a)] == [r.tracking_uid for r in read_sr(b)]
    newer = ModelIdentity("region-detector", "1.3.0")
    assert write_sr(src, dets, None, ctx(newer)).SOPInstanceUID != a.SOPInstanceUID


def test_radiograph_without_spacing_reports_pixels_and_why(realdata_dir: Path, tmp_path: Path) -> None:
    name = "cr_fuji_chest_CR-MONO1-10-chest.dcm"
    src = pydicom.dcmread(realdata_dir / name, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, name)
    meas = hand_measurements(src, dets)
    assert meas.geometry_level == GeometryLevel.PIXELS
    sr = roundtrip(write_sr(src, dets, meas, ctx()), tmp_path)
    (chest,) = read_sr(sr)
    assert chest.pixel_size == (dets[0].box.width, dets[0].box.height)
    assert QuantityKind.BOX_WIDTH not in chest.quantities
    assert any("box size in mm" in t and "no pixel spacing" in t for t in chest.not_computed)
    notes = read_image_notes(sr)
    assert "Geometry level of measurements: pixels" in notes
    assert any("PatientOrientation unknown" in n for n in notes)
    proc = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"][0]
    assert proc.ConceptCodeSequence[0].CodeValue == "43468-8"
    # image library entry without orientation (unknown) and without spacing (unknown), never invented
    assert "Patient Orientation Row" not in str(sr) and "Horizontal Pixel Spacing" not in str(sr)


def test_invalid_source_values_are_dropped_and_reported_without_phi(realdata_dir: Path, tmp_path: Path) -> None:
    name = "dx_canon_chest_PA_pydicom966_fixed.dcm"
    src = pydicom.dcmread(realdata_dir / name, stop_before_pixels=True)
    sr = roundtrip(write_sr(src, labelled_detections(realdata_dir, name), None, ctx()), tmp_path)
    assert sr.AccessionNumber == "" and sr.PatientBirthDate == ""
    assert sr.PatientID == src.PatientID and sr.StudyInstanceUID == src.StudyInstanceUID
    notes = read_image_notes(sr)
    assert any(n.startswith("AccessionNumber not copied") for n in notes)
    assert not any(str(src.AccessionNumber) in n for n in notes)  # the invalid value itself is not echoed
    # DX: imager pixel spacing and orientation come from the source
    assert "Horizontal Pixel Spacing" in str(sr) and "Patient Orientation Row" in str(sr)


def test_cr_pixel_spacing_used_as_imager_spacing_is_recorded(realdata_dir: Path) -> None:
    src = pydicom.dcmread(realdata_dir / "cr_wg04_RG2_hip_JPLL.dcm", stop_before_pixels=True)
    sr = write_sr(src, labelled_detections(realdata_dir, "cr_wg04_RG2_hip_JPLL.dcm"), None, ctx())
    assert any("ImagerPixelSpacing taken from the CR PixelSpacing" in n for n in read_image_notes(sr))


def test_no_detection_still_a_valid_report(realdata_dir: Path) -> None:
    src = pydicom.dcmread(realdata_dir / "cr_kodak_hand_PA_Kakadu44.dcm", stop_before_pixels=True)
    sr = write_sr(src, [], None, ctx())
    assert read_sr(sr) == []
    text = str(sr)
    assert "Number of regions detected" in text


def test_plain_sr_is_2d_only_and_names_original_source(realdata_dir: Path, tmp_path: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    meas = hand_measurements(src, dets)
    sr = roundtrip(write_plain_sr(src, dets, meas, ctx()), tmp_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert "SCOORD3D" not in str(sr)
    assert sr.SOPInstanceUID == result_uids(src.SOPInstanceUID, MODEL.version, "plain_sr")["SOPInstanceUID"]

    def scoord_images(items):
        for item in items:
            for child in item.get("ContentSequence", []):
                if item.ValueType == "SCOORD":
                    yield child
            yield from scoord_images(item.get("ContentSequence", []))

    refs = list(scoord_images(sr.ContentSequence))
    assert len(refs) >= len(dets)  # one per measurement
    assert all(r.ConceptNameCodeSequence[0].CodeValue == "111040" for r in refs)
    read = read_sr(sr)
    assert [r.box for r in read] == [d.box for d in dets]
    assert all(r.polygon_lps_mm is None for r in read)


def test_bad_input_errors(realdata_dir: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    with pytest.raises(ValueError, match="unknown output kinds"):
        write_results(src, dets, None, ["sr", "pdf"], ctx())
    other = ImageMeasurements("1.2.3", GeometryLevel.PIXELS)
    with pytest.raises(ValueError, match="another image"):
        write_results(src, dets, other, ["sr"], ctx())
    bad = ImageMeasurements(src.SOPInstanceUID, GeometryLevel.PATIENT, (
        RegionMeasurement(dets[0], (Quantity(QuantityKind.BOX_WIDTH, 26.0, "cm"),)),))
    with pytest.raises(ValueError, match="in 'cm'; the SR writes it in 'mm'"):
        write_sr(src, dets, bad, ctx())
    broken = Dataset()
    broken.update(src)
    del broken.StudyInstanceUID
    with pytest.raises(ValueError, match="lacks StudyInstanceUID"):
        write_sr(broken, dets, None, ctx())
    with pytest.raises(ValueError, match="unknown output kinds"):
        ResultContext(model=MODEL, kinds=("sr", "xml"))


def test_every_quantity_kind_has_a_concept_and_unit() -> None:
    for kind in QuantityKind:
        spec = C.spec_for(kind)
        assert C.unit(spec.unit).scheme_designator == "UCUM"
        assert C.kind_for(spec.name, spec.unit) == kind


def test_roundtrip_with_simulator_and_measure_image() -> None:
    """The real measurement module's output (every quantity, unavailable reason and polygon) survives the SR."""
    from inference.measure import measure_image
    from inference.simulator.simulate import simulate_case

    case = simulate_case(6, kind="ct_frontal")
    ds = case.dataset
    dets = [Detection(r.label, CONCEPTS[r.label], 0.9, r.box_px, MODEL) for r in case.truth.regions]
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    meas = measure_image(ds, dets, pixels=values)
    assert meas.geometry_level == GeometryLevel.PATIENT and len(dets) == 5
    sr = write_sr(ds, dets, meas, ctx())
    check_regions(read_sr(sr), dets, meas)
    notes = read_image_notes(sr)
    assert all(n[:1000] in notes for n in meas.notes)


# ------------------------------------------------------------------------ one tree, read by highdicom and viewers
# write_sr / write_plain_sr encode the one description of the tree (sr_writer.sr_content). Every document must be
# read back by highdicom (from_dataset, in read_sr) to the same regions, survive re-encoding in another transfer
# syntax, and have the shape viewers need (OHIF v3 and the cornerstone adapters; docs/RESULTS.md):
# every group in Imaging Measurements has coordinates under its measurements (none at group level), a Comment with
# the region's name, the centring figures and area first, and a 2D box before any 3D one.

VIEWER_FIRST = (C.spec_for(QuantityKind.ISO_OFFSET_LATERAL).name.value,
                C.spec_for(QuantityKind.ISO_OFFSET_VERTICAL).name.value,
                C.spec_for(QuantityKind.ELLIPSE_AREA).name.value)


def _code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def assert_viewer_shape(sr: Dataset, detections) -> None:
    imaging = [i for i in sr.ContentSequence if _code(i) == "126010"]
    (container,) = imaging
    if not detections:
        assert "ContentSequence" not in container  # empty: no group without coordinates
        return
    groups = list(container.ContentSequence)
    assert len(groups) == len(detections)
    idents = set()
    for group, det in zip(groups, detections, strict=True):
        assert _code(group) == "125007" and group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
        items = list(group.ContentSequence)
        assert not [i for i in items if i.ValueType in ("SCOORD", "SCOORD3D")]
        ident = [i for i in items if _code(i) == "112039"][0].TextValue
        assert ident.startswith("Cornerstone3DTools@^0.1.0:RectangleROI:") and ident not in idents
        idents.add(ident)
        (comment,) = [i for i in items if _code(i) == "121106"]
        assert comment.TextValue.split(" ")[0] == det.label
        nums = [i for i in items if i.ValueType == "NUM"]
        assert nums
        names = [_code(n) for n in nums]
        leading = [n for n in names if n in VIEWER_FIRST]
        assert names[:len(leading)] == leading  # offsets and area lead when present
        for k, num in enumerate(nums):
            (coord,) = [c for c in num.ContentSequence if c.ValueType in ("SCOORD", "SCOORD3D")]
            assert coord.RelationshipType == "INFERRED FROM" and coord.GraphicType == "POLYLINE"
            assert coord.get("ConceptNameCodeSequence") is None
            n = 2 if coord.ValueType == "SCOORD" else 3
            assert len(coord.GraphicData) == 5 * n
            assert list(coord.GraphicData[:n]) == list(coord.GraphicData[-n:])  # closed
            if k == 0:
                assert coord.ValueType == "SCOORD"  # the first measurement references the image


def tree_differences(a: Dataset, b: Dataset, path: str = "") -> list[str]:
    """Every element that differs (tag set, VR, value), recursing into sequences; paths name content items by
    value type and concept name so that a failure says which item differs."""
    out: list[str] = []
    if list(a.keys()) != list(b.keys()):
        out.append(f"{path}: elements {[e.keyword for e in a]} != {[e.keyword for e in b]}")
        return out
    for ea in a:
        eb = b[ea.tag]
        where = f"{path}/{ea.keyword or ea.tag}"
        if ea.VR != eb.VR:
            out.append(f"{where}: VR {ea.VR} != {eb.VR}")
        elif ea.VR == "SQ":
            if len(ea.value) != len(eb.value):
                out.append(f"{where}: {len(ea.value)} items != {len(eb.value)}")
                continue
            for i, (ia, ib) in enumerate(zip(ea.value, eb.value, strict=True)):
                label = ia.get("ValueType", "")
                if "ConceptNameCodeSequence" in ia:
                    label += " " + str(ia.ConceptNameCodeSequence[0].get("CodeMeaning", ""))
                out += tree_differences(ia, ib, f"{where}[{i}]{'(' + label + ')' if label else ''}")
        elif ea.value != eb.value:
            out.append(f"{where}: {ea.value!r} != {eb.value!r}")
    return out


def _encoded(ds: Dataset, implicit: bool = False) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _file_roundtrip(ds: Dataset, transfer_syntax: str | None = None) -> Dataset:
    from io import BytesIO

    if transfer_syntax is not None:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buf.getvalue()))


def assert_document(src: Dataset, dets, meas, context: ResultContext | None = None) -> None:
    """Both SR forms of one input: readable by highdicom to the same regions after a file round trip and after
    re-encoding as Implicit VR, and shaped for viewers."""
    from pydicom.uid import ImplicitVRLittleEndian

    context = context or ctx()
    for write in (write_sr, write_plain_sr):
        sr = write(src, dets, meas, context)
        assert sr.get_item(0x0040A730).is_raw  # the tree was encoded directly
        explicit = _file_roundtrip(sr)
        implicit = _file_roundtrip(sr, ImplicitVRLittleEndian)  # the raw tree re-encoded
        assert not tree_differences(explicit, implicit)
        assert_viewer_shape(explicit, dets)  # first: highdicom's reading adds names to the SCOORDs it parses
        read = read_sr(explicit)
        assert read == read_sr(implicit)
        assert [r.label for r in read] == [d.label for d in dets]
        for r, d in zip(read, dets, strict=True):
            np.testing.assert_allclose(r.box.as_tuple(), d.box.as_tuple(), atol=1e-3)
        if write is write_plain_sr:
            assert all(r.polygon_lps_mm is None for r in read)
        assert read_image_notes(explicit)[0].startswith(f"Number of regions detected: {len(dets)} region")


@pytest.mark.slow  # every input, both SR forms, two encodings: in `make test`, not `make test-fast`
def test_every_real_file_gives_readable_viewer_shaped_srs(realdata_files: list[Path], realdata_dir: Path) -> None:
    for f in realdata_files:
        src = pydicom.dcmread(f, stop_before_pixels=True)
        dets = labelled_detections(realdata_dir, f.name)
        assert_document(src, dets, hand_measurements(src, dets))
        assert_document(src, dets, None)


@pytest.mark.slow  # every input, both SR forms, two encodings: in `make test`, not `make test-fast`
def test_simulated_cases_give_readable_viewer_shaped_srs() -> None:
    from inference.measure import measure_image
    from inference.simulator.simulate import simulate_case

    for seed, kind in ((6, "ct_frontal"), (11, "ct_lateral"), (11, "dx")):
        case = simulate_case(seed, kind=kind)
        ds = case.dataset
        dets = [Detection(r.label, CONCEPTS[r.label], 0.9, r.box_px, MODEL) for r in case.truth.regions]
        values = ds.pixel_array * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        meas = measure_image(ds, dets, pixels=values)
        assert_document(ds, dets, meas)
        if kind != "dx":
            check_regions(read_sr(write_sr(ds, dets, meas, ctx())), dets, meas)


@pytest.mark.slow  # every input, both SR forms, two encodings: in `make test`, not `make test-fast`
def test_edge_cases_are_readable(realdata_dir: Path) -> None:
    """Unusual inputs: no detection, image quantities beside one region, odd values, a long code value, long and
    non-ASCII text (with and without a Specific Character Set), parameters, a model that is not AI, two regions
    of one class."""
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    assert_document(src, [], None)
    assert_document(src, [], ImageMeasurements(src.SOPInstanceUID, GeometryLevel.PATIENT))
    meas = hand_measurements(src, dets[:1])
    odd = RegionMeasurement(
        Detection("LIVER", CodedConcept("10200004", "SCT", "Liver"), 1.0, Box(0, 0, 716, 512), MODEL),
        (Quantity(QuantityKind.BOX_WIDTH, 1e-20, "mm"), Quantity(QuantityKind.BOX_HEIGHT, 123456789.125, "mm"),
         Quantity(QuantityKind.SSDE, 7, "mGy", estimated=True, method="Größe ≥ 3 cm; " + "x" * 1500)),
        ((QuantityKind.DLP, "täble ñot found"),),
        ((-1.5, 2.0, 3.0), (4.0, 2.0, 6.0), (4.0, 2.0, -9.0), (-1.5, 2.0, -9.0)),
    )
    long_code = Detection("SPINE", CodedConcept("1234567890123456789", "SCT", "Spine (long code)"), 0.123456789,
                          Box(1.25, 2.5, 3.75, 5.0), MODEL)
    second_spine = Detection("SPINE", CONCEPTS["SPINE"], 0.5, Box(10, 20, 30, 40), MODEL)
    meas = ImageMeasurements(src.SOPInstanceUID, GeometryLevel.PATIENT, meas.regions + (odd,), view="frontal",
                             isocenter_lps_mm=(1.0, 2.0, 3.0), isocenter_source="ß" * 2000,
                             notes=("ünïcode note", ""), image_quantities=meas.image_quantities)
    all_dets = [dets[0], odd.detection, long_code, second_spine]
    other = ResultContext(model=ModelIdentity("détecteur", "2.0", family="rule based"),
                          algorithm_parameters=("score_threshold=0.5", "nms=0.4"), institution_name="Hôpital")
    for charset in (None, "ISO_IR 192", "ISO_IR 100"):
        source = Dataset()
        source.update(src)
        if charset:
            source.SpecificCharacterSet = charset
        assert_document(source, all_dets, meas, other)
    read = read_sr(write_sr(src, all_dets, meas, other))
    assert [r.display_name for r in read] == [dets[0].label, "LIVER", "SPINE 1", "SPINE 2"]
    # the image-level quantity (diaphragm level) is carried by the CHEST group
    assert QuantityKind.DIAPHRAGM_Z in read[0].image_quantities and dets[0].label == "CHEST"


def test_bad_input_raises_precise_errors(realdata_dir: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    bad_unit = ImageMeasurements(src.SOPInstanceUID, GeometryLevel.PATIENT, (
        RegionMeasurement(dets[0], (Quantity(QuantityKind.BOX_WIDTH, 26.0, "cm"),)),))
    bad_polygon = ImageMeasurements(src.SOPInstanceUID, GeometryLevel.PATIENT, (
        RegionMeasurement(dets[0], (), (), ((0.0, 0.0, 0.0),) * 3),))
    long_meaning = [Detection("CHEST", CodedConcept("1", "SCT", "m" * 65), 0.9, dets[0].box, MODEL)]
    for d, m, message in ((dets, bad_unit, "in 'cm'; the SR writes it in 'mm'"),
                          (dets, bad_polygon, "must have 4 .x, y, z. points"),
                          (long_meaning, None, "Code meaning can have maximally 64 characters")):
        with pytest.raises(ValueError, match=message):
            write_sr(src, d, m, ctx())


def test_source_without_frame_of_reference_keeps_pixels_and_says_why(realdata_dir: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    no_frame = Dataset()
    no_frame.update(src)
    del no_frame.FrameOfReferenceUID
    sr = write_sr(no_frame, dets, hand_measurements(src, dets), ctx())
    read = read_sr(sr)
    assert [r.box for r in read] == [d.box for d in dets]
    assert all(r.polygon_lps_mm is None for r in read)
    assert any("no Frame of Reference UID" in n for n in read_image_notes(sr))


def test_sr_written_as_is_and_readable(realdata_dir: Path, tmp_path: Path) -> None:
    """The raw content tree is written unchanged, and reading it (pydicom, highdicom) gives the tree."""
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    sr = write_sr(src, dets, hand_measurements(src, dets), ctx())
    assert sr.get_item(0x0040A730).is_raw  # nothing parsed it yet
    back = roundtrip(sr, tmp_path)
    assert back.ContentSequence[-1].ConceptNameCodeSequence[0].CodeValue == "C0034375"
    assert sr.ContentSequence[0].ConceptCodeSequence[0].CodeValue == "en-US"
    assert len(read_sr(sr)) == len(dets)
