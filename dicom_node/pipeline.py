"""The seam between the node and the processing: a pipeline takes a received object and returns result datasets.

A pipeline is looked up by the name in a route's ``pipeline.name`` (see ``PIPELINES``) and built once per worker
process with the node configuration; ``process`` is then called for every job routed to it. Pipelines must be
deterministic: result UIDs derive from the source SOP Instance UID, the model version and the output kind
(``nodecore.uids``), so a re-run replaces rather than duplicates.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["PIPELINES", "Pipeline", "PipelineError", "PipelineOutcome", "ReceivedObject", "build_pipeline"]

from pydicom.dataset import Dataset

from inference.types import Detection, ImageMeasurements
from nodecore.config_schema import NodeConfig, Route
from nodecore.received import ReceivedObject


@dataclass
class PipelineOutcome:
    """What a pipeline produced for one object.

    ``datasets``: result objects to send (SR, SC, GSPS, ...), each with deterministic UIDs.
    ``errors``: clear, PHI-free messages for what failed (the job ends in error when non-empty and no datasets).
    ``summary``: small JSON-serialisable facts for `dicom-node status` and logs (no PHI).
    """

    datasets: list[Dataset] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    measurements: ImageMeasurements | None = None
    errors: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


class Pipeline(Protocol):
    def process(self, obj: ReceivedObject, route: Route) -> PipelineOutcome: ...


class PipelineError(Exception):
    """A job-level failure with a message that is safe to log (no PHI)."""


# name -> "module:factory"; the factory takes the NodeConfig and returns a Pipeline.
PIPELINES: dict[str, str] = {
    "reference": "dicom_node.reference_pipeline:ReferencePipeline",
    "decode": "dicom_node.decode_pipeline:DecodePipeline",
}


def build_pipeline(name: str, config: NodeConfig) -> Pipeline:
    """Instantiate the pipeline registered under ``name`` (raises KeyError with the known names)."""
    try:
        target = PIPELINES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline {name!r}; known: {', '.join(sorted(PIPELINES))}") from None
    module_name, _, attr = target.partition(":")
    factory: Callable[[NodeConfig], Pipeline] = getattr(importlib.import_module(module_name), attr)
    return factory(config)
