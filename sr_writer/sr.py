"""TID 1500 Measurement Report (Comprehensive 3D SR) of detected regions, and reading it back.

The content tree is described once, in ``sr_writer.sr_content`` (its docstring lists it), and encoded there as
bytes; this module builds the document around it (patient, study, series, equipment, evidence: highdicom's SR
constructor around a shell root) and reads our SRs back through highdicom.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from typing import TypeVar

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from inference.types import Box, Detection, ImageMeasurements, QuantityKind
from nodecore.uids import result_uids
from sr_writer import codes as C
from sr_writer.context import ResultContext
from sr_writer.source import SourceHeader, read_source_header
from sr_writer.sr_content import TRACKING_PREFIX, content_sequence


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


D = TypeVar("D", bound=Dataset)


def finish(obj: D, ctx: ResultContext, description: str, uses_private_codes: bool) -> D:
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
    shell.ContentSequence = Sequence([hd.sr.ImageContentItem(
        name=CodedConcept("260753009", "SCT", "Source"),
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )])
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
    detections: SequenceOf[Detection],
    measurements: ImageMeasurements | None,
    ctx: ResultContext,
    *,
    header: SourceHeader | None = None,
) -> Dataset:
    """Comprehensive 3D SR (TID 1500) of ``detections`` on ``source``; same patient and study, new series."""
    header = header or read_source_header(source)
    content = content_sequence(header, detections, measurements, ctx, image_notes(header, measurements),
                               with_3d=True)
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
    """One region read back from our SR (one measurement group; its box in pixels and, in a 3D SR, LPS mm)."""

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
    display_name: str | None = None  # the Comment viewers label the region with ("CHEST", "SPINE 2")
    image_quantities: dict[QuantityKind, ReadQuantity] = field(default_factory=dict)  # carried by this group


COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _texts(container: Dataset) -> list[tuple[CodedConcept, str]]:
    """(concept name, text) of the TEXT children of a measurement group container."""
    out = []
    for item in container.ContentSequence:
        if item.ValueType == "TEXT" and item.RelationshipType == "CONTAINS":
            out.append((CodedConcept.from_dataset(item.ConceptNameCodeSequence[0]), str(item.TextValue)))
    return out


def _comment(container: Dataset) -> str | None:
    for item in container.ContentSequence:
        name = item.ConceptNameCodeSequence[0]
        if item.ValueType == "TEXT" and name.CodeValue == "121106" and name.CodingSchemeDesignator == "DCM":
            return str(item.TextValue)
    return None


def read_sr(ds: Dataset) -> list[ReadRegion]:
    """Regions of one of our SRs (Comprehensive 3D or plain Comprehensive), parsed with highdicom."""
    sop = str(ds.SOPClassUID)
    sr: hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR
    if sop == COMPREHENSIVE_3D_SR:
        sr = hd.sr.Comprehensive3DSR.from_dataset(ds, copy=True)
    elif sop == COMPREHENSIVE_SR:
        sr = hd.sr.ComprehensiveSR.from_dataset(ds, copy=True)
    else:
        raise ValueError(f"not a Comprehensive (3D) SR: SOP Class UID {sop}")
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("SR content is not a TID 1500 Measurement Report")
    regions: list[ReadRegion] = []
    imaging = [i for i in ds.ContentSequence if i.ValueType == "CONTAINER"
               and i.ConceptNameCodeSequence[0].CodeValue == "126010"]
    if not imaging or "ContentSequence" not in imaging[0]:  # nothing detected: the container is empty
        return regions
    for group in report.get_image_measurement_groups():
        ident = str(group.tracking_identifier or "")
        ident = ident[len(TRACKING_PREFIX):] if ident.startswith(TRACKING_PREFIX) else ident
        site = group.finding_sites[0].value if group.finding_sites else None
        r = ReadRegion(str(group.tracking_uid), ident, ident.split(" ")[0], site)
        r.display_name = _comment(group[0])
        pixel_w = pixel_h = None
        for m in group.get_measurements():
            for child in m[0].get("ContentSequence", []):
                if child.RelationshipType != "INFERRED FROM":
                    continue
                if child.ValueType == "SCOORD" and r.box is None:
                    pts = np.asarray(child.GraphicData, dtype=float).reshape(-1, 2)
                    r.box = Box(float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()),
                                float(pts[:, 1].max()))
                    r.source_sop_instance_uid = str(
                        child.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                elif child.ValueType == "SCOORD3D" and r.polygon_lps_mm is None:
                    pts = np.asarray(child.GraphicData, dtype=float).reshape(-1, 3)[:-1]
                    r.polygon_lps_mm = tuple((float(x), float(y), float(z)) for x, y, z in pts)
                    r.frame_of_reference_uid = str(child.ReferencedFrameOfReferenceUID)
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
            target = r.image_quantities if kind == QuantityKind.DIAPHRAGM_Z else r.quantities
            target[kind] = ReadQuantity(float(m.value), unit_value, estimated)
        if pixel_w is not None and pixel_h is not None:
            r.pixel_size = (pixel_w, pixel_h)
        for name, text in _texts(group[0]):
            if name == C.NOT_COMPUTED:
                r.not_computed.append(text)
            elif name.value != "121106":
                r.notes.append(text)
        regions.append(r)
    return regions


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
