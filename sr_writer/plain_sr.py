"""Plain Comprehensive SR (SOP Class 1.2.840.10008.5.1.4.1.1.88.33) for viewers that draw only that form, such as
Orthanc's Stone viewer: the same TID 1500 tree as the main SR, without the SCOORD3D groups, and with the image
under each SCOORD named "Original Source" (DCM 111040)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from dicom_node.uids import result_uids
from inference.types import Detection, ImageMeasurements
from sr_writer import codes as C
from sr_writer.context import ResultContext
from sr_writer.source import SourceHeader, read_source_header
from sr_writer.sr import _report, build_groups, contributing_equipment, finish, image_notes, sr_document


def _name_scoord_images(item: Dataset) -> None:
    """Rename the IMAGE child of every SCOORD to DCM 111040 "Original Source" (in place, recursively)."""
    for child in item.get("ContentSequence", []):
        if item.get("ValueType") == "SCOORD" and child.ValueType == "IMAGE":
            child.ConceptNameCodeSequence = [C.ORIGINAL_SOURCE]
        _name_scoord_images(child)


def write_plain_sr(
    source: Dataset,
    detections: Sequence[Detection],
    measurements: ImageMeasurements | None,
    ctx: ResultContext,
    *,
    header: SourceHeader | None = None,
) -> hd.sr.ComprehensiveSR:
    header = header or read_source_header(source)
    uids = result_uids(str(header.dataset.SOPInstanceUID), ctx.model.version, "plain_sr")
    groups = build_groups(header, detections, measurements, ctx, with_3d=False)
    sr = sr_document(
        hd.sr.ComprehensiveSR,
        header,
        _report(header, groups, ctx, image_notes(header, measurements)),
        series_instance_uid=uids["SeriesInstanceUID"],
        series_number=ctx.series_number("plain_sr"),
        sop_instance_uid=uids["SOPInstanceUID"],
        instance_number=1,
        manufacturer=ctx.manufacturer,
        institution_name=ctx.institution_name,
        institutional_department_name=ctx.institutional_department_name,
        is_complete=True,
        contributing_equipment=[contributing_equipment(ctx)],
    )
    for item in sr.ContentSequence:
        _name_scoord_images(item)
    return finish(sr, ctx, f"AI regions SR, 2D ({ctx.model.name} {ctx.model.version})", True)
