"""`dicom-node evaluate`: score a detector (through the inference engine) on a labelled dataset.

``--dataset`` is a folder of simulated ``.dcm`` + sidecar ``.json``, a YOLO txt folder, a COCO JSON file (or a folder
holding one) or a ``labels.json`` like ``../shared/realdata/labels.json`` (see ``inference.training.data``).
Prints a markdown table: AP50, AP75 and COCO AP@[.5:.95] per class (101-point interpolation, every detection the
model gives above ``--min-score``), mean IoU and the RSNA metric at the operating ``--score-threshold`` (default:
the card's). Boxes are compared in ORIGINAL pixels of each image.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from inference.training.data import CLASSES, DatasetError, Sample, load_dataset, read_image_file
from inference.training.metrics import EvaluationReport, ImageResult, Prediction, evaluate_detections


def predict_samples(
    detector, samples: Sequence[Sample], min_score: float = 0.001,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[ImageResult], list[str]]:  # fmt: skip
    """Run an ``inference.engine.Detector`` on every sample. Returns results and per-image errors (an image that
    cannot be decoded is reported and counted with no predictions, never silently dropped)."""
    import pydicom

    results: list[ImageResult] = []
    errors: list[str] = []
    for n, s in enumerate(samples):
        try:
            if s.is_dicom:
                dets = detector.detect(pydicom.dcmread(s.path), score_threshold=min_score)
            else:
                dets = detector.detect(None, read_image_file(s.path), score_threshold=min_score)
            preds = tuple(Prediction(d.label, d.score, d.box.as_tuple()) for d in dets)
        except Exception as exc:  # decoder and preprocessing errors come in many types; report and go on
            errors.append(f"{s.key}: {type(exc).__name__}: {exc}")
            preds = ()
        results.append(ImageResult(s.key, s.truths, preds))
        if progress and (n + 1) % 100 == 0:
            progress(f"{n + 1}/{len(samples)} images")
    return results, errors


def evaluate_model(
    model: str, dataset: Path, backend: str = "onnxruntime", score_threshold: float | None = None,
    limit: int | None = None, min_score: float = 0.001,
) -> tuple[EvaluationReport, list[ImageResult], list[str]]:  # fmt: skip
    """Load ``model`` (card path, folder or ``builtin:NAME``) on ``backend`` and evaluate it on ``dataset``."""
    from inference.engine import Detector

    samples, info = load_dataset(dataset)
    if limit:
        samples = samples[:limit]
    detector = Detector.from_card(model, backend)
    try:
        results, errors = predict_samples(detector, samples, min_score)
        classes = tuple(c for c in detector.card.class_names if c in CLASSES) or CLASSES
        thr = detector.card.score_threshold if score_threshold is None else score_threshold
    finally:
        detector.close()
    if info.skipped:
        errors.append(f"skipped boxes of classes the model does not have: {dict(info.skipped)}")
    return evaluate_detections(results, classes, thr), results, errors


def per_image_markdown(results: Sequence[ImageResult], score_threshold: float) -> str:
    """One row per image and labelled class: truth box, best prediction of that class, its score and IoU."""
    from inference.training.metrics import box_iou

    lines = ["| image | class | truth box | predicted box | score | IoU |", "|---|---|---|---|---:|---:|"]
    for r in results:
        labels = sorted({t.label for t in r.truths} | {p.label for p in r.predictions if p.score >= score_threshold},
                        key=CLASSES.index)  # fmt: skip
        for c in labels:
            t = next((t for t in r.truths if t.label == c), None)
            ps = [p for p in r.predictions if p.label == c]
            p = max(ps, key=lambda q: q.score) if ps else None
            tb = "-" if t is None else ("(ignore) " if t.ignore else "") + _box(t.box)
            pb = "-" if p is None else _box(p.box)
            iou = f"{box_iou(t.box, p.box):.2f}" if t is not None and p is not None else "-"
            sc = f"{p.score:.2f}" if p is not None else "-"
            lines.append(f"| {r.key} | {c} | {tb} | {pb} | {sc} | {iou} |")
    return "\n".join(lines)


def _box(b: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in b) + "]"


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="builtin:reference", help="model card: YAML path, folder or builtin:NAME")
    p.add_argument("--dataset", type=Path, required=True,
                   help="simulated folder (.dcm + .json), YOLO txt folder, COCO JSON or labels.json")  # fmt: skip
    p.add_argument("--backend", default="onnxruntime", help="inference backend (onnxruntime, torch, auto, ...)")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="operating threshold for mean IoU and RSNA (default: the card's)")  # fmt: skip
    p.add_argument("--min-score", type=float, default=0.001, help="lowest score kept for AP")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--per-image", action="store_true", help="also print truth and prediction per image")
    p.add_argument("--json", type=Path, default=None, help="write the numbers as JSON here")


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        report, results, errors = evaluate_model(
            args.model, args.dataset, args.backend, args.score_threshold, args.limit, args.min_score
        )
    except (DatasetError, ValueError, OSError) as exc:
        print(f"dicom-node evaluate: {exc}", file=sys.stderr)
        return 2
    print(report.to_markdown(f"{args.model} on {args.dataset} ({args.backend})"))
    if args.per_image:
        print()
        print(per_image_markdown(results, report.score_threshold))
    for e in errors:
        print(f"warning: {e}", file=sys.stderr)
    if args.json:
        doc = report.as_dict()
        doc["errors"] = errors
        doc["model"], doc["dataset"], doc["backend"] = args.model, str(args.dataset), args.backend
        args.json.write_text(json.dumps(doc, indent=1))
    return 0
