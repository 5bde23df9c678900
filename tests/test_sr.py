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

from dicom_node.uids import result_uids
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
from sr_writer import ResultContext, read_image_notes, read_sr, write_plain_sr, write_results, write_sr
from sr_writer import codes as C
from sr_writer.sr import FAST_PATH_SOURCE_CLASSES

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
    assert "75958009" in flat  # Bounded by
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
    assert len(refs) == len(dets)
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


# ------------------------------------------------------------------------ fast path == highdicom reference
# write_sr / write_plain_sr encode the content tree directly (sr_writer.sr_content); reference=True builds it from
# highdicom template objects as before. Both must give the same document: same bytes (Explicit and Implicit VR),
# the same tree item by item, and the same read_sr result.

TIMESTAMPS = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _normalised(ds: Dataset) -> Dataset:
    """``ds`` with the creation times (now() at writing) blanked; they must exist."""
    for kw in TIMESTAMPS:
        assert kw in ds, kw
        setattr(ds, kw, "")
    for eq in ds.ContributingEquipmentSequence:
        if "ContributionDateTime" in eq:
            eq.ContributionDateTime = ""
    return ds


def _encoded(ds: Dataset, implicit: bool = False) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


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


def assert_same_document(fast: Dataset, ref: Dataset) -> None:
    fast, ref = _normalised(fast), _normalised(ref)
    assert fast.file_meta == ref.file_meta
    fast_bytes, ref_bytes = _encoded(fast), _encoded(ref)
    parsed_fast, parsed_ref = (pydicom.dcmread(pydicom.filebase.DicomBytesIO(b), force=True) for b in
                               (b"\0" * 128 + b"DICM" + _meta(ref) + fast_bytes,
                                b"\0" * 128 + b"DICM" + _meta(ref) + ref_bytes))
    diff = tree_differences(parsed_fast, parsed_ref)
    assert not diff, "\n".join(diff[:20])
    assert fast_bytes == ref_bytes
    # the raw tree is re-encoded correctly for another transfer syntax
    assert _encoded(fast, implicit=True) == _encoded(ref, implicit=True)
    assert read_sr(parsed_fast) == read_sr(parsed_ref)
    assert read_image_notes(parsed_fast) == read_image_notes(parsed_ref)


