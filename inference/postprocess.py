"""Output decoders for common detector exports, class-aware NMS in numpy, per-class and total caps.

Every decoder turns a model's raw outputs into ``Candidates`` per batch item: boxes (N, 4) x1 y1 x2 y2 in
MODEL-INPUT pixels (the engine maps them back to ORIGINAL pixels with the preprocessing transform), scores in
[0, 1] and 0-based class indices into the card's ``classes``.

Formats (``ModelCard.output.format``):

* ``yolov5``: (B, N, 5 + C) rows cx, cy, w, h, objectness, class scores; score = objectness x class score.
* ``yolov8``/``yolov11``: (B, 4 + C, N) rows cx, cy, w, h, class scores (no objectness) or the transposed
  (B, N, 4 + C); ``output.layout`` forces one where N == 4 + C.
* ``yolo_end2end``: (B, K, 6) x1, y1, x2, y2, score, class (NMS in the graph: YOLOv10, ``nms=True`` exports).
* ``yolov4`` (darknet via pytorch-YOLOv4): boxes (B, N, 1, 4) x1 y1 x2 y2 normalised to [0, 1], confs (B, N, C).
* ``ssd``/``ssdlite``/``retinanet``/``faster_rcnn`` (torchvision exports): boxes (N, 4) x1 y1 x2 y2 in input
  pixels, labels (N,) int, scores (N,); a leading batch dimension is accepted. Label 0 is background
  (``output.label_offset`` 1 by default).
* ``efficient_nms`` (TensorRT EfficientNMS plugin): num_dets (B, 1), det_boxes (B, K, 4), det_scores (B, K),
  det_classes (B, K).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inference.modelcard import ModelCard, OutputSpec


class DecodeError(ValueError):
    """Model outputs that do not match the card's output format (the message names shapes and the fix)."""


