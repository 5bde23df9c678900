"""Several detectors on one image, and gate -> heavy cascades.

A route lists ``DetectorSpec``s. A spec with a ``gate`` (or whose card names one) runs its model only when the
gate model has fired on the image: a detection of one of ``gate_classes`` (any class when unset) with a score of at
least ``gate_threshold`` (the gate card's score threshold when unset). The gate runs once per image however many
specs share it, and the heavy model is loaded by the ``DetectorPool`` only when its gate first fires. Pixels are
decoded once and shared by every detector.

Each spec's result is recorded in ``CascadeOutcome.runs`` (ran or skipped, and why) so a pipeline can say what
was not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from inference.engine import DetectorPool
from inference.orientation import Orientation
from inference.preprocessing import stored_pixels
from inference.types import Detection
from nodecore.config_schema import DetectorSpec


@dataclass(frozen=True)
class DetectorRun:
    """What happened to one DetectorSpec on one image."""

    model: str
    ran: bool
    reason: str  # "ran", "gate X did not fire (...)", "modality MR not intended (...)"
    detections: tuple[Detection, ...] = ()
    gate: str | None = None
    seconds: float = 0.0
    backend: str = ""  # what ran it: a backend name, or for triton the server / the local fallback


@dataclass(frozen=True)
class CascadeOutcome:
    detections: tuple[Detection, ...]
    runs: tuple[DetectorRun, ...]
    gate_results: tuple[tuple[str, tuple[Detection, ...]], ...] = ()


def models_to_preload(specs: Sequence[DetectorSpec], pool: DetectorPool) -> list[str]:
    """Models a worker loads before it reports ready: every ungated detector and every gate (not gated models)."""
    names: list[str] = []
    for spec in specs:
        gate = _gate_of(spec, pool)[0]
        for name in ([gate] if gate else []) + ([] if gate else [spec.model]):
            if name not in names:
                names.append(name)
    return names


def _gate_of(
    spec: DetectorSpec, pool: DetectorPool
) -> tuple[str | None, tuple[str, ...] | None, float | None]:
    if spec.gate:
        return spec.gate, spec.gate_classes, spec.gate_threshold
    card_gate = pool.card(spec.model).gate
    if card_gate is not None:
        return (
            card_gate.model,
            spec.gate_classes if spec.gate_classes is not None else card_gate.classes,
            spec.gate_threshold if spec.gate_threshold is not None else card_gate.threshold,
        )
    return None, None, None


def _intended(ds: Dataset, pool: DetectorPool, model: str) -> str | None:
    """None when the image is an intended input of ``model``, else why not."""
    modalities = pool.card(model).intended.modalities
    modality = str(ds.get("Modality", "")) if isinstance(ds, Dataset) else ""
    if modalities and modality and modality not in modalities:
        return f"modality {modality} not intended for {model} (card: {', '.join(modalities)})"
    return None


def run_cascade(
    ds: Dataset, specs: Sequence[DetectorSpec], pool: DetectorPool, *, pixels: np.ndarray | None = None,
    orientation: Orientation | None = None,
) -> CascadeOutcome:
    """Run every spec on ``ds`` (gates first, once each); detections in ORIGINAL pixels, in spec order.

    ``orientation``: the turn to the head-up view (default: from the header, ``inference.orientation``)."""
    import time

    if pixels is None and specs:
        pixels = stored_pixels(ds)
    gate_cache: dict[tuple[str, float | None], tuple[Detection, ...]] = {}
    runs: list[DetectorRun] = []
    for spec in specs:
        gate, gate_classes, gate_threshold = _gate_of(spec, pool)
        if (why := _intended(ds, pool, spec.model)) is not None:
            runs.append(DetectorRun(spec.model, False, why, gate=gate))
            continue
        if gate:
            key = (gate, gate_threshold)
            if key not in gate_cache:
                gate_cache[key] = tuple(pool.get(gate).detect(
                    ds, pixels, score_threshold=gate_threshold, orientation=orientation))
            thr = gate_threshold if gate_threshold is not None else pool.card(gate).score_threshold
            fired = [
                d
                for d in gate_cache[key]
                if d.score >= thr and (gate_classes is None or d.label in gate_classes)
            ]
            if not fired:
                wanted = ", ".join(gate_classes) if gate_classes else "any class"
                runs.append(
                    DetectorRun(
                        spec.model, False, f"gate {gate} did not fire ({wanted} >= {thr:g})", gate=gate
                    )
                )
                continue
        t0 = time.perf_counter()
        detector = pool.get(spec.model)
        dets = detector.detect(
            ds, pixels, score_threshold=spec.score_threshold, nms_iou=spec.nms_iou, classes=spec.classes,
            orientation=orientation,
        )
        runs.append(DetectorRun(spec.model, True, "ran", tuple(dets), gate, time.perf_counter() - t0,
                                detector.backend.served_by()))  # fmt: skip
    detections = tuple(d for r in runs for d in r.detections)
    gates = tuple((g, dets) for (g, _), dets in gate_cache.items())
    return CascadeOutcome(detections, tuple(runs), gates)


def run_detectors(
    ds: Dataset,
    detector_specs: Sequence[DetectorSpec],
    registry: DetectorPool,
    pixels: np.ndarray | None = None,
) -> list[Detection]:
    """All detections of ``detector_specs`` on ``ds`` (see ``run_cascade`` for the per-spec record)."""
    return list(run_cascade(ds, detector_specs, registry, pixels=pixels).detections)
