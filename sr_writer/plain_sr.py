"""Plain Comprehensive SR (SOP Class 1.2.840.10008.5.1.4.1.1.88.33) for viewers that draw only that form, such as
Orthanc's Stone viewer: the same TID 1500 tree as the main SR (``sr_writer.sr_content``), without the SCOORD3D
twins, and with the image under each SCOORD named "Original Source" (DCM 111040)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset

from inference.types import Detection, ImageMeasurements
from sr_writer.context import ResultContext
from sr_writer.source import SourceHeader, read_source_header
from sr_writer.sr import document_arguments, fast_document, finish, image_notes
from sr_writer.sr_content import content_sequence


def write_plain_sr(
    source: Dataset,
    detections: Sequence[Detection],
    measurements: ImageMeasurements | None,
    ctx: ResultContext,
    *,
    header: SourceHeader | None = None,
) -> Dataset:
    """Plain Comprehensive SR of ``detections`` on ``source``; same patient and study, new series."""
    header = header or read_source_header(source)
    content = content_sequence(header, detections, measurements, ctx, image_notes(header, measurements),
                               with_3d=False)
    sr = fast_document(hd.sr.ComprehensiveSR, header, content, **document_arguments(header, ctx, "plain_sr"))
    return finish(sr, ctx, f"AI regions SR, 2D ({ctx.model.name} {ctx.model.version})", True)