@dataclass(frozen=True)
class Candidates:
    """Detections of one image in MODEL-INPUT pixels: boxes (N, 4) x1 y1 x2 y2, scores (N,), class_ids (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, idx: np.ndarray) -> Candidates:
        return Candidates(self.boxes[idx], self.scores[idx], self.class_ids[idx])

    @staticmethod
    def empty() -> Candidates:
        return Candidates(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), dtype=np.int64))


ROLES: dict[str, tuple[str, ...]] = {
    "yolov4": ("boxes", "confs"),
    "torchvision": ("boxes", "labels", "scores"),
    "efficient_nms": ("num_dets", "det_boxes", "det_scores", "det_classes"),
}
ALIASES: dict[str, tuple[str, ...]] = {
    "num_dets": ("num_dets", "num_detections", "num"),
    "det_boxes": ("det_boxes", "detection_boxes", "nmsed_boxes"),
    "det_scores": ("det_scores", "detection_scores", "nmsed_scores"),
    "det_classes": ("det_classes", "detection_classes", "nmsed_classes"),
    "boxes": ("boxes", "bboxes", "dets"),
    "labels": ("labels", "classes", "label"),
    "scores": ("scores", "score"),
    "confs": ("confs", "confidences", "scores", "cls"),
}


def _as_named(outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(outputs, Mapping):
        return {str(k): np.asarray(v) for k, v in outputs.items()}
    return {f"output{i}": np.asarray(v) for i, v in enumerate(outputs)}


def _assign_roles(
    outputs: dict[str, np.ndarray], roles: tuple[str, ...], spec: OutputSpec
) -> dict[str, np.ndarray]:
    """Map role -> array: card ``output.names`` first, then well-known names, then output order."""
    if spec.names:
        missing = [n for n in spec.names if n not in outputs]
        if missing:
            raise DecodeError(f"output names {missing} from the card are not model outputs {list(outputs)}")
        if len(spec.names) < len(roles):
            raise DecodeError(
                f"format {spec.format} needs {len(roles)} outputs {roles}, card names {spec.names}"
            )
        return {role: outputs[name] for role, name in zip(roles, spec.names, strict=False)}
    lower = {k.lower(): k for k in outputs}
    found: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for role in roles:
        for alias in ALIASES.get(role, (role,)):
            key = lower.get(alias)
            if key is not None and key not in used:
                found[role] = outputs[key]
                used.add(key)
                break
    if len(found) == len(roles):
        return found
    if len(outputs) < len(roles):
        raise DecodeError(
            f"format {spec.format} needs {len(roles)} outputs {roles}, the model has {list(outputs)}"
        )
    rest = [k for k in outputs if k not in used]
    for role in roles:
        if role not in found:
            found[role] = outputs[rest.pop(0)]
    return found


def _cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    cx, cy, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def _best_class(cls_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.argmax(cls_scores, axis=-1)
    return np.take_along_axis(cls_scores, ids[..., None], axis=-1)[..., 0], ids


def _decode_yolov5(outputs: dict[str, np.ndarray], spec: OutputSpec, nc: int) -> list[Candidates]:
    arr = next(iter(outputs.values())) if not spec.names else outputs[spec.names[0]]
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[-1] != 5 + nc:
        raise DecodeError(f"yolov5 expects (B, N, 5 + {nc}) = (B, N, {5 + nc}), got {arr.shape}")
    boxes = _cxcywh_to_xyxy(arr[..., :4])
    cls_score, ids = _best_class(arr[..., 5:] * arr[..., 4:5])
    return [Candidates(boxes[b], cls_score[b], ids[b]) for b in range(arr.shape[0])]


def _decode_yolov8(outputs: dict[str, np.ndarray], spec: OutputSpec, nc: int) -> list[Candidates]:
    arr = next(iter(outputs.values())) if not spec.names else outputs[spec.names[0]]
    arr = arr[None] if arr.ndim == 2 else arr
    k = 4 + nc
    if arr.ndim != 3 or k not in arr.shape[1:]:
        raise DecodeError(f"yolov8 expects (B, 4 + {nc}, N) or (B, N, 4 + {nc}), got {arr.shape}")
    layout = spec.layout
    if layout == "auto":
        if arr.shape[1] == k and arr.shape[2] == k:
            raise DecodeError(f"yolov8 output {arr.shape} is ambiguous: set output.layout in the card")
        layout = "channels_first" if arr.shape[1] == k else "channels_last"
    if layout == "channels_first":
        if arr.shape[1] != k:
            raise DecodeError(f"yolov8 channels_first expects (B, {k}, N), got {arr.shape}")
        arr = np.transpose(arr, (0, 2, 1))
    elif arr.shape[2] != k:
        raise DecodeError(f"yolov8 channels_last expects (B, N, {k}), got {arr.shape}")
    boxes = _cxcywh_to_xyxy(arr[..., :4])
    cls_score, ids = _best_class(arr[..., 4:])
    return [Candidates(boxes[b], cls_score[b], ids[b]) for b in range(arr.shape[0])]


def _decode_end2end(outputs: dict[str, np.ndarray], spec: OutputSpec, nc: int) -> list[Candidates]:
    arr = next(iter(outputs.values())) if not spec.names else outputs[spec.names[0]]
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[-1] < 6:
        raise DecodeError(f"yolo_end2end expects (B, K, 6) x1 y1 x2 y2 score class, got {arr.shape}")
    return [
        Candidates(arr[b, :, :4], arr[b, :, 4], np.rint(arr[b, :, 5]).astype(np.int64))
        for b in range(arr.shape[0])
    ]


def _decode_yolov4(outputs: dict[str, np.ndarray], spec: OutputSpec, nc: int) -> list[Candidates]:
    if not spec.names and len(outputs) == 2:
        a, b = outputs.values()
        # darknet exports: boxes (B, N, 1, 4) and confs (B, N, C); choose by shape when names do not say
        lower = [k.lower() for k in outputs]
        if not ("boxes" in lower and "confs" in lower) and a.ndim != b.ndim:
            boxes, confs = (a, b) if a.ndim == 4 else (b, a)
            outputs = {"boxes": boxes, "confs": confs}
    r = _assign_roles(outputs, ROLES["yolov4"], spec)
    boxes, confs = r["boxes"], r["confs"]
    if boxes.ndim == 4:
        boxes = boxes[:, :, 0, :]
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or confs.ndim != 3 or confs.shape[:2] != boxes.shape[:2]:
        raise DecodeError(
            f"yolov4 expects boxes (B, N, 1, 4) and confs (B, N, C), got {boxes.shape} and {confs.shape}"
        )
    if confs.shape[-1] != nc:
        raise DecodeError(f"yolov4 confs have {confs.shape[-1]} classes, the card lists {nc}")
    score, ids = _best_class(confs)
    return [Candidates(boxes[b], score[b], ids[b]) for b in range(boxes.shape[0])]


def _decode_torchvision(outputs: dict[str, np.ndarray], spec: OutputSpec, nc: int) -> list[Candidates]:
    if not spec.names:
        lower = {k.lower() for k in outputs}
        if not {"boxes", "labels", "scores"} <= lower and len(outputs) == 3:
            arrs = list(outputs.values())
            box_like = [a for a in arrs if a.shape[-1:] == (4,) and a.ndim >= 2]
            ints = [a for a in arrs if np.issubdtype(a.dtype, np.integer)]
            floats = [
                a
                for a in arrs
                if np.issubdtype(a.dtype, np.floating) and not (a.ndim >= 2 and a.shape[-1] == 4)
            ]
            if len(box_like) == 1 and len(ints) == 1 and len(floats) == 1:
                outputs = {"boxes": box_like[0], "labels": ints[0], "scores": floats[0]}
    r = _assign_roles(outputs, ROLES["torchvision"], spec)
    boxes, labels, scores = r["boxes"], r["labels"], r["scores"]
    if boxes.ndim == 2:
        boxes, labels, scores = boxes[None], labels[None], scores[None]
    if (
        boxes.ndim != 3
        or boxes.shape[-1] != 4
        or labels.shape != boxes.shape[:2]
        or scores.shape != boxes.shape[:2]
    ):
        raise DecodeError(
            f"{spec.format} expects boxes (N, 4), labels (N,), scores (N,), got {boxes.shape}, {labels.shape}, "
            f"{scores.shape}"
        )
    out = []
    for b in range(boxes.shape[0]):
        ids = np.rint(labels[b]).astype(np.int64) - spec.label_offset
        ok = (ids >= 0) & (ids < nc)  # label 0 (background) and unknown labels are dropped
        out.append(Candidates(boxes[b][ok], scores[b][ok], ids[ok]))
    return out


def _decode_efficient_nms(outputs: dict[str, np.ndarray], spec: OutputSpec, nc: int) -> list[Candidates]:
    r = _assign_roles(outputs, ROLES["efficient_nms"], spec)
    num, boxes, scores, classes = r["num_dets"], r["det_boxes"], r["det_scores"], r["det_classes"]
    if (
        boxes.ndim != 3
        or boxes.shape[-1] != 4
        or scores.shape != boxes.shape[:2]
        or classes.shape != boxes.shape[:2]
    ):
        raise DecodeError(
            "efficient_nms expects num_dets (B, 1), det_boxes (B, K, 4), det_scores (B, K), det_classes (B, K), got "
            f"{num.shape}, {boxes.shape}, {scores.shape}, {classes.shape}"
        )
    num = num.reshape(boxes.shape[0], -1)[:, 0].astype(np.int64)
    out = []
    for b in range(boxes.shape[0]):
        n = int(np.clip(num[b], 0, boxes.shape[1]))
        bx = boxes[b, :n]
        if spec.box_coding == "center":
            bx = _cxcywh_to_xyxy(bx)
        ids = np.rint(classes[b, :n]).astype(np.int64) - spec.label_offset
        ok = (ids >= 0) & (ids < nc)
        out.append(Candidates(bx[ok], scores[b, :n][ok], ids[ok]))
    return out


DECODERS = {
    "yolov5": _decode_yolov5,
    "yolov8": _decode_yolov8,
    "yolov11": _decode_yolov8,
    "yolo_end2end": _decode_end2end,
    "yolov4": _decode_yolov4,
    "ssd": _decode_torchvision,
    "ssdlite": _decode_torchvision,
    "retinanet": _decode_torchvision,
    "faster_rcnn": _decode_torchvision,
    "efficient_nms": _decode_efficient_nms,
}


def decode(
    outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray], spec: OutputSpec, num_classes: int,
    input_hw: tuple[int, int],
) -> list[Candidates]:  # fmt: skip
    """Raw outputs -> candidates per batch item (boxes in model-input pixels, not yet thresholded or NMS'd)."""
    named = _as_named(outputs)
    if not named:
        raise DecodeError("the model returned no outputs")
    try:
        decoder = DECODERS[spec.format]
    except KeyError:
        raise DecodeError(f"no decoder for output format {spec.format!r}") from None
    result = decoder(named, spec, num_classes)
    if spec.normalized:
        h, w = input_hw
        scale = np.array([w, h, w, h], dtype=np.float64)
        result = [Candidates(c.boxes * scale, c.scores, c.class_ids) for c in result]
    return [
        Candidates(
            np.asarray(c.boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray(c.scores, dtype=np.float64).reshape(-1),
            np.asarray(c.class_ids, dtype=np.int64).reshape(-1),
        )
        for c in result
    ]


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, class_ids: np.ndarray | None = None
) -> np.ndarray:
    """Greedy non-maximum suppression (class-aware when ``class_ids`` is given): kept indices, best score first.

    Boxes are (N, 4) x1 y1 x2 y2 in continuous coordinates (area = w x h, no +1). Class awareness uses the
    coordinate-offset trick (boxes of different classes are moved apart so they never overlap); each greedy step
    computes the IoU of the current best box with all remaining boxes at once.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = scores.shape[0]
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    if class_ids is not None and n > 1:
        span = float(boxes.max() - boxes.min()) + 1.0
        boxes = boxes + (np.asarray(class_ids, dtype=np.float64) * span)[:, None]
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0)
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def cap_per_class(class_ids: np.ndarray, max_per_class: int) -> np.ndarray:
    """Boolean mask keeping the first ``max_per_class`` entries of each class (input already sorted by score)."""
    class_ids = np.asarray(class_ids)
    n = class_ids.shape[0]
    if n == 0:
        return np.zeros((0,), dtype=bool)
    by_class = np.argsort(class_ids, kind="stable")
    sorted_ids = class_ids[by_class]
    first = np.searchsorted(sorted_ids, sorted_ids, side="left")
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - first
    return rank < max_per_class


def filter_candidates(
    cand: Candidates,
    *,
    score_threshold: float,
    nms_iou: float,
    max_per_class: int,
    max_total: int,
    allowed_classes: np.ndarray | None = None,
    pre_nms_top_k: int = 30000,
) -> Candidates:
    """Score threshold, class filter, class-aware NMS, per-class cap and total cap; result sorted by score."""
    ok = np.isfinite(cand.scores) & np.all(np.isfinite(cand.boxes), axis=1) & (cand.scores >= score_threshold)
    if allowed_classes is not None:
        ok &= np.isin(cand.class_ids, allowed_classes)
    c = cand.take(np.nonzero(ok)[0])
    if len(c) > pre_nms_top_k:
        c = c.take(np.argsort(-c.scores, kind="stable")[:pre_nms_top_k])
    boxes = np.concatenate(
        [np.minimum(c.boxes[:, :2], c.boxes[:, 2:]), np.maximum(c.boxes[:, :2], c.boxes[:, 2:])], 1
    )
    c = Candidates(boxes, c.scores, c.class_ids)
    keep = nms(c.boxes, c.scores, nms_iou, c.class_ids)
    c = c.take(keep)
    c = c.take(np.nonzero(cap_per_class(c.class_ids, max_per_class))[0])
    return c.take(np.arange(min(len(c), max_total)))


def postprocess(
    outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    card: ModelCard,
    *,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    classes: Sequence[str] | None = None,
) -> list[Candidates]:
    """Decode and filter a batch of raw outputs with the card's (or overridden) thresholds."""
    allowed = None
    if classes is not None:
        unknown = [c for c in classes if c not in card.class_names]
        if unknown:
            raise DecodeError(
                f"classes {unknown} are not in model {card.name} ({', '.join(card.class_names)})"
            )
        allowed = np.array([card.class_names.index(c) for c in classes], dtype=np.int64)
    decoded = decode(outputs, card.output, len(card.classes), (card.input.height, card.input.width))
    return [
        filter_candidates(
            c,
            score_threshold=card.score_threshold if score_threshold is None else score_threshold,
            nms_iou=card.nms_iou if nms_iou is None else nms_iou,
            max_per_class=card.max_detections_per_class,
            max_total=card.max_detections,
            allowed_classes=allowed,
        )
        for c in decoded
    ]
