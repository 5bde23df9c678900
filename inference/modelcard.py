"""Model cards: the YAML file beside each model that says what it is, what it expects and how to read its outputs.

A card is validated completely when it is loaded (``load_card``), including the SHA-256 of every weights file it
names, so a malformed card or a swapped weights file is refused when the node starts, never at the first image.
Errors are ``ModelCardError`` with ``file:line`` and the offending key. The format (every key) is documented in
docs/MODELS.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import yaml

from inference.types import CodedConcept, ModelIdentity

MODELS_DIR = Path(__file__).resolve().parent / "models"

# Output decoders known to inference.postprocess (aliases map onto one decoder there).
OUTPUT_FORMATS = (
    "yolov5",  # Ultralytics YOLOv5: (B, N, 5 + C) = cx, cy, w, h, objectness, class scores
    "yolov8",  # Ultralytics YOLOv8/v11: (B, 4 + C, N) or transposed (B, N, 4 + C), no objectness
    "yolov11",  # alias of yolov8
    "yolo_end2end",  # Ultralytics exports with NMS in the graph (YOLOv10, nms=True): (B, K, 6) x1 y1 x2 y2 score class
    "yolov4",  # darknet YOLOv4 via pytorch-YOLOv4: boxes (B, N, 1, 4) normalised x1y1x2y2, confs (B, N, C)
    "ssd",  # torchvision SSD300 / SSDlite: boxes (N, 4) x1y1x2y2, labels (N,), scores (N,)
    "ssdlite",  # alias of ssd
    "retinanet",  # torchvision RetinaNet, same outputs
    "faster_rcnn",  # torchvision Faster R-CNN, same outputs
    "efficient_nms",  # TensorRT EfficientNMS plugin: num_dets, det_boxes, det_scores, det_classes
)
TORCHVISION_FORMATS = ("ssd", "ssdlite", "retinanet", "faster_rcnn")

# Preprocessing ops and their allowed parameters (implemented in inference.preprocessing).
PREPROCESSING_OPS: dict[str, frozenset[str]] = {
    "modality_lut": frozenset(),  # stored value -> modality value (Rescale Slope/Intercept or Modality LUT)
    "voi": frozenset({"mode", "low", "high", "center", "width"}),  # -> [0, 1]
    "invert_monochrome1": frozenset(),  # 1 - x when Photometric Interpretation is MONOCHROME1
    "invert": frozenset(),  # unconditional 1 - x (for data known to be stored inverted)
    "equalize_histogram": frozenset({"bins"}),  # global histogram equalisation of [0, 1] values
    "crop_to_content": frozenset({"threshold", "margin"}),  # crop to the bounding box of values > threshold
    "flip": frozenset({"horizontal", "vertical"}),
    "resize": frozenset({"interpolation"}),  # stretch to the model input (aspect ratio not kept)
    "letterbox": frozenset({"pad_value", "interpolation", "align"}),  # keep aspect ratio, pad
    "normalize": frozenset({"mean", "std", "scale"}),  # x * scale, then (x - mean) / std per channel
}
GEOMETRIC_OPS = ("crop_to_content", "flip", "resize", "letterbox")
VOI_MODES = ("header", "percentile", "minmax", "fixed")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area")


class ModelCardError(ValueError):
    """A card that cannot be used; the message starts with ``file:line`` and names the key."""


@dataclass(frozen=True)
class ClassSpec:
    """One output class: its name (e.g. ``CHEST``) and coded finding site (and optional finding type)."""

    name: str
    finding_site: CodedConcept
    finding_type: CodedConcept | None = None


@dataclass(frozen=True)
class InputSpec:
    """The model's input tensor. ``batch`` None means a dynamic batch dimension."""

    height: int
    width: int
    channels: int = 1
    layout: str = "NCHW"  # NCHW | NHWC
    dtype: str = "float32"  # float32 | float16 | uint8
    name: str | None = None  # input tensor name; None: the model's first input
    batch: int | None = None


@dataclass(frozen=True)
class PreprocessStep:
    """One step of the pixel pipeline, e.g. ``PreprocessStep('voi', {'mode': 'percentile', 'low': 1, 'high': 99})``."""

    op: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class OutputSpec:
    """How to read the raw outputs. ``names``: output tensor names in the order the decoder expects (optional)."""

    format: str
    names: tuple[str, ...] | None = None
    label_offset: int = 0  # subtracted from raw class ids (torchvision: 1, label 0 is background)
    normalized: bool = False  # boxes in [0, 1] of the input size rather than input pixels
    layout: str = "auto"  # yolov8: auto | channels_first (B, 4+C, N) | channels_last (B, N, 4+C)
    box_coding: str = "corners"  # efficient_nms: corners (x1 y1 x2 y2) | center (cx cy w h)


