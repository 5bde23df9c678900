"""Detection metrics in numpy: COCO-style AP (101-point interpolation), mean IoU and the RSNA metric.

All boxes are ``(x_min, y_min, x_max, y_max)`` in the same pixel frame (SCOORD corners, see ``inference.types``).

Matching follows COCO's ``evaluateImg``: per image and class, detections are taken by descending score; each is
matched to the unmatched regular ground truth of highest IoU >= the threshold; if none, to an *ignore* region
(IoU >= the threshold), in which case it counts neither as a true nor as a false positive. Ignore regions are
never false negatives. A class that has no regular ground truth in the whole set has no AP (``nan``) and is
left out of the means (COCO reports -1 there).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
RSNA_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.4, 0.75, 8), 2).tolist())
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class GroundTruth:
    """One labelled box. ``ignore``: an uncertain region (neither required nor penalised)."""

    label: str
    box: tuple[float, float, float, float]
    ignore: bool = False


@dataclass(frozen=True)
class Prediction:
    """One detection: class name, score in [0, 1], box in the image's pixel frame."""

    label: str
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageResult:
    """Ground truth and predictions of one image."""

    key: str
    truths: tuple[GroundTruth, ...]
    predictions: tuple[Prediction, ...]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4); returns (N, M). Empty boxes give 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / union, 0.0)
    return out


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes."""
    return float(iou_matrix(np.asarray(a), np.asarray(b))[0, 0])


@dataclass
class _Match:
    """Outcome of matching one image/class at one IoU threshold."""

    scores: list[float] = field(default_factory=list)  # scores of counted detections (TP or FP)
    tp: list[bool] = field(default_factory=list)
    n_gt: int = 0  # regular (non-ignored) ground truths


def match_image_class(
    truths: Sequence[GroundTruth], preds: Sequence[Prediction], iou_threshold: float
) -> tuple[list[float], list[bool], int]:
    """Greedy COCO matching for one image and one class.

    Returns (scores, is_true_positive, number of regular ground truths); detections matched to ignore regions are
    dropped from both lists.
    """
    regular = [t for t in truths if not t.ignore]
    ignored = [t for t in truths if t.ignore]
    order = sorted(range(len(preds)), key=lambda i: -preds[i].score)
    preds = [preds[i] for i in order]
    scores: list[float] = []
    tps: list[bool] = []
    if not preds:
        return scores, tps, len(regular)
    pb = np.array([p.box for p in preds], dtype=np.float64)
    ious_r = iou_matrix(pb, np.array([t.box for t in regular])) if regular else np.zeros((len(preds), 0))
    ious_i = iou_matrix(pb, np.array([t.box for t in ignored])) if ignored else np.zeros((len(preds), 0))
    used = np.zeros(len(regular), dtype=bool)
    for k, p in enumerate(preds):
        best, best_j = iou_threshold, -1
        for j in range(len(regular)):
            if not used[j] and ious_r[k, j] >= best:
                best, best_j = ious_r[k, j], j
        if best_j >= 0:
            used[best_j] = True
            scores.append(p.score)
            tps.append(True)
            continue
        if ious_i.shape[1] and float(ious_i[k].max()) >= iou_threshold:
            continue  # matched an ignore region: not counted
        scores.append(p.score)
        tps.append(False)
    return scores, tps, len(regular)


def average_precision(scores: Sequence[float], tps: Sequence[bool], n_gt: int) -> float:
    """COCO 101-point interpolated AP from pooled detections; ``nan`` when there is no ground truth."""
    if n_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    tp = np.asarray(tps, dtype=np.float64)[order]
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(1.0 - tp)
    recall = tp_cum / n_gt
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    # precision envelope: make it monotonically decreasing from the right
    for i in range(len(precision) - 1, 0, -1):
        precision[i - 1] = max(precision[i - 1], precision[i])
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(q.mean())


def _by_label(items: Iterable, label: str) -> list:
    return [x for x in items if x.label == label]


def ap_per_class(
    images: Sequence[ImageResult], classes: Sequence[str], iou_threshold: float
) -> dict[str, float]:
    """AP of each class at one IoU threshold over all images (``nan`` for classes without ground truth)."""
    out: dict[str, float] = {}
    for c in classes:
        scores: list[float] = []
        tps: list[bool] = []
        n_gt = 0
        for im in images:
            s, t, n = match_image_class(_by_label(im.truths, c), _by_label(im.predictions, c), iou_threshold)
            scores += s
            tps += t
            n_gt += n
        out[c] = average_precision(scores, tps, n_gt)
    return out


def rsna_image_score(
    truths: Sequence[GroundTruth],
    preds: Sequence[Prediction],
    thresholds: Sequence[float] = RSNA_IOU_THRESHOLDS,
) -> float | None:
    """RSNA metric of one image: mean over IoU thresholds of TP / (TP + FP + FN), class-aware matching.

    ``preds`` should already be filtered by the operating score threshold. Returns ``None`` when the image has
    neither regular ground truth nor predictions (such images are skipped, as in the RSNA challenge).
    """
    labels = sorted({t.label for t in truths} | {p.label for p in preds})
    n_regular = sum(1 for t in truths if not t.ignore)
    vals: list[float] = []
    counted_any = False
    for thr in thresholds:
        tp = fp = fn = 0
        for c in labels:
            _, t, n = match_image_class(_by_label(truths, c), _by_label(preds, c), thr)
            tp += sum(t)
            fp += len(t) - sum(t)
            fn += n - sum(t)
        if tp + fp + fn == 0:
            vals.append(1.0)
        else:
            counted_any = True
            vals.append(tp / (tp + fp + fn))
    if n_regular == 0 and not counted_any:
        return None
    return float(np.mean(vals))


def mean_best_iou(
    images: Sequence[ImageResult], classes: Sequence[str], score_threshold: float
) -> dict[str, float]:
    """Per class: mean over regular ground truths of the IoU with the top-scoring prediction of that class in the
    image whose score >= ``score_threshold`` (0 when there is none). ``nan`` without ground truth."""
    out: dict[str, float] = {}
    for c in classes:
        vals: list[float] = []
        for im in images:
            preds = [p for p in _by_label(im.predictions, c) if p.score >= score_threshold]
            best = max(preds, key=lambda p: p.score) if preds else None
            for t in _by_label(im.truths, c):
                if t.ignore:
                    continue
                vals.append(box_iou(best.box, t.box) if best else 0.0)
        out[c] = float(np.mean(vals)) if vals else float("nan")
    return out


@dataclass(frozen=True)
class EvaluationReport:
    """Numbers of one evaluation. Per-class dicts map class name -> value (``nan``: no ground truth)."""

    classes: tuple[str, ...]
    n_images: int
    n_truths: dict[str, int]
    n_ignored: dict[str, int]
    ap50: dict[str, float]
    ap75: dict[str, float]
    ap_coco: dict[str, float]  # mean AP over IoU 0.50:0.05:0.95
    mean_iou: dict[str, float]
    rsna: float  # mean over images of the per-image RSNA score (nan if no image counts)
    score_threshold: float

    @property
    def map_coco(self) -> float:
        return _nanmean(self.ap_coco.values())

    @property
    def map50(self) -> float:
        return _nanmean(self.ap50.values())

    @property
    def miou(self) -> float:
        return _nanmean(self.mean_iou.values())

    def to_markdown(self, title: str = "") -> str:
        """The report as a markdown table (one row per class and an ``all`` row)."""

        def f(x: float) -> str:
            return "n/a" if x != x else f"{x:.3f}"

        lines = []
        if title:
            lines += [f"**{title}** ({self.n_images} images, score threshold {self.score_threshold:g} for "
                      "mean IoU and RSNA)", ""]
        lines += [
            "| class | GT | ignored | AP50 | AP75 | AP@[.5:.95] | mean IoU |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in self.classes:
            lines.append(
                f"| {c} | {self.n_truths[c]} | {self.n_ignored[c]} | {f(self.ap50[c])} | {f(self.ap75[c])} | "
                f"{f(self.ap_coco[c])} | {f(self.mean_iou[c])} |"
            )
        lines.append(
            f"| **all** | {sum(self.n_truths.values())} | {sum(self.n_ignored.values())} | {f(self.map50)} | "
            f"{f(_nanmean(self.ap75.values()))} | {f(self.map_coco)} | {f(self.miou)} |"
        )
        lines += ["", f"RSNA metric (mean over IoU 0.40:0.05:0.75 of TP/(TP+FP+FN), per image): {f(self.rsna)}"]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "classes": list(self.classes), "n_images": self.n_images, "n_truths": self.n_truths,
            "n_ignored": self.n_ignored, "ap50": self.ap50, "ap75": self.ap75, "ap_coco": self.ap_coco,
            "mean_iou": self.mean_iou, "map_coco": self.map_coco, "map50": self.map50, "mean_iou_all": self.miou,
            "rsna": self.rsna, "score_threshold": self.score_threshold,
        }


def _nanmean(values: Iterable[float]) -> float:
    v = [x for x in values if x == x]
    return float(np.mean(v)) if v else float("nan")


def evaluate_detections(
    images: Sequence[ImageResult], classes: Sequence[str], score_threshold: float = 0.5
) -> EvaluationReport:
    """All metrics over a set of images. AP uses every prediction; mean IoU and RSNA use ``score >= threshold``."""
    classes = tuple(classes)
    per_thr = {thr: ap_per_class(images, classes, thr) for thr in COCO_IOU_THRESHOLDS}
    ap_coco = {c: _nanmean([per_thr[t][c] for t in COCO_IOU_THRESHOLDS]) for c in classes}
    rsna_vals = []
    for im in images:
        kept = [p for p in im.predictions if p.score >= score_threshold]
        v = rsna_image_score(im.truths, kept)
        if v is not None:
            rsna_vals.append(v)
    return EvaluationReport(
        classes=classes,
        n_images=len(images),
        n_truths={c: sum(1 for im in images for t in im.truths if t.label == c and not t.ignore) for c in classes},
        n_ignored={c: sum(1 for im in images for t in im.truths if t.label == c and t.ignore) for c in classes},
        ap50=per_thr[0.5],
        ap75=per_thr[0.75],
        ap_coco=ap_coco,
        mean_iou=mean_best_iou(images, classes, score_threshold),
        rsna=float(np.mean(rsna_vals)) if rsna_vals else float("nan"),
        score_threshold=score_threshold,
    )
