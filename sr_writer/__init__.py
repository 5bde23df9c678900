"""Result objects sent back to the PACS: TID 1500 SR (primary), secondary capture, GSPS, plain Comprehensive SR.

``write_results`` is what the pipeline calls; the single writers are exposed for tools and tests. Every object has
the source's patient and study, its own series per kind, and UIDs from ``nodecore.uids.result_uids`` (source SOP
Instance UID, model version, kind), so re-processing replaces rather than duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from inference.types import Detection, ImageMeasurements
from sr_writer.context import OUTPUT_KINDS, ResultContext
from sr_writer.gsps import write_gsps
from sr_writer.plain_sr import write_plain_sr
from sr_writer.sc import write_sc
from sr_writer.source import SourceHeader, read_source_header
from sr_writer.sr import ReadQuantity, ReadRegion, read_image_notes, read_sr, write_sr

__all__ = [
    "OUTPUT_KINDS",
    "ReadQuantity",
    "ReadRegion",
    "ResultContext",
    "SourceHeader",
    "read_image_notes",
    "read_source_header",
    "read_sr",
    "write_gsps",
    "write_plain_sr",
    "write_results",
    "write_sc",
    "write_sr",
]


def write_results(
    source: Dataset,
    detections: Sequence[Detection],
    measurements: ImageMeasurements | None,
    kinds: Iterable[str],
    ctx: ResultContext,
    *,
    pixels: np.ndarray | None = None,
    reference: bool = False,
) -> list[Dataset]:
    """Result datasets for ``kinds`` (subset of ``OUTPUT_KINDS``), in the order sr, sc, gsps, plain_sr.

    ``pixels``: the decoded stored values of the source (rows x columns) when the caller has them; the secondary
    capture needs them (decoded from ``source`` otherwise) and the GSPS uses them for its window.
    ``reference``: build the GSPS entirely from highdicom objects (slow; the same dataset, for tests and
    benchmarks).
    Raises ValueError with a precise message on bad input (unknown kind, mismatching measurements, undecodable
    pixels for a secondary capture).
    """
    wanted = list(dict.fromkeys(kinds))
    unknown = [k for k in wanted if k not in OUTPUT_KINDS]
    if unknown:
        raise ValueError(f"unknown output kinds {unknown}; known: {', '.join(OUTPUT_KINDS)}")
    if measurements is not None and measurements.sop_instance_uid != str(source.get("SOPInstanceUID", "")):
        raise ValueError("measurements belong to another image (SOP Instance UID differs from the source's)")
    header = read_source_header(source)
    out: list[Dataset] = []
    for kind in OUTPUT_KINDS:
        if kind not in wanted:
            continue
        if kind == "sr":
            out.append(write_sr(source, detections, measurements, ctx, header=header))
        elif kind == "sc":
            out.append(write_sc(source, detections, measurements, ctx, pixels=pixels, header=header))
        elif kind == "gsps":
            out.append(write_gsps(source, detections, measurements, ctx, pixels=pixels, header=header,
                                  reference=reference))
        else:
            out.append(write_plain_sr(source, detections, measurements, ctx, header=header))
    return out