@dataclass(frozen=True)
class IntendedUse:
    modalities: tuple[str, ...] = ()  # e.g. ("CT", "CR", "DX"); empty: any
    views: tuple[str, ...] = ()  # e.g. ("frontal", "lateral"); empty: any


@dataclass(frozen=True)
class GateSpec:
    """Cascade: this (heavy) model runs only when the gate model fires with one of ``classes`` >= ``threshold``."""

    model: str
    classes: tuple[str, ...] | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    weights: Path  # absolute
    weights_sha256: str
    classes: tuple[ClassSpec, ...]
    input: InputSpec
    preprocessing: tuple[PreprocessStep, ...]
    output: OutputSpec
    score_threshold: float = 0.25
    nms_iou: float = 0.45
    max_detections_per_class: int = 100
    max_detections: int = 300
    intended: IntendedUse = IntendedUse()
    family: str = "Artificial Intelligence"
    metrics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    gate: GateSpec | None = None
    torch_weights: Path | None = (
        None  # TorchScript (.pt) or torch.export program (.pt2) for the torch backend
    )
    torch_weights_sha256: str = ""
    description: str = ""
    license: str = ""
    path: Path | None = None  # the card file itself

    @property
    def output_format(self) -> str:
        return self.output.format

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.name, self.version, self.family, self.weights_sha256)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_card_path(path_or_builtin: str | Path) -> Path:
    """``builtin:NAME`` -> ``inference/models/NAME/card.yaml``; a directory -> its ``card.yaml``; else the path."""
    text = str(path_or_builtin)
    if text.startswith("builtin:"):
        name = text[len("builtin:") :]
        if not name or "/" in name or name.startswith("."):
            raise ModelCardError(f"{text}: invalid builtin model name")
        path = MODELS_DIR / name / "card.yaml"
        if not path.is_file():
            known = (
                sorted(p.parent.name for p in MODELS_DIR.glob("*/card.yaml")) if MODELS_DIR.is_dir() else []
            )
            raise ModelCardError(f"{text}: no builtin model {name!r} (known: {', '.join(known) or 'none'})")
        return path
    path = Path(text)
    if path.is_dir():
        path = path / "card.yaml"
    if not path.is_file():
        raise ModelCardError(f"{path}: model card not found")
    return path


