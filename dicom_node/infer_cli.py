"""`dicom-node infer` (run a detector on one DICOM file) and `dicom-node build-engines` (pre-build TensorRT engines).

``infer`` prints detections in ORIGINAL pixel coordinates (SCOORD: (0, 0) = top-left corner of the first pixel)
and, when inference.measure is available and the geometry allows, the measurements in patient mm. No PHI is
printed (no names, IDs or birth dates).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import sys
import time
from pathlib import Path
from typing import Any

from nodecore.config_schema import MeasurementSettings, ModelSpec, NodeConfig


def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="DICOM file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model name from --config, or a builtin model (default: reference)")
    src.add_argument("--card", help="path to a model card (card.yaml) or builtin:NAME")
    p.add_argument("--config", type=Path, help="node configuration (models, measurement settings)")
    p.add_argument("--backend", default=None, help="auto | tensorrt | onnxruntime | onnxruntime-cuda | torch | triton (needs the model's triton section in --config)")
    p.add_argument("--score-threshold", type=float, default=None, help="override the card's score threshold")
    p.add_argument("--nms-iou", type=float, default=None, help="override the card's NMS IoU threshold")
    p.add_argument("--classes", nargs="+", default=None, help="only these class names")
    p.add_argument("--no-measure", action="store_true", help="detections only (no geometry/mm measurements)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _load_config(path: Path | None) -> NodeConfig | None:
    if path is None:
        return None
    from dicom_node.config import load_config

    return load_config(path)


def _model_spec(args: argparse.Namespace, config: NodeConfig | None) -> ModelSpec:
    if args.card:
        spec = ModelSpec(name=Path(str(args.card)).stem, card=str(args.card))
    else:
        name = args.model or "reference"
        if config is not None and name in config.models:
            spec = config.models[name]
        elif config is not None and args.model:
            known = ", ".join(sorted(config.models)) or "none"
            raise KeyError(f"model {name!r} is not in {args.config} (configured: {known})")
        else:
            spec = ModelSpec(name=name, card=f"builtin:{name}")
    backend = args.backend or spec.backend
    return dataclasses.replace(spec, backend=backend, max_batch=1)


def _measure(ds: Any, detections: list[Any], pixels: Any, config: NodeConfig | None) -> tuple[Any, str]:
    try:
        from inference.measure import measure_image
    except ImportError as exc:
        return None, f"measurements unavailable: inference.measure not importable ({exc})"
    from inference.preprocessing import PreprocessingError, modality_pixels

    settings = config.measurement if config is not None else MeasurementSettings()
    try:
        values = modality_pixels(ds, pixels) if pixels is not None and pixels.ndim == 2 else None
    except PreprocessingError as exc:  # malformed Rescale Slope/Intercept: measured without pixel values
        return measure_image(ds, detections, pixels=None, settings=settings), str(exc)
    return measure_image(ds, detections, pixels=values, settings=settings), ""


def run_infer(args: argparse.Namespace) -> int:
    import pydicom

    from inference.backends import BackendError
    from inference.engine import Detector
    from inference.modelcard import ModelCardError
    from inference.postprocess import DecodeError
    from inference.preprocessing import PreprocessingError, stored_pixels

    try:
        ds = pydicom.dcmread(args.file)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        print(f"dicom-node infer: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        config = _load_config(args.config)
        spec = _model_spec(args, config)
        t0 = time.perf_counter()
        detector = Detector.from_spec(spec, warmup=False)
        load_s = time.perf_counter() - t0
        pixels = stored_pixels(ds)
        t1 = time.perf_counter()
        prepared = detector.prepare(ds, pixels)
        (detections,) = detector.detect_prepared(
            [prepared], score_threshold=args.score_threshold, nms_iou=args.nms_iou, classes=args.classes
        )
        infer_s = time.perf_counter() - t1
    except (ModelCardError, BackendError, PreprocessingError, DecodeError, KeyError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"dicom-node infer: error: {msg}", file=sys.stderr)
        return 2
    except Exception as exc:  # ConfigError and anything unexpected: one clear line, no traceback
        print(f"dicom-node infer: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    measurements, why_not = (
        (None, "not requested (--no-measure)")
        if args.no_measure
        else _measure(ds, detections, pixels, config)
    )
    card = detector.card
    result = {
        "file": str(args.file),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "modality": str(ds.get("Modality", "")),
        "image_size": {"rows": int(pixels.shape[-2]), "columns": int(pixels.shape[-1])},
        "model": {"name": card.name, "version": card.version, "weights_sha256": card.weights_sha256},
        "backend": detector.backend.describe(),
        "timing_s": {"load": round(load_s, 4), "preprocess_and_infer": round(infer_s, 4)},
        "coordinates": "original pixels, (0,0) = top-left corner of the first pixel; x right, y down",
        "preprocessing_notes": list(prepared.notes),
        "detections": [
            {
                "label": d.label,
                "concept": _jsonable(d.concept),
                "score": round(d.score, 6),
                "box_px": [round(v, 3) for v in d.box.as_tuple()],
            }
            for d in detections
        ],
        "measurements": _jsonable(measurements),
        "measurements_note": why_not,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.file.name}: {result['modality']} {result['image_size']['columns']}x{result['image_size']['rows']}, "
          f"model {card.name} {card.version} on {result['backend']}, {infer_s * 1000:.1f} ms")  # fmt: skip
    for note in prepared.notes:
        print(f"  note: {note}")
    if not detections:
        print("  no detections")
    for d in detections:
        b = d.box
        print(
            f"  {d.label:<10} {d.score:5.3f}  box px x {b.x_min:.1f}-{b.x_max:.1f}, y {b.y_min:.1f}-{b.y_max:.1f}"
        )
    if measurements is None:
        print(f"  {why_not}")
    else:
        print(f"  geometry: {measurements.geometry_level}, view {measurements.view}")
        for region in measurements.regions:
            qs = ", ".join(f"{q.kind.value} {q.value:.1f} {q.unit}" for q in region.quantities)
            print(f"  {region.detection.label:<10} {qs or '(no physical quantities)'}")
            for kind, reason in region.unavailable:
                print(f"    {kind.value}: {reason}")
        for note in measurements.notes:
            print(f"  note: {note}")
    return 0


def add_build_engines_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="node configuration; default: every builtin model")
    p.add_argument(
        "--precision", choices=("fp16", "fp32", "int8"), default=None, help="override options.precision"
    )
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="engine cache (default: options.engine_cache)"
    )


def run_build_engines(args: argparse.Namespace) -> int:
    """Build (or find cached) TensorRT engines for every configured model; exit 0 when TensorRT/GPU are absent."""
    from inference.backends import BackendError, TensorRTBackend, tensorrt_unavailable
    from inference.modelcard import MODELS_DIR, ModelCardError, load_card

    reason = tensorrt_unavailable()
    if reason is not None:
        print(f"dicom-node build-engines: nothing to do: {reason} (models will run on another backend)")
        return 0
    try:
        config = _load_config(args.config)
    except Exception as exc:
        print(f"dicom-node build-engines: error: {exc}", file=sys.stderr)
        return 2
    if config is not None:
        specs = list(config.models.values())
    else:
        specs = [
            ModelSpec(name=p.parent.name, card=f"builtin:{p.parent.name}")
            for p in sorted(MODELS_DIR.glob("*/card.yaml"))
        ]
    failed = 0
    for spec in specs:
        if spec.backend not in ("auto", "tensorrt"):
            print(f"  {spec.name}: skipped (backend {spec.backend})")
            continue
        opts = dict(spec.options)
        try:
            card = load_card(spec.card)
            t0 = time.perf_counter()
            calibration = None
            precision = args.precision or str(opts.get("precision", "fp16"))
            if precision == "int8":
                calibration = list(_calibration_batches(card, opts))
            backend = TensorRTBackend(
                card, precision=precision, max_batch=spec.max_batch, opt_batch=opts.get("opt_batch"),
                cache_dir=args.cache_dir or (Path(opts["engine_cache"]) if opts.get("engine_cache") else None),
                calibration=calibration, build_only=True,
            )  # fmt: skip
            state = "built" if backend.built else "cached"
            print(f"  {spec.name}: {state} {backend.engine_path} ({time.perf_counter() - t0:.1f} s)")
        except (ModelCardError, BackendError, OSError, ValueError) as exc:
            failed += 1
            print(f"  {spec.name}: FAILED: {exc}", file=sys.stderr)
    return 1 if failed else 0


def _calibration_batches(card: Any, opts: dict[str, Any], batch: int = 8) -> Any:
    """Preprocessed INT8 calibration batches from ``options.calibration`` (a folder of DICOM files)."""
    import numpy as np
    import pydicom

    from inference.preprocessing import preprocess

    folder = opts.get("calibration")
    if not folder:
        raise ValueError("int8 needs options.calibration: a folder of representative DICOM files")
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    tensors = []
    for f in files:
        try:
            tensors.append(preprocess(pydicom.dcmread(f), card).tensor)
        except Exception:  # unreadable calibration files are skipped
            continue
    for i in range(0, len(tensors) - batch + 1, batch):
        yield np.stack(tensors[i : i + batch]).astype(np.float32)
