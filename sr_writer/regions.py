"""Per-region facts every result writer shares: detection/measurement pairing, tracking identity, the box as a
closed polyline and the table move in words.

Coordinates: boxes in SCOORD pixel coordinates ((0, 0) the top-left corner of the first pixel, x to the right);
offsets in mm as ``inference.types.QuantityKind`` defines their signs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.types import Box, Detection, ImageMeasurements, Quantity, QuantityKind, RegionMeasurement
from nodecore.uids import derived_uid
from sr_writer import codes as C
from sr_writer.context import ResultContext


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
    """(our tracking identifier, Tracking UID) of region ``index`` (1-based): deterministic."""
    return f"{label} region {index}", derived_uid("tracking", source_uid, ctx.model.version, str(index), label)


def display_names(detections: Sequence[Detection]) -> list[str]:
    """The name a viewer shows for each region: its label, numbered only when the label occurs more than once
    ("CHEST", or "SPINE 1" and "SPINE 2")."""
    counts: dict[str, int] = {}
    for d in detections:
        counts[d.label] = counts.get(d.label, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for d in detections:
        seen[d.label] = seen.get(d.label, 0) + 1
        out.append(d.label if counts[d.label] == 1 else f"{d.label} {seen[d.label]}")
    return out


def closed_polyline(box: Box) -> np.ndarray:
    """Box corners (x, y) in SCOORD pixel coordinates, clockwise from the top-left, first point repeated last."""
    x0, y0, x1, y1 = box.as_tuple()
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def checked_spec(q: Quantity) -> C.QuantitySpec:
    """How ``q`` is written; ValueError when it is not in the unit the SR writes its kind in."""
    spec = C.spec_for(q.kind)
    if q.unit != spec.unit:
        raise ValueError(f"quantity {q.kind} in {q.unit!r}; the SR writes it in {spec.unit!r} (convert first)")
    return spec


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
        if pos in ("HFS", "FFS"):
            text += f" (supine: {'raise' if ver.value > 0 else 'lower'} the table {abs(ver.value):.1f} mm)"
        elif pos in ("HFP", "FFP"):
            text += f" (prone: {'lower' if ver.value > 0 else 'raise'} the table {abs(ver.value):.1f} mm)"
        parts.append(("and " if parts else "move the patient ") + text)
    return "to centre the region at the isocenter: " + " ".join(parts)
