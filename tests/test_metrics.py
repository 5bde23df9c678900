"""Detection metrics against hand-worked cases (COCO 101-point AP, ignore regions, mean IoU, RSNA)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.training.metrics import (
    COCO_IOU_THRESHOLDS,
    RSNA_IOU_THRESHOLDS,
    GroundTruth,
    ImageResult,
    Prediction,
    average_precision,
    box_iou,
    evaluate_detections,
    iou_matrix,
    match_image_class,
    rsna_image_score,
)

CLASSES = ("HEAD", "SPINE", "CHEST", "ABDOMEN", "PELVIS")


def test_thresholds() -> None:
    assert COCO_IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    assert RSNA_IOU_THRESHOLDS == (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)


def test_iou_hand_values() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0  # touching corners
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # empty boxes do not divide by zero
    m = iou_matrix(np.array([[0, 0, 2, 2], [1, 1, 3, 3]]), np.array([[0, 0, 2, 2]]))
    assert m.shape == (2, 1)
    assert m[1, 0] == pytest.approx(1 / 7)


def test_perfect_detections_score_one() -> None:
    images = []
    for i in range(4):
        truths = tuple(GroundTruth(c, (10.0 * k + i, 20.0, 10.0 * k + 50 + i, 90.0)) for k, c in enumerate(CLASSES))
        preds = tuple(Prediction(t.label, 0.9, t.box) for t in truths)
        images.append(ImageResult(f"im{i}", truths, preds))
    rep = evaluate_detections(images, CLASSES)
    for c in CLASSES:
        assert rep.ap50[c] == pytest.approx(1.0)
        assert rep.ap_coco[c] == pytest.approx(1.0)
        assert rep.mean_iou[c] == pytest.approx(1.0)
    assert rep.map_coco == pytest.approx(1.0)
    assert rep.rsna == pytest.approx(1.0)
    md = rep.to_markdown("perfect")
    assert "| CHEST | 4 | 0 | 1.000 | 1.000 | 1.000 | 1.000 |" in md


def test_known_pr_curve() -> None:
    """3 ground truths, detections TP, FP, TP, FP by score: recall 1/3,1/3,2/3,2/3; precision 1,.5,.67,.5.

    Envelope 1, .67, .67, .5. Of the 101 recall points, 0.00..0.33 (34 points) get 1.0, 0.34..0.66 (33) get 2/3,
    0.67..1.00 get 0, so AP = (34 + 33 * 2/3) / 101 = 56/101.
    """
    gt = [(0, 0, 10, 10), (100, 100, 110, 110), (200, 200, 210, 210)]
    images = [
        ImageResult("a", (GroundTruth("CHEST", gt[0]),),
                    (Prediction("CHEST", 0.9, gt[0]), Prediction("CHEST", 0.8, (50, 50, 60, 60)))),
        ImageResult("b", (GroundTruth("CHEST", gt[1]),),
                    (Prediction("CHEST", 0.7, gt[1]), Prediction("CHEST", 0.6, (0, 0, 5, 5)))),
        ImageResult("c", (GroundTruth("CHEST", gt[2]),), ()),
    ]
    rep = evaluate_detections(images, ("CHEST", "PELVIS"))
    assert rep.ap50["CHEST"] == pytest.approx(56 / 101)
    assert math.isnan(rep.ap50["PELVIS"])  # no ground truth: no AP, left out of the mean
    assert rep.map50 == pytest.approx(56 / 101)
    # the same curve from the pooled lists directly
    assert average_precision([0.9, 0.8, 0.7, 0.6], [True, False, True, False], 3) == pytest.approx(56 / 101)
    assert average_precision([], [], 2) == 0.0
    assert math.isnan(average_precision([0.5], [False], 0))


def test_iou_threshold_changes_ap() -> None:
    # IoU 0.62 with the truth: a TP at 0.5..0.6, a FP (and a miss) from 0.65 on -> AP@[.5:.95] = 3/10
    img = ImageResult("a", (GroundTruth("PELVIS", (0, 0, 100, 100)),), (Prediction("PELVIS", 0.8, (0, 0, 100, 62)),))
    rep = evaluate_detections([img], ("PELVIS",))
    assert rep.ap50["PELVIS"] == pytest.approx(1.0)
    assert rep.ap75["PELVIS"] == 0.0
    assert rep.ap_coco["PELVIS"] == pytest.approx(0.3)
    assert rep.mean_iou["PELVIS"] == pytest.approx(0.62)


def test_ignore_region_is_neither_fp_nor_fn() -> None:
    truths = (GroundTruth("CHEST", (0, 0, 100, 100)), GroundTruth("CHEST", (200, 0, 300, 100), ignore=True))
    # a high-scoring detection on the ignore region would otherwise be a FP ranked first
    preds = (Prediction("CHEST", 0.95, (200, 0, 300, 100)), Prediction("CHEST", 0.5, (0, 0, 100, 100)))
    scores, tps, n_gt = match_image_class(truths, preds, 0.5)
    assert (scores, tps, n_gt) == ([0.5], [True], 1)
    rep = evaluate_detections([ImageResult("a", truths, preds)], ("CHEST",))
    assert rep.ap50["CHEST"] == pytest.approx(1.0)
    assert rep.n_truths["CHEST"] == 1 and rep.n_ignored["CHEST"] == 1
    # the ignore region missed entirely is no false negative
    rep2 = evaluate_detections([ImageResult("a", truths, preds[1:])], ("CHEST",))
    assert rep2.ap50["CHEST"] == pytest.approx(1.0)
    assert rep2.rsna == pytest.approx(1.0)
    # without the ignore flag the same detection is a FP ranked first: precision 1/2 at full recall
    plain = (truths[0], GroundTruth("CHEST", (200, 0, 300, 100), ignore=False))
    rep3 = evaluate_detections([ImageResult("a", plain, preds[:1])], ("CHEST",))
    assert rep3.ap50["CHEST"] == pytest.approx(51 / 101)  # recall 1/2 at precision 1: points 0.00..0.50
    # an image with only an ignore region and no detection does not count in the RSNA mean
    assert rsna_image_score((truths[1],), ()) is None


def test_class_aware_matching() -> None:
    # a box in the right place with the wrong class is a FP for that class and leaves a FN
    img = ImageResult("a", (GroundTruth("CHEST", (0, 0, 10, 10)),), (Prediction("ABDOMEN", 0.9, (0, 0, 10, 10)),))
    rep = evaluate_detections([img], ("CHEST", "ABDOMEN"))
    assert rep.ap50["CHEST"] == 0.0
    assert math.isnan(rep.ap50["ABDOMEN"])
    assert rep.rsna == 0.0


def test_rsna_worked_example() -> None:
    """Image 1: one truth, one prediction with IoU 0.62: TP at 0.40..0.60 (5 thresholds -> 1), FP+FN at 0.65..0.75
    (3 thresholds -> 0/(0+1+1) = 0), score 5/8. Image 2: nothing at all: skipped. Image 3: a prediction and no truth:
    0. Image 4: a truth and no prediction: 0. Mean over counted images (1, 3, 4) = (0.625 + 0 + 0) / 3.
    Image 5 adds a prediction below the score threshold (ignored) on a perfect match: 1."""
    im1 = ImageResult("1", (GroundTruth("CHEST", (0, 0, 100, 100)),), (Prediction("CHEST", 0.9, (0, 0, 100, 62)),))
    assert rsna_image_score(im1.truths, im1.predictions) == pytest.approx(5 / 8)
    im2 = ImageResult("2", (), ())
    im3 = ImageResult("3", (), (Prediction("HEAD", 0.9, (0, 0, 10, 10)),))
    im4 = ImageResult("4", (GroundTruth("HEAD", (0, 0, 10, 10)),), ())
    assert rsna_image_score(im2.truths, im2.predictions) is None
    assert rsna_image_score(im3.truths, im3.predictions) == 0.0
    assert rsna_image_score(im4.truths, im4.predictions) == 0.0
    rep = evaluate_detections([im1, im2, im3, im4], CLASSES, score_threshold=0.5)
    assert rep.rsna == pytest.approx(0.625 / 3)
    im5 = ImageResult(
        "5",
        (GroundTruth("PELVIS", (0, 0, 50, 50)),),
        (Prediction("PELVIS", 0.9, (0, 0, 50, 50)), Prediction("PELVIS", 0.2, (300, 300, 310, 310))),
    )
    rep5 = evaluate_detections([im1, im5], CLASSES, score_threshold=0.5)
    assert rep5.rsna == pytest.approx((0.625 + 1.0) / 2)
    # two truths, one found exactly and one missed: TP=1, FN=1 at every threshold -> 1/2
    im6 = ImageResult(
        "6",
        (GroundTruth("CHEST", (0, 0, 10, 10)), GroundTruth("PELVIS", (0, 20, 10, 30))),
        (Prediction("CHEST", 0.9, (0, 0, 10, 10)),),
    )
    assert rsna_image_score(im6.truths, im6.predictions) == pytest.approx(0.5)


def test_duplicate_detection_is_false_positive() -> None:
    t = (GroundTruth("SPINE", (0, 0, 10, 100)),)
    p = (Prediction("SPINE", 0.9, (0, 0, 10, 100)), Prediction("SPINE", 0.8, (0, 0, 10, 98)))
    scores, tps, n = match_image_class(t, p, 0.5)
    assert tps == [True, False] and n == 1
    # AP stays 1 (the FP ranks after full recall) but RSNA counts it: 1/(1+1)
    rep = evaluate_detections([ImageResult("a", t, p)], ("SPINE",))
    assert rep.ap50["SPINE"] == pytest.approx(1.0)
    assert rep.rsna == pytest.approx(0.5)
