"""Plain Comprehensive SR (SOP Class 1.2.840.10008.5.1.4.1.1.88.33) for viewers that draw only that form, such as
Orthanc's Stone viewer: the same TID 1500 tree as the main SR, without the SCOORD3D groups, and with the image
under each SCOORD named "Original Source" (DCM 111040)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from inference.types import Detection, ImageMeasurements
from sr_writer import codes as C
from sr_writer.context import ResultContext
from sr_writer.source import SourceHeader, read_source_header
from sr_writer.sr import (
    FAST_PATH_SOURCE_CLASSES,
    _report,
    build_groups,
    document_arguments,
    fast_document,
    finish,
    image_notes,
    sr_document,
)
from sr_writer.sr_content import content_sequence


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
    reference: bool = False,
) -> Dataset:
    """Plain Comprehensive SR of ``detections`` on ``source``; ``reference=True``: built from highdicom templates
    (the slow reference the fast path is tested against, see ``sr_writer.sr.write_sr``)."""
    header = header or read_source_header(source)
    notes = image_notes(header, measurements)
    kwargs = document_arguments(header, ctx, "plain_sr")
    if reference or str(header.dataset.SOPClassUID) not in FAST_PATH_SOURCE_CLASSES:
        groups = build_groups(header, detections, measurements, ctx, with_3d=False)
        sr: Dataset = sr_document(hd.sr.ComprehensiveSR, header, _report(header, groups, ctx, notes), **kwargs)
        for item in sr.ContentSequence:
            _name_scoord_images(item)
    else:
        content = content_sequence(header, detections, measurements, ctx, notes, with_3d=False)
        sr = fast_document(hd.sr.ComprehensiveSR, header, content, **kwargs)
    return finish(sr, ctx, f"AI regions SR, 2D ({ctx.model.name} {ctx.model.version})", True)
