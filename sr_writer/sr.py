"""TID 1500 Measurement Report (Comprehensive 3D SR) of detected regions, and reading it back.

Content tree (see docs/RESULTS.md for the reasoning):

* Root: Imaging Measurement Report, language, device observer (Device UID of the model), procedure reported
  from the source modality (LN 25045-6 CT / 43468-8 XR unspecified body region), image library (TID 1600, built
  here so that CR/DX without orientation or spacing still get a valid entry), and a Qualitative Evaluations
  container with the TEXT notes (geometry level, isocenter source, what could not be computed and why).
* Imaging Measurements:
  - a TID 1501 image group ("image": number of regions, image-level quantities), only when there is no region
    or there are image quantities,
  - per region one TID 1410 group: Tracking Identifier ("CHEST region 1") and Tracking UID, finding category
    (anatomical structure), finding type and finding site (the model card's concept), Algorithm Identification
    (TID 4019), geometric purpose "Bounded by", the box as a closed SCOORD POLYLINE on the source image and the
    measurements (TID 300, UCUM units, Measurement Method = Measured / Estimated),
  - per region with a patient frame (CT localizers) a second TID 1410 group with the same Tracking Identifier
    and UID whose ROI is the box as a SCOORD3D POLYGON in the source's Frame of Reference (TID 1410 allows one
    ROI per group).

Writing: ``sr_writer.sr_content`` encodes this tree directly as bytes (the default, ~10 ms for five regions);
``build_groups`` / ``_report`` build it from highdicom templates (``reference=True``, ~150 ms), the reference the
fast path is tested against byte for byte (tests/test_sr.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.uids import derived_uid, result_uids
from inference.types import (
    Box,
    Detection,
    GeometryLevel,
    ImageMeasurements,
    Quantity,
    QuantityKind,
    RegionMeasurement,
)
from sr_writer import codes as C
from sr_writer.context import ResultContext
from sr_writer.source import SourceHeader, read_source_header

TEXT_MAX = 1024  # UT would allow more; keep notes short


def _text(name: CodedConcept, value: str) -> hd.sr.QualitativeEvaluation:
    """A TEXT item in a group's qualitative-evaluation slot (TID 1501/1410 allow TEXT evaluations)."""
    qe = hd.sr.QualitativeEvaluation(name=name, value=C.NOTE)
    item = hd.sr.TextContentItem(
        name=name, value=value[:TEXT_MAX], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    qe[0:1] = [item]
    return qe


def _measurement(spec: C.QuantitySpec, value: float, estimated: bool | None) -> hd.sr.Measurement:
    method = None if estimated is None else (C.ESTIMATED if estimated else C.MEASURED)
    return hd.sr.Measurement(name=spec.name, value=float(value), unit=C.unit(spec.unit), method=method)


def checked_spec(q: Quantity) -> C.QuantitySpec:
    """How ``q`` is written; ValueError when it is not in the unit the SR writes its kind in."""
    spec = C.spec_for(q.kind)
    if q.unit != spec.unit:
        raise ValueError(f"quantity {q.kind} in {q.unit!r}; the SR writes it in {spec.unit!r} (convert first)")
    return spec


def _quantity_measurement(q: Quantity) -> hd.sr.Measurement:
    return _measurement(checked_spec(q), q.value, q.estimated)


def region_pairs(
    detections: Sequence[Detection], measurements: ImageMeasurements | None
) -> list[RegionMeasurement]:
    """One RegionMeasurement per detection, in detection order (empty when the detection was not measured)."""
    by_det: dict[Detection, RegionMeasurement] = {}
    if measurements is not None:
        for r in measurements.regions:
            by_det.setdefault(r.detection, r)
    return [by_det.get(d, RegionMeasurement(detection=d)) for d in detections]


def tracking(source_uid: str, ctx: ResultContext, index: int, label: str) -> tuple[str, str]:
    """(Tracking Identifier, Tracking UID) of region ``index`` (1-based): deterministic."""
    return f"{label} region {index}", derived_uid("tracking", source_uid, ctx.model.version, str(index), label)


def closed_polyline(box: Box) -> np.ndarray:
    """Box corners (x, y) in SCOORD pixel coordinates, first point repeated last."""
    x0, y0, x1, y1 = box.as_tuple()
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def table_move_text(region: RegionMeasurement, patient_position: str) -> str | None:
    """Human-readable direction to move the patient (and table) so the region centre reaches the isocenter."""
    lat = region.get(QuantityKind.ISO_OFFSET_LATERAL)
    ver = region.get(QuantityKind.ISO_OFFSET_VERTICAL)
    if lat is None and ver is None:
        return None
    parts = []
    if lat is not None:
        side = "right" if lat.value > 0 else "left"  # + offset: centre left of iso -> move patient to the right
        parts.append(f"move the patient {abs(lat.value):.1f} mm toward the patient's {side}")
    if ver is not None:
        way = "anterior" if ver.value > 0 else "posterior"  # + offset: centre posterior of iso
        text = f"{abs(ver.value):.1f} mm {way}"
        pos = patient_position.upper()
        if pos.endswith("S") and pos in ("HFS", "FFS"):
            text += f" (supine: {'raise' if ver.value > 0 else 'lower'} the table {abs(ver.value):.1f} mm)"
        elif pos in ("HFP", "FFP"):
            text += f" (prone: {'lower' if ver.value > 0 else 'raise'} the table {abs(ver.value):.1f} mm)"
        parts.append(("and " if parts else "move the patient ") + text)
    return "to centre the region at the isocenter: " + " ".join(parts)


def _library(header: SourceHeader) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library with one entry (TID 1601/1602 plus the TID 1603/1604 items the header supports)."""
    ds = header.dataset
    rel = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    modality = CodedConcept(ds.Modality, "DCM", _MODALITY_MEANING.get(ds.Modality, ds.Modality))
    items: list = [hd.sr.CodeContentItem(name=codes.DCM.Modality, value=modality, relationship_type=rel)]
    if "FrameOfReferenceUID" in ds:
        items.append(hd.sr.UIDRefContentItem(codes.DCM.FrameOfReferenceUID, ds.FrameOfReferenceUID,
                                             relationship_type=rel))
    px = C.unit("{pixels}")
    items.append(hd.sr.NumContentItem(codes.DCM.PixelDataRows, int(ds.Rows), px, relationship_type=rel))
    items.append(hd.sr.NumContentItem(codes.DCM.PixelDataColumns, int(ds.Columns), px, relationship_type=rel))
    mm = C.unit("mm")
    if header.is_projection:
        if header.patient_orientation is not None:
            items.append(hd.sr.TextContentItem(codes.DCM.PatientOrientationRow, header.patient_orientation[0],
                                               relationship_type=rel))
            items.append(hd.sr.TextContentItem(codes.DCM.PatientOrientationColumn,
                                               header.patient_orientation[1], relationship_type=rel))
        spacing = ds.get("ImagerPixelSpacing")
    else:
        spacing = ds.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2:
        items.append(hd.sr.NumContentItem(codes.DCM.HorizontalPixelSpacing, float(spacing[1]), mm,
                                          relationship_type=rel))
        items.append(hd.sr.NumContentItem(codes.DCM.VerticalPixelSpacing, float(spacing[0]), mm,
                                          relationship_type=rel))
    if not header.is_projection:
        if "SliceThickness" in ds and ds.SliceThickness not in (None, ""):
            items.append(hd.sr.NumContentItem(codes.DCM.SliceThickness, float(ds.SliceThickness), mm,
                                              relationship_type=rel))
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if ipp is not None and len(ipp) == 3:
            for name, v in zip((codes.DCM.ImagePositionPatientX, codes.DCM.ImagePositionPatientY,
                                codes.DCM.ImagePositionPatientZ), ipp, strict=True):
                items.append(hd.sr.NumContentItem(name, float(v), mm, relationship_type=rel))
        if iop is not None and len(iop) == 6:
            unit = CodedConcept("{-1:1}", "UCUM", "{-1:1}")
            names = (codes.DCM.ImageOrientationPatientRowX, codes.DCM.ImageOrientationPatientRowY,
                     codes.DCM.ImageOrientationPatientRowZ, codes.DCM.ImageOrientationPatientColumnX,
                     codes.DCM.ImageOrientationPatientColumnY, codes.DCM.ImageOrientationPatientColumnZ)
            for name, v in zip(names, iop, strict=True):
                items.append(hd.sr.NumContentItem(name, float(v), unit, relationship_type=rel))
    image = hd.sr.ImageContentItem(
        name=CodedConcept("260753009", "SCT", "Source"),
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    image.ContentSequence = hd.sr.ContentSequence(items)
    group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup,
                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence([image])
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary,
                                         relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


_MODALITY_MEANING = {"CT": "Computed Tomography", "CR": "Computed Radiography", "DX": "Digital Radiography",
                     "RG": "Radiographic imaging", "RF": "Radio Fluoroscopy", "XA": "X-Ray Angiography",
                     "MG": "Mammography", "IO": "Intra-oral Radiography", "PX": "Panoramic X-Ray"}


def algorithm_identification(ctx: ResultContext) -> hd.sr.AlgorithmIdentification:
    params = list(ctx.algorithm_parameters)
    if ctx.model.weights_sha256:
        params.append(f"weights_sha256={ctx.model.weights_sha256}")
    family = C.ARTIFICIAL_INTELLIGENCE if "intelligence" in ctx.model.family.lower() else None
    return hd.sr.AlgorithmIdentification(
        name=ctx.model.name, version=ctx.model.version, parameters=params or None, family=family
    )


def build_groups(
    header: SourceHeader,
    detections: Sequence[Detection],
    measurements: ImageMeasurements | None,
    ctx: ResultContext,
    *,
    with_3d: bool,
) -> list:
    """Image-level group plus the per-region groups (2D, and 3D when ``with_3d`` and a polygon exists)."""
    ds = header.dataset
    algo = algorithm_identification(ctx)
    source_uid = str(ds.SOPInstanceUID)
    regions = region_pairs(detections, measurements)
    groups: list = []

    # Image-level TID 1501 group: only when there is no region (TID 1500 needs one group) or image quantities.
    # (pixelmed's DicomSRValidator validates every group as TID 1410 when exactly one group has a SCOORD, so an
    # image group beside a single 2D region would be reported as an error; see docs/RESULTS.md.)
    image_quantities = list(measurements.image_quantities) if measurements is not None else []
    if not regions or image_quantities:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid("tracking-image", source_uid, ctx.model.version), identifier="image"
                ),
                algorithm_id=algo,
                measurements=[_measurement(C.QuantitySpec(C.REGION_COUNT, "1"), len(detections), None)]
                + [_quantity_measurement(q) for q in image_quantities],
                source_images=[hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, source_uid)],
            )
        )

    no_mm_reason = _no_mm_reason(measurements)
    position = str(ds.get("PatientPosition", "") or "")
    for index, region in enumerate(regions, start=1):
        det = region.detection
        ident, uid = tracking(source_uid, ctx, index, det.label)
        site = C.concept(det.concept)
        ms: list[hd.sr.Measurement] = []
        kinds = {q.kind for q in region.quantities}
        if QuantityKind.CONFIDENCE not in kinds:
            ms.append(_measurement(C.spec_for(QuantityKind.CONFIDENCE), round(det.score * 100.0, 4), False))
        ms += [_quantity_measurement(q) for q in region.quantities]
        notes: list[hd.sr.QualitativeEvaluation] = []
        if QuantityKind.BOX_WIDTH not in kinds:
            ms.append(_measurement(C.PIXEL_WIDTH, det.box.width, False))
            ms.append(_measurement(C.PIXEL_HEIGHT, det.box.height, False))
            notes.append(_text(C.NOT_COMPUTED, f"box size in mm: {no_mm_reason}; size given in pixels"))
        for kind, reason in region.unavailable:
            notes.append(_text(C.NOT_COMPUTED, f"{kind.value}: {reason}"))
        for q in region.quantities:
            if q.method:
                notes.append(_text(C.NOTE, f"{q.kind.value}: {q.method}"))
        move = table_move_text(region, position)
        if move:
            notes.append(_text(C.TABLE_MOVE, move))
        common = dict(
            finding_type=site,
            finding_sites=[hd.sr.FindingSite(site)],
            finding_category=CodedConcept.from_code(codes.SCT.AnatomicalStructure),
            algorithm_id=algo,
            geometric_purpose=C.BOUNDED_BY,
        )
        region_2d = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=closed_polyline(det.box),
            source_image=hd.sr.SourceImageForRegion(ds.SOPClassUID, source_uid),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=ident),
                referenced_region=region_2d,
                measurements=ms,
                qualitative_evaluations=notes or None,
                **common,
            )
        )
        # no Frame of Reference UID (anonymised source): the 2-D SCOORD stays, the SCOORD3D is left out (the
        # measurement layer already removed the polygon and noted why; issue 19)
        if with_3d and region.polygon_lps_mm is not None and ds.get("FrameOfReferenceUID"):
            for_uid = ds.get("FrameOfReferenceUID")
            pts = np.asarray(region.polygon_lps_mm, dtype=float)
            if pts.shape != (4, 3):
                raise ValueError(f"polygon_lps_mm must have 4 (x, y, z) points, got shape {pts.shape}")
            pts = np.vstack([pts, pts[:1]])
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=ident),
                    referenced_region=hd.sr.ImageRegion3D(
                        graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
                        graphic_data=pts,
                        frame_of_reference_uid=for_uid,
                    ),
                    **common,
                )
            )
    return groups


def _no_mm_reason(measurements: ImageMeasurements | None) -> str:
    if measurements is None:
        return "no measurements supplied"
    if measurements.geometry_level == GeometryLevel.PIXELS:
        return "no pixel spacing in the source"
    return "not computed"


def image_notes(header: SourceHeader, measurements: ImageMeasurements | None) -> list[tuple[CodedConcept, str]]:
    """Image-level notes: geometry level, isocenter source, what could not be computed, header sanitising."""
    notes: list[tuple[CodedConcept, str]] = []
    if measurements is not None:
        notes.append((C.GEOMETRY_LEVEL, measurements.geometry_level.value))
        if measurements.isocenter_source:
            notes.append((C.ISOCENTER_SOURCE, measurements.isocenter_source))
        notes += [(C.NOTE, n) for n in measurements.notes]
    else:
        notes.append((C.NOTE, "no measurements computed: region sizes in pixels only"))
    notes += [(C.NOTE, n) for n in header.notes]
    return notes


def _qualitative_container(notes: list[tuple[CodedConcept, str]]) -> hd.sr.ContainerContentItem:
    """TID 1500 row "Qualitative Evaluations" (UMLS C0034375) holding TEXT notes."""
    container = hd.sr.ContainerContentItem(name=C.QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=name, value=text[:TEXT_MAX],
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for name, text in notes
    ])
    return container


def _report(header: SourceHeader, groups: list, ctx: ResultContext,
            notes: list[tuple[CodedConcept, str]] | None = None) -> hd.sr.MeasurementReport:
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=ctx.device_uid,
            name=ctx.model.name,
            manufacturer_name=ctx.manufacturer,
            model_name=ctx.manufacturer_model_name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=C.procedure_for(header.modality),
        imaging_measurements=groups,
    )
    root = report[0]
    root.ContentSequence.insert(len(root.ContentSequence) - 1, _library(header))
    if notes:
        root.ContentSequence.append(_qualitative_container(notes))
    return report


def contributing_equipment(ctx: ResultContext) -> hd.ContributingEquipment:
    eq = hd.ContributingEquipment(
        manufacturer=ctx.manufacturer,
        purpose_of_reference=C.PROCESSING_EQUIPMENT,
        manufacturer_model_name=ctx.manufacturer_model_name,
        software_versions=f"{ctx.model.name} {ctx.model.version}",
        device_serial_number=ctx.device_serial_number,
        institution_name=ctx.institution_name,
        contribution_description=f"region detection by {ctx.model.name} {ctx.model.version}"[:64],
    )
    eq.DeviceUID = ctx.device_uid
    return eq


def finish(obj: Dataset, ctx: ResultContext, description: str, uses_private_codes: bool) -> Dataset:
    """Attributes every result object gets: device identity, series description, private scheme entry."""
    obj.SeriesDescription = description[:64]
    obj.ManufacturerModelName = ctx.manufacturer_model_name
    obj.SoftwareVersions = ctx.software_version
    obj.DeviceSerialNumber = ctx.device_serial_number
    if ctx.station_name:
        obj.StationName = ctx.station_name
    if uses_private_codes:
        obj.CodingSchemeIdentificationSequence = [C.coding_scheme_identification()]
    return obj


def sr_document(cls: type, header: SourceHeader, report: hd.sr.MeasurementReport, **kwargs: object) -> Dataset:
    """Build the SR document around ``report`` without highdicom re-copying and re-parsing the whole tree.

    highdicom's SR constructor deep-copies the content, parses it back and searches it for evidence (~2/3 of the
    SR's write time). The tree here was just built from highdicom templates, so the document is constructed around
    a shell (root plus the image library, which references the source image, so the evidence is the same) and
    the full tree is attached afterwards, both as the dataset's Content Sequence and as the parsed content.
    """
    root = report[0]
    shell = Dataset()
    for elem in root:
        if elem.keyword != "ContentSequence":
            shell.add(elem)
    shell.ContentSequence = [i for i in root.ContentSequence
                             if i.ValueType == "CONTAINER" and i.ConceptNameCodeSequence[0].CodeValue == "111028"]
    doc = cls(evidence=[header.dataset], content=shell, **kwargs)
    doc.ContentSequence = root.ContentSequence
    doc._content = hd.sr.ContentSequence([root], is_root=True)  # what highdicom's .content returns
    return doc


def document_arguments(header: SourceHeader, ctx: ResultContext, kind: str) -> dict[str, object]:
    """Keyword arguments of highdicom's SR constructor for result ``kind`` ("sr" or "plain_sr")."""
    uids = result_uids(str(header.dataset.SOPInstanceUID), ctx.model.version, kind)
    return dict(
        series_instance_uid=uids["SeriesInstanceUID"],
        series_number=ctx.series_number(kind),
        sop_instance_uid=uids["SOPInstanceUID"],
        instance_number=1,
        manufacturer=ctx.manufacturer,
        institution_name=ctx.institution_name,
        institutional_department_name=ctx.institutional_department_name,
        is_complete=True,
        contributing_equipment=[contributing_equipment(ctx)],
    )


# Source image classes whose SRs the fast path is tested to write identically (tests/test_sr.py).
# Any other class (e.g. multi-frame, where highdicom's image-region rules depend on the class) is written by the
# highdicom builder.
FAST_PATH_SOURCE_CLASSES = frozenset((
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
))


def fast_document(cls: type, header: SourceHeader, content: bytes, **kwargs: object) -> Dataset:
    """The SR document with ``content`` (encoded root Content Sequence items) as its content tree.

    highdicom builds the document level (patient, study, series, equipment, SOP common, evidence, flags) around
    a shell root whose only child references the source image (so the evidence is the same as for the full
    tree); the shell's Content Sequence is then replaced by ``content`` as one raw element. A plain pydicom
    Dataset is returned (highdicom's parsed ``.content`` would describe the shell): read it with ``read_sr``.
    The dataset is marked as Explicit VR Little Endian so that pydicom writes the raw tree as it is.
    """
    ds = header.dataset
    shell = hd.sr.ContainerContentItem(name=codes.cid7021.ImagingMeasurementReport, template_id="1500")
    shell.ContentSequence = [hd.sr.ImageContentItem(
        name=CodedConcept("260753009", "SCT", "Source"),
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )]
    doc = cls(evidence=[ds], content=shell, **kwargs)
    out = Dataset(doc)  # shares the elements; drops highdicom's view of the shell
    out.file_meta = doc.file_meta
    out.preamble = doc.preamble
    out[_CONTENT_SEQUENCE] = RawDataElement(_CONTENT_SEQUENCE, "SQ", len(content), content, 0, False, True)
    if out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian:
        out.set_original_encoding(False, True, out._character_set)
    return out


_CONTENT_SEQUENCE = Tag(0x0040A730)


def write_sr(
    source: Dataset,
    detections: Sequence[Detection],
    measurements: ImageMeasurements | None,
    ctx: ResultContext,
    *,
    header: SourceHeader | None = None,
    reference: bool = False,
) -> Dataset:
    """Comprehensive 3D SR (TID 1500) of ``detections`` on ``source``; same patient and study, new series.

    The content tree is encoded directly (``sr_writer.sr_content``); ``reference=True`` builds it from highdicom
    template objects instead (slow; the same bytes, kept as the reference the fast path is tested against).
    """
    header = header or read_source_header(source)
    notes = image_notes(header, measurements)
    if reference or str(header.dataset.SOPClassUID) not in FAST_PATH_SOURCE_CLASSES:
        groups = build_groups(header, detections, measurements, ctx, with_3d=True)
        sr: Dataset = sr_document(hd.sr.Comprehensive3DSR, header, _report(header, groups, ctx, notes),
                                  **document_arguments(header, ctx, "sr"))
    else:
        from sr_writer.sr_content import content_sequence  # imports this module

        content = content_sequence(header, detections, measurements, ctx, notes, with_3d=True)
        sr = fast_document(hd.sr.Comprehensive3DSR, header, content, **document_arguments(header, ctx, "sr"))
    return finish(sr, ctx, f"AI regions SR ({ctx.model.name} {ctx.model.version})", True)


# ---------------------------------------------------------------------------------------------------- reading


@dataclass
class ReadQuantity:
    value: float
    unit: str
    estimated: bool | None  # None: no Measured/Estimated flag


@dataclass
class ReadRegion:
    """One region read back from our SR (joined 2D and 3D groups of one Tracking UID)."""

    tracking_uid: str
    tracking_identifier: str
    label: str
    finding_site: CodedConcept | None
    box: Box | None = None
    polygon_lps_mm: tuple[tuple[float, float, float], ...] | None = None
    frame_of_reference_uid: str | None = None
    quantities: dict[QuantityKind, ReadQuantity] = field(default_factory=dict)
    pixel_size: tuple[float, float] | None = None  # (width, height) in pixels, when no mm size was written
    not_computed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source_sop_instance_uid: str = ""


COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _texts(container: Dataset) -> list[tuple[CodedConcept, str]]:
    """(concept name, text) of the TEXT children of a measurement group container."""
    out = []
    for item in container.ContentSequence:
        if item.ValueType == "TEXT" and item.RelationshipType == "CONTAINS":
            out.append((CodedConcept.from_dataset(item.ConceptNameCodeSequence[0]), str(item.TextValue)))
    return out


def read_sr(ds: Dataset) -> list[ReadRegion]:
    """Regions of one of our SRs (Comprehensive 3D or plain Comprehensive), parsed with highdicom."""
    sop = str(ds.SOPClassUID)
    if sop == COMPREHENSIVE_3D_SR:
        sr = hd.sr.Comprehensive3DSR.from_dataset(ds, copy=True)
    elif sop == COMPREHENSIVE_SR:
        sr = hd.sr.ComprehensiveSR.from_dataset(ds, copy=True)
    else:
        raise ValueError(f"not a Comprehensive (3D) SR: SOP Class UID {sop}")
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("SR content is not a TID 1500 Measurement Report")
    regions: dict[str, ReadRegion] = {}
    for group in report.get_planar_roi_measurement_groups():
        uid = str(group.tracking_uid)
        ident = str(group.tracking_identifier or "")
        site = group.finding_sites[0].value if group.finding_sites else None
        r = regions.setdefault(uid, ReadRegion(uid, ident, ident.split(" ")[0], site))
        roi = group.roi
        if isinstance(roi, hd.sr.ImageRegion3D):
            pts = np.asarray(roi.value, dtype=float)[:-1]
            r.polygon_lps_mm = tuple((float(x), float(y), float(z)) for x, y, z in pts)
            r.frame_of_reference_uid = str(roi.ReferencedFrameOfReferenceUID)
        elif isinstance(roi, hd.sr.ImageRegion):
            pts = np.asarray(roi.value, dtype=float)
            r.box = Box(float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()),
                        float(pts[:, 1].max()))
            r.source_sop_instance_uid = str(roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        pixel_w = pixel_h = None
        for m in group.get_measurements():
            unit_value = str(m.unit.value)
            method = m.method
            estimated = None if method is None else method == C.ESTIMATED
            if unit_value == "{pixels}":
                if m.name == C.PIXEL_WIDTH.name:
                    pixel_w = float(m.value)
                elif m.name == C.PIXEL_HEIGHT.name:
                    pixel_h = float(m.value)
                continue
            kind = C.kind_for(m.name, unit_value)
            if kind is None:
                continue
            r.quantities[kind] = ReadQuantity(float(m.value), unit_value, estimated)
        if pixel_w is not None and pixel_h is not None:
            r.pixel_size = (pixel_w, pixel_h)
        for name, text in _texts(group[0]):
            (r.not_computed if name == C.NOT_COMPUTED else r.notes).append(text)
    return list(regions.values())


def read_image_notes(ds: Dataset) -> list[str]:
    """TEXT notes of the report's Qualitative Evaluations container (geometry level, isocenter source, what
    could not be computed and why, header attributes dropped or derived). Items other than plain processing notes
    are prefixed with their concept, e.g. "Geometry level of measurements: patient"."""
    out: list[str] = []
    for item in ds.ContentSequence:
        name = item.ConceptNameCodeSequence[0]
        if item.ValueType == "CONTAINER" and name.CodeValue == C.QUALITATIVE_EVALUATIONS.value:
            for child in item.ContentSequence:
                if child.ValueType != "TEXT":
                    continue
                concept = child.ConceptNameCodeSequence[0]
                is_note = concept.CodeValue == C.NOTE.value and concept.CodingSchemeDesignator == C.NOTE.scheme_designator
                out.append(str(child.TextValue) if is_note else f"{concept.CodeMeaning}: {child.TextValue}")
    return out