class _Reader:
    """Validates a parsed card, reporting ``file:line`` from the YAML node tree."""

    def __init__(self, path: Path, root_node: yaml.Node | None) -> None:
        self.path = path
        self.root = root_node

    def line(self, keys: tuple[Any, ...]) -> int:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else 1
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                nxt = None
                for k, v in node.value:
                    if k.value == key:
                        line, nxt = k.start_mark.line + 1, v
                        break
                if nxt is None:
                    return line
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def fail(self, keys: tuple[Any, ...], message: str) -> ModelCardError:
        where = ".".join(str(k) for k in keys) or "<card>"
        return ModelCardError(f"{self.path}:{self.line(keys)}: {where}: {message}")

    def mapping(self, value: Any, keys: tuple[Any, ...]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(keys, f"expected a mapping, got {type(value).__name__}")
        return value

    def unknown(
        self, value: Mapping[str, Any], allowed: set[str] | frozenset[str], keys: tuple[Any, ...]
    ) -> None:
        extra = sorted(str(k) for k in value if k not in allowed)
        if extra:
            raise self.fail(keys + (extra[0],), f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def text(self, d: Mapping[str, Any], key: str, keys: tuple[Any, ...], default: str | None = None) -> str:
        if key not in d or d[key] is None:
            if default is None:
                raise self.fail(keys + (key,), "required key missing")
            return default
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise self.fail(keys + (key,), f"expected text, got {type(v).__name__}")
        s = str(v).strip()
        if not s and default is None:
            raise self.fail(keys + (key,), "must not be empty")
        return s

    def number(
        self,
        d: Mapping[str, Any],
        key: str,
        keys: tuple[Any, ...],
        default: float | None = None,
        lo: float = -math.inf,
        hi: float = math.inf,
        integer: bool = False,
    ) -> float:
        if key not in d or d[key] is None:
            if default is None:
                raise self.fail(keys + (key,), "required key missing")
            return default
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
            kind = "an integer" if integer else "a number"
            raise self.fail(keys + (key,), f"expected {kind}, got {v!r}")
        if not (lo <= v <= hi) or not math.isfinite(v):
            raise self.fail(keys + (key,), f"{v!r} out of range [{lo}, {hi}]")
        return v

    def strings(self, d: Mapping[str, Any], key: str, keys: tuple[Any, ...]) -> tuple[str, ...] | None:
        if key not in d or d[key] is None:
            return None
        v = d[key]
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise self.fail(keys + (key,), "expected a list of non-empty strings")
        return tuple(v)

    def concept(self, value: Any, keys: tuple[Any, ...]) -> CodedConcept:
        d = self.mapping(value, keys)
        self.unknown(d, {"code", "scheme", "meaning"}, keys)
        code = self.text(d, "code", keys)
        scheme = self.text(d, "scheme", keys)
        meaning = self.text(d, "meaning", keys)
        if scheme in ("SCT", "SRT") and not code.isdigit():
            raise self.fail(keys + ("code",), f"SNOMED CT codes are digits, got {code!r}")
        return CodedConcept(code, scheme, meaning)

    def weights(
        self, d: Mapping[str, Any], key: str, hash_key: str, required: bool
    ) -> tuple[Path | None, str]:
        if key not in d or d[key] is None:
            if required:
                raise self.fail((key,), "required key missing")
            if d.get(hash_key):
                raise self.fail((hash_key,), f"given without {key}")
            return None, ""
        rel = self.text(d, key, ())
        p = Path(rel)
        path = (p if p.is_absolute() else self.path.parent / p).resolve()
        expected = self.text(d, hash_key, ()).lower()
        if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
            raise self.fail((hash_key,), "expected 64 hexadecimal digits (SHA-256)")
        if not path.is_file():
            raise self.fail((key,), f"weights file not found: {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise self.fail(
                (hash_key,),
                f"SHA-256 mismatch for {path.name}: card says {expected}, file has {actual} "
                "(wrong or modified weights file; refusing to load)",
            )
        return path, expected


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _preprocessing(r: _Reader, raw: Any) -> tuple[PreprocessStep, ...]:
    keys: tuple[Any, ...] = ("preprocessing",)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise r.fail(keys, "expected a list of steps")
    steps: list[PreprocessStep] = []
    for i, item in enumerate(raw):
        k = keys + (i,)
        if isinstance(item, str):
            op, params = item, cast(Any, {})
        elif isinstance(item, Mapping) and len(item) == 1:
            op, params = next(iter(item.items()))
            params = {} if params is None else params
            if not isinstance(params, Mapping):
                raise r.fail(k + (op,), "step parameters must be a mapping")
        else:
            raise r.fail(k, "a step is a name or a one-key mapping {op: {params}}")
        if op not in PREPROCESSING_OPS:
            raise r.fail(k, f"unknown preprocessing op {op!r} (known: {', '.join(PREPROCESSING_OPS)})")
        r.unknown(params, PREPROCESSING_OPS[op], k + (op,))
        pk = k + (op,)
        if op == "voi":
            mode = params.get("mode", "header")
            if mode not in VOI_MODES:
                raise r.fail(pk + ("mode",), f"unknown VOI mode {mode!r} (known: {', '.join(VOI_MODES)})")
            lo = r.number(params, "low", pk, 1.0, 0.0, 100.0)
            hi = r.number(params, "high", pk, 99.0, 0.0, 100.0)
            if lo >= hi:
                raise r.fail(pk + ("low",), f"low percentile {lo} must be below high {hi}")
            if mode == "fixed":
                r.number(params, "center", pk)
                r.number(params, "width", pk, lo=1e-9)
        elif op == "equalize_histogram":
            r.number(params, "bins", pk, 256, 2, 65536, integer=True)
        elif op == "crop_to_content":
            r.number(params, "threshold", pk, 0.0, 0.0, 1.0)
            r.number(params, "margin", pk, 0, 0, 1e6, integer=True)
        elif op == "flip":
            for key in ("horizontal", "vertical"):
                if not isinstance(params.get(key, False), bool):
                    raise r.fail(pk + (key,), "expected true or false")
        elif op in ("resize", "letterbox"):
            interp = params.get("interpolation", "bilinear")
            if interp not in INTERPOLATIONS:
                raise r.fail(
                    pk + ("interpolation",), f"unknown interpolation {interp!r} ({', '.join(INTERPOLATIONS)})"
                )
            if op == "letterbox":
                r.number(params, "pad_value", pk, 0.0)
                if params.get("align", "center") not in ("center", "top_left"):
                    raise r.fail(pk + ("align",), "expected center or top_left")
        elif op == "normalize":
            for key in ("mean", "std"):
                v = params.get(key, [0.0] if key == "mean" else [1.0])
                v = [v] if isinstance(v, int | float) and not isinstance(v, bool) else v
                if (
                    not isinstance(v, list)
                    or not v
                    or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
                ):
                    raise r.fail(pk + (key,), "expected a number or a list of numbers (one per channel)")
                if key == "std" and any(x <= 0 for x in v):
                    raise r.fail(pk + (key,), "standard deviations must be > 0")
            r.number(params, "scale", pk, 1.0, lo=1e-12)
        steps.append(PreprocessStep(op, _freeze(params)))
    geometric = [s.op for s in steps if s.op in ("resize", "letterbox")]
    if len(geometric) > 1:
        raise r.fail(keys, f"at most one of resize/letterbox, got {geometric}")
    for i, s in enumerate(steps):
        if s.op == "normalize" and i != len(steps) - 1:
            raise r.fail(
                keys + (i,), "normalize must be the last step (it is applied after channel replication)"
            )
    return tuple(steps)


def parse_card(
    data: Any, path: Path, root_node: yaml.Node | None = None, check_weights: bool = True
) -> ModelCard:
    """Validate an already parsed card (``data``) read from ``path``; see ``load_card``."""
    r = _Reader(path, root_node)
    d = r.mapping(data, ())
    allowed = {
        "name", "version", "weights", "weights_sha256", "torch_weights", "torch_weights_sha256", "classes", "input",
        "preprocessing", "output_format", "output", "score_threshold", "nms_iou", "max_detections_per_class",
        "max_detections", "intended", "family", "metrics", "gate", "description", "license",
    }  # fmt: skip
    r.unknown(d, allowed, ())
    name = r.text(d, "name", ())
    version = r.text(d, "version", ())

    raw_classes = d.get("classes")
    if not isinstance(raw_classes, list) or not raw_classes:
        raise r.fail(("classes",), "expected a non-empty list of classes")
    classes: list[ClassSpec] = []
    for i, c in enumerate(raw_classes):
        k: tuple[Any, ...] = ("classes", i)
        cm = r.mapping(c, k)
        r.unknown(cm, {"name", "finding_site", "finding_type"}, k)
        cname = r.text(cm, "name", k)
        if "finding_site" not in cm:
            raise r.fail(
                k + ("finding_site",), "required key missing (a coded concept: code, scheme, meaning)"
            )
        site = r.concept(cm["finding_site"], k + ("finding_site",))
        ftype = r.concept(cm["finding_type"], k + ("finding_type",)) if cm.get("finding_type") else None
        if cname in (x.name for x in classes):
            raise r.fail(k + ("name",), f"duplicate class name {cname!r}")
        classes.append(ClassSpec(cname, site, ftype))

    ik: tuple[Any, ...] = ("input",)
    im = r.mapping(d.get("input"), ik)
    r.unknown(im, {"height", "width", "channels", "layout", "dtype", "name", "batch"}, ik)
    channels = int(r.number(im, "channels", ik, 1, integer=True))
    if channels not in (1, 3):
        raise r.fail(ik + ("channels",), f"expected 1 or 3, got {channels}")
    layout = r.text(im, "layout", ik, "NCHW").upper()
    if layout not in ("NCHW", "NHWC"):
        raise r.fail(ik + ("layout",), f"expected NCHW or NHWC, got {layout}")
    dtype = r.text(im, "dtype", ik, "float32")
    if dtype not in ("float32", "float16", "uint8"):
        raise r.fail(ik + ("dtype",), f"expected float32, float16 or uint8, got {dtype}")
    batch = im.get("batch")
    if batch in (None, "dynamic"):
        batch = None
    else:
        batch = int(r.number(im, "batch", ik, None, 1, 4096, integer=True))
    inp = InputSpec(
        height=int(r.number(im, "height", ik, None, 8, 8192, integer=True)),
        width=int(r.number(im, "width", ik, None, 8, 8192, integer=True)),
        channels=channels,
        layout=layout,
        dtype=dtype,
        name=r.text(im, "name", ik, "") or None,
        batch=batch,
    )

    preprocessing = _preprocessing(r, d.get("preprocessing"))

    fmt = r.text(d, "output_format", ())
    if fmt not in OUTPUT_FORMATS:
        raise r.fail(
            ("output_format",), f"unknown output format {fmt!r} (known: {', '.join(OUTPUT_FORMATS)})"
        )
    ok: tuple[Any, ...] = ("output",)
    om = r.mapping(d.get("output") or {}, ok)
    r.unknown(om, {"names", "label_offset", "normalized", "layout", "box_coding"}, ok)
    default_offset = 1 if fmt in TORCHVISION_FORMATS else 0
    out_layout = r.text(om, "layout", ok, "auto")
    if out_layout not in ("auto", "channels_first", "channels_last"):
        raise r.fail(ok + ("layout",), "expected auto, channels_first or channels_last")
    coding = r.text(om, "box_coding", ok, "corners")
    if coding not in ("corners", "center"):
        raise r.fail(ok + ("box_coding",), "expected corners or center")
    normalized = om.get("normalized", fmt == "yolov4")
    if not isinstance(normalized, bool):
        raise r.fail(ok + ("normalized",), "expected true or false")
    output = OutputSpec(
        format=fmt,
        names=r.strings(om, "names", ok),
        label_offset=int(r.number(om, "label_offset", ok, default_offset, 0, 1000, integer=True)),
        normalized=normalized,
        layout=out_layout,
        box_coding=coding,
    )

    intended = IntendedUse()
    if d.get("intended") is not None:
        nk: tuple[Any, ...] = ("intended",)
        nm = r.mapping(d["intended"], nk)
        r.unknown(nm, {"modalities", "views"}, nk)
        intended = IntendedUse(r.strings(nm, "modalities", nk) or (), r.strings(nm, "views", nk) or ())

    gate = None
    if d.get("gate") is not None:
        gk: tuple[Any, ...] = ("gate",)
        gm = r.mapping(d["gate"], gk)
        r.unknown(gm, {"model", "classes", "threshold"}, gk)
        thr = gm.get("threshold")
        gate = GateSpec(
            model=r.text(gm, "model", gk),
            classes=r.strings(gm, "classes", gk),
            threshold=None if thr is None else r.number(gm, "threshold", gk, None, 0.0, 1.0),
        )

    metrics = d.get("metrics") or {}
    r.mapping(metrics, ("metrics",))

    if check_weights:
        weights, sha = r.weights(d, "weights", "weights_sha256", required=True)
        tw, tsha = r.weights(d, "torch_weights", "torch_weights_sha256", required=False)
    else:  # only for tooling that writes cards before the weights exist
        weights, sha = path.parent / r.text(d, "weights", ()), r.text(d, "weights_sha256", ())
        tw, tsha = None, ""
    assert weights is not None

    return ModelCard(
        name=name,
        version=version,
        weights=weights,
        weights_sha256=sha,
        classes=tuple(classes),
        input=inp,
        preprocessing=preprocessing,
        output=output,
        score_threshold=float(r.number(d, "score_threshold", (), 0.25, 0.0, 1.0)),
        nms_iou=float(r.number(d, "nms_iou", (), 0.45, 0.0, 1.0)),
        max_detections_per_class=int(
            r.number(d, "max_detections_per_class", (), 100, 1, 100000, integer=True)
        ),
        max_detections=int(r.number(d, "max_detections", (), 300, 1, 100000, integer=True)),
        intended=intended,
        family=r.text(d, "family", (), "Artificial Intelligence"),
        metrics=_freeze(metrics),
        gate=gate,
        torch_weights=tw,
        torch_weights_sha256=tsha,
        description=r.text(d, "description", (), ""),
        license=r.text(d, "license", (), ""),
        path=path.resolve(),
    )


def load_card(path_or_builtin: str | Path) -> ModelCard:
    """Load and fully validate a card (``builtin:NAME``, a directory holding ``card.yaml``, or a YAML path).

    Checks every key, the class concepts, the preprocessing steps and the SHA-256 of the weights; raises
    ``ModelCardError`` (``file:line: key: message``) on the first problem.
    """
    path = resolve_card_path(path_or_builtin)
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ModelCardError(f"{path}:{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        raise ModelCardError(f"{path}:1: empty model card")
    return parse_card(data, path, node)
