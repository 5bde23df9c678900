"""Frontal + lateral CT localizers of one Frame of Reference: remember each view, combine them into 3-D offsets.

Worker processes are separate, and a frontal and a lateral scout of the same exam may be processed by different
workers, so the measurements of each localizer are kept on disk under ``<storage>/views/<FoR digest>/``. When a
localizer arrives and the other view of the same Frame of Reference was measured within ``max_age_s``, the two are
solved together (``inference.measure.combine_views``) and the newer image's isocenter offsets are replaced by the
combined, MEASURED ones (the single-frontal-view vertical offset is an estimate; the combined one is not).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from inference.measure import CombinedMeasurements, MeasuredImage, combine_views
from inference.types import QuantityKind, RegionMeasurement

log = logging.getLogger(__name__)

# Quantities of the newer view that the combined solution supersedes (per region, matched by label).
COMBINED_KINDS = (
    QuantityKind.ISO_OFFSET_LATERAL,
    QuantityKind.ISO_OFFSET_VERTICAL,
    QuantityKind.CENTER_X,
    QuantityKind.CENTER_Y,
    QuantityKind.EFFECTIVE_DIAMETER,
    QuantityKind.SSDE_FACTOR,
    QuantityKind.SSDE,
)
OTHER_VIEW = {"frontal": "lateral", "lateral": "frontal"}


class ViewStore:
    """Latest measured frontal and lateral localizer per Frame of Reference, on disk (atomic writes)."""

    def __init__(self, root: Path, max_age_s: float = 3600.0) -> None:
        self.root = Path(root)
        self.max_age_s = max_age_s
        self._last_prune = 0.0

    def _dir(self, frame_of_reference_uid: str) -> Path:
        return self.root / hashlib.sha256(frame_of_reference_uid.encode()).hexdigest()[:32]

    def remember(self, m: MeasuredImage) -> None:
        """Keep ``m`` as the latest of its view (frontal or lateral) for its Frame of Reference."""
        if not m.frame_of_reference_uid or m.view not in OTHER_VIEW:
            return
        d = self._dir(m.frame_of_reference_uid)
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".view-")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(m, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, d / f"{m.view}.pickle")
        if time.monotonic() - self._last_prune > 600:
            self._last_prune = time.monotonic()
            self.prune()

    def prune(self) -> int:
        """Delete stored views older than ``max_age_s`` (they can no longer be combined); returns how many."""
        removed = 0
        cutoff = time.time() - self.max_age_s
        for path in self.root.glob("*/*.pickle"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
                    if not any(path.parent.iterdir()):
                        path.parent.rmdir()
            except OSError:  # another worker got there first
                continue
        return removed

    def counterpart(self, m: MeasuredImage) -> MeasuredImage | None:
        """The other view of ``m``'s Frame of Reference, if one was measured recently enough."""
        if not m.frame_of_reference_uid or m.view not in OTHER_VIEW:
            return None
        path = self._dir(m.frame_of_reference_uid) / f"{OTHER_VIEW[m.view]}.pickle"
        try:
            if time.time() - path.stat().st_mtime > self.max_age_s:
                return None
            with open(path, "rb") as fh:
                other = pickle.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            log.warning("ignoring an unreadable stored view %s: %s", path.name, exc)
            return None
        if not isinstance(other, MeasuredImage) or other.frame_of_reference_uid != m.frame_of_reference_uid:
            return None
        return other


def merge_combined(m: MeasuredImage, combined: CombinedMeasurements) -> MeasuredImage:
    """``m`` with each region's offsets, centre (x, y) and size-based dose factors replaced by the combined ones."""
    other_uid = (combined.lateral_sop_instance_uid if m.sop_instance_uid == combined.frontal_sop_instance_uid
                 else combined.frontal_sop_instance_uid)
    regions: list[RegionMeasurement] = []
    for rm in m.regions:
        cr = combined.region(rm.detection.label)
        if cr is None or not cr.quantities:
            regions.append(rm)
            continue
        new = {q.kind: q for q in cr.quantities if q.kind in COMBINED_KINDS}
        kept = tuple(q for q in rm.quantities if q.kind not in new)
        unavailable = tuple((k, why) for k, why in rm.unavailable if k not in new)
        regions.append(replace(rm, quantities=kept + tuple(new[k] for k in COMBINED_KINDS if k in new),
                               unavailable=unavailable))
    note = (f"isocenter offsets combined with the {OTHER_VIEW[m.view]} localizer {other_uid} of the same Frame of "
            f"Reference (isocenter: {combined.isocenter_source})")
    return replace(m, regions=tuple(regions), notes=(*m.notes, note, *combined.notes))


def combine_with_stored(m: MeasuredImage, store: ViewStore) -> tuple[MeasuredImage, CombinedMeasurements | None]:
    """Remember ``m``; if the other view is known, return ``m`` merged with the combined solution."""
    other = store.counterpart(m)
    store.remember(m)
    if other is None:
        return m, None
    frontal, lateral = (m, other) if m.view == "frontal" else (other, m)
    try:
        combined = combine_views(frontal, lateral)
    except ValueError as exc:
        log.info("views not combined: %s", exc)
        return m, None
    return merge_combined(m, combined), combined
