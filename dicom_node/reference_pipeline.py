"""The reference pipeline: decode -> detect -> measure -> write SR / SC / GSPS / plain SR.

Registered as pipeline ``reference`` in ``dicom_node.pipeline.PIPELINES``. One instance lives in each worker
process for one configuration generation: every model that a ``reference`` route uses is loaded and warmed up in
the constructor (gated models of a cascade load when their gate first fires), so the node reports ready only with
warm models.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pydicom

from dicom_node.pipeline import PipelineError, PipelineOutcome
from inference.cascade import models_to_preload, run_cascade
from inference.engine import DetectorPool
from inference.measure import measure_image
from inference.orientation import canonical_orientation
from inference.preprocessing import PreprocessingError, modality_pixels, stored_pixels
from inference.types import ModelIdentity, QuantityKind
from inference.views import ViewStore, combine_with_stored
from nodecore.config_schema import NodeConfig, Route
from nodecore.received import ReceivedObject
from sr_writer import ResultContext, write_results

log = logging.getLogger(__name__)

PIPELINE_NAME = "reference"


class ReferencePipeline:
    """Detect body regions, measure them in mm and write the configured result objects."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.pool = DetectorPool(_with_thread_budget(config))
        self.views = ViewStore(config.node.storage / "views")
        wanted: list[str] = []
        for route in config.routes:
            if route.pipeline is not None and route.pipeline.name == PIPELINE_NAME:
                for name in models_to_preload(route.pipeline.detectors, self.pool):
                    if name not in wanted:
                        wanted.append(name)
        t0 = time.perf_counter()
        self.pool.preload(wanted)
        log.info("reference pipeline ready: models %s loaded and warm in %.2f s", wanted, time.perf_counter() - t0)

    def process(self, obj: ReceivedObject, route: Route) -> PipelineOutcome:
        spec = route.pipeline
        if spec is None or not spec.detectors:
            raise PipelineError(f"route {route.name!r} has no detectors for the reference pipeline")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            ds = pydicom.dcmread(obj.path)
        except Exception as exc:  # pydicom raises many types for damaged files
            return PipelineOutcome(errors=[f"cannot parse {obj.path.name}: {type(exc).__name__}: {exc}"])
        try:
            stored = stored_pixels(ds)
        except Exception as exc:  # decoders report every plugin's reason in the message
            return PipelineOutcome(errors=[f"pixel data could not be decoded: {exc}"])
        if stored.ndim == 3 and stored.shape[-1] not in (3, 4):  # multi-frame: the first frame
            stored = stored[0]
        timings["decode_ms"] = (time.perf_counter() - t0) * 1e3

        t1 = time.perf_counter()
        orientation = canonical_orientation(ds, assumed=spec.options.get("radiograph_orientation"))
        cascade = run_cascade(ds, spec.detectors, self.pool, pixels=stored, orientation=orientation)
        detections = list(cascade.detections)
        timings["detect_ms"] = (time.perf_counter() - t1) * 1e3

        t2 = time.perf_counter()
        notes: list[str] = list(orientation.notes)
        if not orientation.is_identity:
            notes.append(f"detection ran on the head-up view ({orientation.name} of the stored image, from"
                         f" {orientation.source}); regions are given in the stored pixels")
        try:
            modality_values = modality_pixels(ds, stored) if stored.ndim == 2 else None
        except PreprocessingError as exc:  # malformed Rescale Slope/Intercept: reported, not raised
            modality_values = None
            notes.append(f"{exc}: pixel-value quantities (water-equivalent diameter) not computed")
        measurements = measure_image(ds, detections, pixels=modality_values, settings=self.config.measurement,
                                     orientation=orientation)
        if notes:
            measurements = replace(measurements, notes=tuple(dict.fromkeys((*measurements.notes, *notes))))
        measurements, combined = combine_with_stored(measurements, self.views)
        timings["measure_ms"] = (time.perf_counter() - t2) * 1e3

        t3 = time.perf_counter()
        model = self._identity(spec.detectors[0].model, detections)
        ctx = ResultContext(
            model=model,
            kinds=tuple(k for k in ("sr", "sc", "gsps", "plain_sr") if k in route.outputs),
            algorithm_parameters=tuple(_parameters(spec.detectors)),
            sc_compression=route.sc_compression,
            sc_max_size=route.sc_max_size,
        )
        datasets = write_results(ds, detections, measurements, ctx.kinds, ctx, pixels=stored)
        timings["write_ms"] = (time.perf_counter() - t3) * 1e3
        return PipelineOutcome(
            datasets=datasets,
            detections=detections,
            measurements=measurements,
            summary={**_summary(detections, measurements, cascade, timings), "views_combined": combined is not None,
                     "orientation": {"operation": orientation.name, "from": orientation.source}},
        )

    def _identity(self, model_name: str, detections: list[Any]) -> ModelIdentity:
        if detections:
            return detections[0].model
        return self.pool.card(model_name).identity()

    def close(self) -> None:
        self.pool.close()


def _with_thread_budget(config: NodeConfig) -> dict[str, Any]:
    """Model specs whose ``options.threads`` defaults to cores / workers: each worker process runs its own models,
    and more intra-op threads than cores makes every worker slower (measured: docs/BENCHMARKS.md, engine)."""
    threads = max(1, (os.cpu_count() or 1) // max(1, config.node.workers))
    return {name: spec if "threads" in spec.options else replace(spec, options={**spec.options, "threads": threads})
            for name, spec in config.models.items()}


def _parameters(detectors: Any) -> list[str]:
    out: list[str] = []
    for d in detectors:
        for key in ("score_threshold", "nms_iou", "gate", "gate_threshold"):
            value = getattr(d, key)
            if value is not None:
                out.append(f"{d.model}.{key}={value}")
    return out


def _summary(detections: list[Any], measurements: Any, cascade: Any, timings: dict[str, float]) -> dict[str, Any]:
    """PHI-free facts for logs and `dicom-node status`: regions, scores, offsets (mm) and stage timings (ms)."""
    regions: list[dict[str, Any]] = []
    for rm in measurements.regions:
        entry: dict[str, Any] = {"label": rm.detection.label, "score": round(float(rm.detection.score), 3)}
        for kind in (QuantityKind.ISO_OFFSET_LATERAL, QuantityKind.ISO_OFFSET_VERTICAL, QuantityKind.ELLIPSE_AREA):
            q = rm.get(kind)
            if q is not None and np.isfinite(q.value):
                entry[str(kind)] = round(q.value, 1)
        regions.append(entry)
    return {
        "regions": regions,
        "geometry": str(measurements.geometry_level),
        "view": measurements.view,
        "models": [{"model": r.model, "ran": r.ran, "why": r.reason, **({"backend": r.backend} if r.backend else {})}
                   for r in cascade.runs],
        **{k: round(v, 1) for k, v in timings.items()},
    }