def _meta(ds: Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    fp = DicomBytesIO()
    write_file_meta_info(fp, ds.file_meta)
    return fp.getvalue()


def assert_fast_equals_reference(src: Dataset, dets, meas, context: ResultContext | None = None) -> None:
    context = context or ctx()
    assert str(src.SOPClassUID) in FAST_PATH_SOURCE_CLASSES
    for write in (write_sr, write_plain_sr):
        fast = write(src, dets, meas, context)
        assert fast.get_item(0x0040A730).is_raw  # the fast path wrote it
        assert_same_document(fast, write(src, dets, meas, context, reference=True))


def test_fast_sr_equals_reference_for_every_real_file(realdata_files: list[Path], realdata_dir: Path) -> None:
    for f in realdata_files:
        src = pydicom.dcmread(f, stop_before_pixels=True)
        dets = labelled_detections(realdata_dir, f.name)
        assert_fast_equals_reference(src, dets, hand_measurements(src, dets))
        assert_fast_equals_reference(src, dets, None)


def test_fast_sr_equals_reference_for_simulated_cases() -> None:
    from inference.measure import measure_image
    from inference.simulator.simulate import simulate_case

    for seed, kind in ((6, "ct_frontal"), (11, "ct_lateral"), (11, "dx")):
        case = simulate_case(seed, kind=kind)
        ds = case.dataset
        dets = [Detection(r.label, CONCEPTS[r.label], 0.9, r.box_px, MODEL) for r in case.truth.regions]
        values = ds.pixel_array * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        assert_fast_equals_reference(ds, dets, measure_image(ds, dets, pixels=values))


def test_fast_sr_equals_reference_for_edge_cases(realdata_dir: Path) -> None:
    """Unusual inputs: no detection, image quantities beside one region, odd values, a long code value, long and
    non-ASCII text (with and without a Specific Character Set), parameters, a model that is not AI."""
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    assert_fast_equals_reference(src, [], None)
    assert_fast_equals_reference(src, [], ImageMeasurements(src.SOPInstanceUID, GeometryLevel.PATIENT))
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
    meas = ImageMeasurements(src.SOPInstanceUID, GeometryLevel.PATIENT, meas.regions + (odd,), view="frontal",
                             isocenter_lps_mm=(1.0, 2.0, 3.0), isocenter_source="ß" * 2000,
                             notes=("ünïcode note", ""), image_quantities=meas.image_quantities)
    all_dets = [dets[0], odd.detection, long_code]
    other = ResultContext(model=ModelIdentity("détecteur", "2.0", family="rule based"),
                          algorithm_parameters=("score_threshold=0.5", "nms=0.4"), institution_name="Hôpital")
    assert_fast_equals_reference(src, all_dets, meas, other)
    utf8 = Dataset()
    utf8.update(src)
    utf8.SpecificCharacterSet = "ISO_IR 192"
    assert_fast_equals_reference(utf8, all_dets, meas, other)
    latin1 = Dataset()
    latin1.update(src)
    latin1.SpecificCharacterSet = "ISO_IR 100"
    assert_fast_equals_reference(latin1, all_dets, meas, other)


def test_fast_sr_raises_like_reference(realdata_dir: Path) -> None:
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    bad_unit = ImageMeasurements(src.SOPInstanceUID, GeometryLevel.PATIENT, (
        RegionMeasurement(dets[0], (Quantity(QuantityKind.BOX_WIDTH, 26.0, "cm"),)),))
    bad_polygon = ImageMeasurements(src.SOPInstanceUID, GeometryLevel.PATIENT, (
        RegionMeasurement(dets[0], (), (), ((0.0, 0.0, 0.0),) * 3),))
    skew_polygon = ImageMeasurements(src.SOPInstanceUID, GeometryLevel.PATIENT, (
        RegionMeasurement(dets[0], (), (), ((-1.5, 2.0, 3.0), (4.0, -5.25, 6.0), (7.0, 8.0, -9.0), (1e5, 0, 0))),))
    long_meaning = [Detection("CHEST", CodedConcept("1", "SCT", "m" * 65), 0.9, dets[0].box, MODEL)]
    cases = [(src, dets, bad_unit), (src, dets, bad_polygon), (src, dets, skew_polygon), (src, long_meaning, None)]
    for source, d, m in cases:
        messages = []
        for reference in (False, True):
            with pytest.raises(ValueError) as info:
                write_sr(source, d, m, ctx(), reference=reference)
            messages.append(str(info.value))
        assert messages[0] == messages[1]


def test_no_frame_of_reference_keeps_the_2d_region_and_leaves_out_the_3d_one(realdata_dir: Path) -> None:
    """An anonymised source without FrameOfReferenceUID (issue 19): both writers keep the SCOORD, omit the
    SCOORD3D (the measurement layer removes the polygon and says why; this is the writers' own guard)."""
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    no_frame = Dataset()
    no_frame.update(src)
    del no_frame.FrameOfReferenceUID
    for reference in (False, True):
        sr = write_sr(no_frame, dets, hand_measurements(src, dets), ctx(), reference=reference)
        regions = read_sr(sr)
        assert regions and all(r.box is not None and r.polygon_lps_mm is None for r in regions)


def test_fast_sr_written_as_is_and_readable(realdata_dir: Path, tmp_path: Path) -> None:
    """The raw content tree is written unchanged, and reading it (pydicom, highdicom) gives the tree."""
    src = pydicom.dcmread(realdata_dir / LOCALIZER, stop_before_pixels=True)
    dets = labelled_detections(realdata_dir, LOCALIZER)
    sr = write_sr(src, dets, hand_measurements(src, dets), ctx())
    assert sr.get_item(0x0040A730).is_raw  # nothing parsed it yet
    back = roundtrip(sr, tmp_path)
    assert back.ContentSequence[-1].ConceptNameCodeSequence[0].CodeValue == "C0034375"
    assert sr.ContentSequence[0].ConceptCodeSequence[0].CodeValue == "en-US"
    assert len(read_sr(sr)) == len(dets)
