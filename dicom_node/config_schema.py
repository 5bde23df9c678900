"""Typed, immutable configuration of a running node (what `config.py` builds from YAML).

Every object here is frozen: a SIGHUP reload builds a whole new ``NodeConfig`` and swaps one reference, so a
half-applied configuration never exists. ``SourceLocation`` records where in the YAML a value came from, so
errors and `dicom-node route` explanations can say file:line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class SourceLocation:
    file: str
    line: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Caller:
    """An allowed calling AE title, optionally pinned to a host (IP address or name resolved at load time)."""

    ae_title: str
    host: str | None = None


@dataclass(frozen=True)
class Timeouts:
    """Seconds."""

    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0
    connection: float = 10.0  # outbound TCP connect


@dataclass(frozen=True)
class RetentionPolicy:
    """How long finished work stays on disk (days; 0 = forever). Only jobs whose outbound items are ALL sent are
    eligible: nothing pending, sending or dead-lettered is ever deleted (``dicom_node.retention``).

    ``keep_objects_days``: received objects of jobs that ended done or dropped; ``keep_failed_days``: received
    objects of jobs that ended in error (kept for a re-run); ``keep_results_days``: result files (SR, SC, GSPS).
    Job and outbound rows are pruned once every file they refer to is past its retention. ``interval_s``: seconds
    between retention passes.
    """

    keep_objects_days: float = 7.0
    keep_results_days: float = 7.0
    keep_failed_days: float = 7.0
    interval_s: float = 3600.0


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "DICOMNODE"
    bind: str = "0.0.0.0"
    port: int = 11112
    storage: Path = Path("/var/lib/dicom-node")
    max_associations: int = 16
    timeouts: Timeouts = Timeouts()
    require_called_ae: bool = True
    allowed_callers: tuple[Caller, ...] = ()  # empty: any caller
    # SOP Class UIDs accepted for storage; anything else is refused at negotiation.
    sop_classes: tuple[str, ...] = ()
    # Transfer syntax UIDs accepted; empty means every syntax the node can decode.
    transfer_syntaxes: tuple[str, ...] = ()
    min_free_disk_mb: float = 512.0
    duplicate_policy: Literal["replace", "keep", "reject"] = "replace"
    workers: int = 2
    log_level: str = "INFO"
    debug_phi: bool = False  # PHI (names, IDs, birth dates) appears in logs only when an admin sets this
    metrics_port: int | None = None  # Prometheus text endpoint (/metrics, /healthz); None: not served
    metrics_bind: str = "127.0.0.1"
    retention: RetentionPolicy = RetentionPolicy()
    # a job whose worker process dies this many times is ended in error instead of being run again
    max_worker_deaths_per_job: int = 2


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient outbound failures (seconds)."""

    initial_delay_s: float = 2.0
    max_delay_s: float = 300.0
    multiplier: float = 2.0
    max_attempts: int = 50  # after this many transient failures the item goes to the dead letter queue


@dataclass(frozen=True)
class Destination:
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae: str = "DICOMNODE"
    retry: RetryPolicy = RetryPolicy()
    max_pdu: int = 0
    source: SourceLocation | None = None
    # parallel outbound associations at most (a backlog opens more, up to this cap; SR-first order is kept)
    max_associations: int = 4


@dataclass(frozen=True)
class ModelSpec:
    """A configured model: its card (path to a YAML file, or ``builtin:NAME`` for models shipped in the package)."""

    name: str
    card: str
    backend: str = "auto"  # auto | tensorrt | onnxruntime | onnxruntime-cuda | torch
    max_batch: int = 8
    max_wait_ms: float = 5.0
    options: Mapping[str, Any] = field(default_factory=dict)
    source: SourceLocation | None = None


@dataclass(frozen=True)
class DetectorSpec:
    """One detector of a route's pipeline, with per-route overrides of the card's thresholds.

    ``gate``: name of a light model that must fire first (cascade); the heavy model is loaded on first use.
    """

    model: str
    score_threshold: float | None = None
    nms_iou: float | None = None
    classes: tuple[str, ...] | None = None  # restrict to these class names
    gate: str | None = None
    gate_classes: tuple[str, ...] | None = None
    gate_threshold: float | None = None


@dataclass(frozen=True)
class PipelineSpec:
    name: str = "reference"  # registered pipeline (see dicom_node.pipeline.PIPELINES)
    detectors: tuple[DetectorSpec, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)


OUTPUT_KINDS = ("sr", "sc", "gsps", "plain_sr")


class Matcher(Protocol):
    """A compiled match expression. ``explain`` returns (matched, human-readable reasons with file:line)."""

    def explain(self, ds: Dataset, calling_ae: str) -> tuple[bool, list[str]]: ...


@dataclass(frozen=True)
class Route:
    name: str
    match: Matcher
    pipeline: PipelineSpec | None  # None: no processing (forward only)
    outputs: frozenset[str]  # subset of OUTPUT_KINDS
    destinations: tuple[str, ...]
    forward_original: bool = False
    source: SourceLocation | None = None
    sc_compression: str = "jpeg"  # jpeg | jpeg-ls | jpeg2000 | none (sr_writer.sc.SC_COMPRESSIONS)
    sc_max_size: int = 0  # longest side of the secondary capture (px); 0: the compression's default


@dataclass(frozen=True)
class DefaultAction:
    """What happens to an object no route matches."""

    action: Literal["drop", "forward"] = "drop"
    destinations: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScannerCalibration:
    """Localizer pixel value -> water-equivalent path length (mm): wepl = slope * (value - offset).

    Matched on header attributes (e.g. Manufacturer, ManufacturerModelName, StationName); first match wins.
    """

    match: Mapping[str, str]
    slope_mm_per_unit: float
    offset: float = 0.0
    source: SourceLocation | None = None


@dataclass(frozen=True)
class MeasurementSettings:
    scanner_calibrations: tuple[ScannerCalibration, ...] = ()
    # Source to isocenter distance (mm) assumed when SOD is absent is NEVER invented: such sizes are reported at
    # the detector plane or the isocenter plane as the geometry says. Extra knobs go in options.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeConfig:
    path: Path | None
    node: NodeSettings
    destinations: Mapping[str, Destination]
    models: Mapping[str, ModelSpec]
    routes: tuple[Route, ...]
    default: DefaultAction = DefaultAction()
    measurement: MeasurementSettings = MeasurementSettings()
