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


# Inference backends a model may name (``models.<name>.backend``); ``inference.backends`` opens each of them.
MODEL_BACKENDS: tuple[str, ...] = (
    "auto",
    "tensorrt",
    "onnxruntime",
    "onnxruntime-cpu",
    "onnxruntime-cuda",
    "torch",
    "torch-cpu",
    "torch-cuda",
    "triton",
)


@dataclass(frozen=True)
class TritonSpec:
    """Where a ``backend: triton`` model runs: a Triton Inference Server (KServe v2 over gRPC or HTTP).

    ``servers``: URLs tried in order (``grpc://``, ``grpcs://`` (TLS), ``http://``, ``https://``); a server that
    fails is skipped for ``cooldown_s``. ``fallback``: ``fail`` (the job is retried later) or a local backend
    name (``onnxruntime``, ``auto``, ...) that runs the same card when no server answers. Preprocessing and the
    inverse transforms stay in the node (inference.triton).
    """

    servers: tuple[str, ...]
    model: str  # the model's name in the Triton repository
    version: str = ""  # "" = the server's version policy (latest)
    timeout_s: float = 10.0  # one inference request, network and queueing included
    connect_timeout_s: float = 2.0
    retry_for_s: float = 10.0  # fallback fail: keep trying the servers this long before the job is requeued
    cooldown_s: float = 5.0
    fallback: str = "fail"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # sent with every request (e.g. authorization)
    header_env: Mapping[str, str] = field(default_factory=dict)  # header -> environment variable with its value


@dataclass(frozen=True)
class ModelSpec:
    """A configured model: its card (path to a YAML file, or ``builtin:NAME`` for models shipped in the package)."""

    name: str
    card: str
    backend: str = "auto"  # one of MODEL_BACKENDS
    max_batch: int = 8
    max_wait_ms: float = 5.0
    # backend options, every key checked by the loader (dicom_node.config.model_option_keys): threads, precision,
    # opt_batch, engine_cache, calibration, workspace_mb, device, fp16, micro_batching
    options: Mapping[str, Any] = field(default_factory=dict)
    source: SourceLocation | None = None
    triton: TritonSpec | None = None  # set when backend is triton


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

    Matched on header attributes (e.g. Manufacturer, ManufacturerModelName, StationName) by
    ``nodecore.scanners.scanner_matches``; the first match wins.
    """

    match: Mapping[str, str]
    slope_mm_per_unit: float
    offset: float = 0.0
    source: SourceLocation | None = None


@dataclass(frozen=True)
class ScannerGeometry:
    """What a site knows about a scanner whose headers lack it (``measurement.options.scanner_geometry``).

    Used only where the header is silent, and every use is noted in the result. ``sod_mm`` / ``sid_mm``: source
    to isocenter / detector distance; ``frontal_view_position`` (AP | PA) and ``lateral_view_position`` (LL | RL):
    the tube side of the scanner's localizers. Matched like ``ScannerCalibration``; the first match wins.
    """

    match: Mapping[str, str]
    sod_mm: float | None = None
    sid_mm: float | None = None
    frontal_view_position: str = ""
    lateral_view_position: str = ""
    source: SourceLocation | None = None


@dataclass(frozen=True)
class RegionShape:
    """Shape model of a region's cross-section for single-view estimates (dimensionless unless stated).

    ``density``: mean water-equivalent density of the soft tissue on the central AP ray and ``bone_wepl_mm`` the
    extra water-equivalent path of the midline bone it crosses (AP = (WEPL - bone_wepl_mm) / density);
    ``centre_fraction``: height of the region's centre above the patient's back as a fraction of the
    AP thickness; ``aspect``: AP / LAT of the region's own structures (sets the half-depth used in the fan-beam
    silhouette model); ``posterior_mm``: when set, the centre height is ``posterior_mm + aspect * LAT / 2`` (a
    structure lying against the back, e.g. the rib cage) instead of ``centre_fraction * AP``.
    """

    density: float = 1.0
    centre_fraction: float = 0.5
    aspect: float = 0.75
    posterior_mm: float | None = None
    bone_wepl_mm: float = 0.0  # excess water-equivalent path of the midline bone (vertebra, sacrum), mm


# The numeric measurement knobs (``measurement.options``) and their defaults (inference.measure uses them).
MEASUREMENT_OPTION_DEFAULTS: Mapping[str, float] = {
    "table_pad_mm": 40.0,  # mattress between the table top and the patient's back
    "table_pad_sd_mm": 10.0,
    "table_height_sd_mm": 1.0,
    "relative_density_rel_sd": 0.08,  # relative standard uncertainty of the AP thickness model
    "lateral_position_sd_mm": 30.0,  # unknown lateral placement, for the lateral-view-only vertical offset
    "wed_calibration_rel_sd": 0.03,
    "central_fraction": 0.1,  # half-width (fraction of the box width) of the central columns for the AP WEPL
}


@dataclass(frozen=True)
class MeasurementSettings:
    """The ``measurement`` section. Source distances are NEVER invented: without SOD from the header or
    ``scanner_geometry``, sizes are reported at the detector plane or the isocenter plane as the geometry says.

    ``options``: the numeric knobs of ``MEASUREMENT_OPTION_DEFAULTS`` that the file sets; ``region_model``: per
    region label (HEAD, CHEST, ...) shape models replacing the built-in ones (``inference.measure``).
    """

    scanner_calibrations: tuple[ScannerCalibration, ...] = ()
    scanner_geometry: tuple[ScannerGeometry, ...] = ()
    region_model: Mapping[str, RegionShape] = field(default_factory=dict)
    options: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeConfig:
    path: Path | None
    node: NodeSettings
    destinations: Mapping[str, Destination]
    models: Mapping[str, ModelSpec]
    routes: tuple[Route, ...]
    default: DefaultAction = DefaultAction()
    measurement: MeasurementSettings = MeasurementSettings()
