"""Decoders and NMS: hand-built raw outputs of every format decode to the right boxes/scores/classes; NMS equals
a brute-force reference; and tiny ONNX models of EVERY format run end to end through ONNX Runtime (decode, NMS,
mapping back) to the exact boxes drawn in the original image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.engine import Detector
from inference.modelcard import OutputSpec, load_card
from inference.postprocess import Candidates, DecodeError, cap_per_class, decode, filter_candidates, nms
from tests import onnx_factory as factory

# ------------------------------------------------------------------ NMS


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(classes[i] != classes[k] or _iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 60), thr=st.floats(0.05, 0.95), n_cls=st.integers(1, 4), seed=st.integers(0, 2**31 - 1)
)  # fmt: skip
def test_nms_matches_brute_force(n: int, thr: float, n_cls: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, size=(n, 2))
    wh = rng.uniform(1, 40, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.permutation(n) / max(n, 1) + 0.001  # distinct scores: a unique greedy order
    classes = rng.integers(0, n_cls, size=n)
    assert nms(boxes, scores, thr, classes).tolist() == _reference_nms(boxes, scores, classes, thr)


def test_nms_class_aware_and_agnostic() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5, np.array([0, 1, 0])).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_cap_per_class_keeps_best_of_each_class() -> None:
    ids = np.array([2, 0, 2, 2, 0, 1])  # already sorted by score
    assert cap_per_class(ids, 2).tolist() == [True, True, True, False, True, True]
    assert cap_per_class(ids, 1).tolist() == [True, True, False, False, False, True]


def test_filter_candidates_threshold_classes_caps() -> None:
    c = Candidates(
        np.array(
            [[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30], [np.nan, 0, 1, 1]], float
        ),
        np.array([0.9, 0.8, 0.3, 0.1, 0.99]),
        np.array([0, 0, 1, 1, 0]),
    )
    out = filter_candidates(c, score_threshold=0.25, nms_iou=0.5, max_per_class=5, max_total=10)
    assert out.scores.tolist() == [0.9, 0.8, 0.3]  # NaN box and low score dropped
    out = filter_candidates(c, score_threshold=0.25, nms_iou=0.5, max_per_class=1, max_total=10)
    assert out.scores.tolist() == [0.9, 0.3]
    out = filter_candidates(c, score_threshold=0.0, nms_iou=0.5, max_per_class=5, max_total=2,
                            allowed_classes=np.array([1]))  # fmt: skip
    assert out.class_ids.tolist() == [1, 1] and out.scores.tolist() == [0.3, 0.1]


# ------------------------------------------------------------------ decoders on hand-built outputs


def test_yolov5_score_is_objectness_times_class() -> None:
    raw = np.array([[[50, 40, 20, 10, 0.5, 0.2, 0.8], [10, 10, 4, 4, 0.9, 0.9, 0.1]]], dtype=np.float32)
    (c,) = decode({"output0": raw}, OutputSpec("yolov5"), 2, (100, 100))
    np.testing.assert_allclose(c.boxes, [[40, 35, 60, 45], [8, 8, 12, 12]])
    np.testing.assert_allclose(c.scores, [0.4, 0.81], rtol=1e-6)
    assert c.class_ids.tolist() == [1, 0]
    with pytest.raises(DecodeError, match=r"yolov5 expects \(B, N, 5 \+ 3\)"):
        decode({"output0": raw}, OutputSpec("yolov5"), 3, (100, 100))


def test_yolov8_both_layouts_and_ambiguity() -> None:
    rows = np.array(
        [[50, 40, 20, 10, 0.2, 0.7], [10, 10, 4, 4, 0.6, 0.1], [0, 0, 1, 1, 0, 0]], dtype=np.float32
    )
    cl = rows[None]  # (1, N=3, 4+C=6)
    cf = np.transpose(cl, (0, 2, 1))  # (1, 6, 3)
    for arr in (cl, cf):
        (c,) = decode([arr], OutputSpec("yolov8"), 2, (100, 100))
        np.testing.assert_allclose(c.boxes[:2], [[40, 35, 60, 45], [8, 8, 12, 12]])
        np.testing.assert_allclose(c.scores[:2], [0.7, 0.6], rtol=1e-6)
    square = np.zeros((1, 6, 6), dtype=np.float32)
    with pytest.raises(DecodeError, match="ambiguous: set output.layout"):
        decode([square], OutputSpec("yolov8"), 2, (100, 100))
    (c,) = decode([square], OutputSpec("yolov8", layout="channels_first"), 2, (100, 100))
    assert len(c) == 6


def test_yolov4_normalised_boxes_and_shape_matching() -> None:
    boxes = np.array([[[[0.1, 0.2, 0.5, 0.6]]]], dtype=np.float32)  # (1, 1, 1, 4)
    confs = np.array([[[0.1, 0.7, 0.2]]], dtype=np.float32)
    # outputs given in "wrong" order with generic names: matched by shape
    (c,) = decode({"out_a": confs, "out_b": boxes}, OutputSpec("yolov4", normalized=True), 3, (200, 400))
    np.testing.assert_allclose(c.boxes, [[40, 40, 200, 120]], rtol=1e-6)
    assert c.class_ids.tolist() == [1]
    with pytest.raises(DecodeError, match="yolov4 confs have 3 classes, the card lists 5"):
        decode({"boxes": boxes, "confs": confs}, OutputSpec("yolov4", normalized=True), 5, (200, 400))


def test_torchvision_background_label_dropped() -> None:
    out = {
        "boxes": np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 10, 10]], dtype=np.float32),
        "labels": np.array([0, 2, 7], dtype=np.int64),
        "scores": np.array([0.99, 0.5, 0.4], dtype=np.float32),
    }
    (c,) = decode(out, OutputSpec("faster_rcnn", label_offset=1), 3, (10, 10))
    assert c.class_ids.tolist() == [1] and c.scores.tolist() == [0.5]  # 0 = background, 7 unknown
    # unnamed outputs: matched by dtype and shape
    (c2,) = decode(list(reversed(list(out.values()))), OutputSpec("ssd", label_offset=1), 3, (10, 10))
    assert c2.class_ids.tolist() == [1]


def test_efficient_nms_honours_num_dets() -> None:
    out = {
        "num_dets": np.array([[1], [0]], dtype=np.int32),
        "det_boxes": np.array([[[1, 1, 5, 5], [0, 0, 9, 9]], [[2, 2, 3, 3], [0, 0, 1, 1]]], dtype=np.float32),
        "det_scores": np.array([[0.8, 0.99], [0.9, 0.9]], dtype=np.float32),
        "det_classes": np.array([[2, 0], [1, 1]], dtype=np.int32),
    }
    c0, c1 = decode(out, OutputSpec("efficient_nms"), 3, (10, 10))
    assert c0.scores.tolist() == pytest.approx([0.8]) and c0.class_ids.tolist() == [2] and len(c1) == 0
    with pytest.raises(DecodeError, match="output names .* are not model outputs"):
        decode(out, OutputSpec("efficient_nms", names=("a", "b", "c", "d")), 3, (10, 10))


# ------------------------------------------------------------------ ONNX models of every format, end to end


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="torch builds the tiny ONNX test models")
    d = tmp_path_factory.mktemp("formats")
    for fmt in factory.FORMATS:
        factory.make_format_card(fmt, d)
        resize = factory.card_dict(d / f"{fmt}.onnx", "yolov8" if fmt == "yolov8_transposed" else fmt,
                                   preprocessing=[{"voi": {"mode": "minmax"}}, "resize"],
                                   max_detections_per_class=5)  # fmt: skip
        factory.write_card(d, resize, f"{fmt}-resize.yaml")
    return d


RECT = (100, 60, 300, 200)  # x_min, y_min, x_max, y_max in ORIGINAL pixels (corners)


@pytest.mark.parametrize("fmt", factory.FORMATS)
def test_format_end_to_end_letterbox(model_dir: Path, fmt: str) -> None:
    """480x640 image letterboxed to 320x320 (scale 0.5, 40 px bars): exact boxes back in original pixels."""
    det = Detector.from_card(load_card(model_dir / f"{fmt}.yaml"), "onnxruntime")
    dets = det.detect(None, factory.rect_image(480, 640, RECT))
    got = [(d.label, round(d.score, 5), d.box.as_tuple()) for d in dets]
    assert got == [("CHEST", 0.9, (100.0, 60.0, 300.0, 200.0)), ("HEAD", 0.6, (100.0, 60.0, 300.0, 200.0))]
    assert dets[0].concept.value == "816094009" and dets[0].model.weights_sha256 == det.card.weights_sha256
    # a blank image: the finder's score is 0, nothing passes the threshold
    assert det.detect(None, np.zeros((480, 640), dtype=np.uint16)) == []


@pytest.mark.parametrize("fmt", factory.FORMATS)
def test_format_end_to_end_resize_portrait(model_dir: Path, fmt: str) -> None:
    """960x640 portrait stretched to 320x320 (sx 1/2, sy 1/3); per-class cap 5 keeps the far box of candidate 4."""
    det = Detector.from_card(load_card(model_dir / f"{fmt}-resize.yaml"), "onnxruntime")
    rect = (100, 60, 300, 201)
    dets = det.detect(None, factory.rect_image(960, 640, rect))
    got = {(d.label, round(d.score, 5)): d.box.as_tuple() for d in dets}
    assert set(got) == {("CHEST", 0.9), ("CHEST", 0.7), ("HEAD", 0.6)}
    np.testing.assert_allclose(got[("CHEST", 0.9)], rect, atol=1e-9)
    np.testing.assert_allclose(got[("HEAD", 0.6)], rect, atol=1e-9)
    # candidate 4 is (W-20, H-20, W-4, H-4) = (300, 300, 316, 316) in the model input
    np.testing.assert_allclose(got[("CHEST", 0.7)], (600, 900, 632, 948), atol=1e-9)


def test_overrides_threshold_nms_classes(model_dir: Path) -> None:
    det = Detector.from_card(load_card(model_dir / "yolov8-resize.yaml"), "onnxruntime")
    img = factory.rect_image(960, 640, (100, 60, 300, 201))
    labels = lambda dets: sorted((d.label, round(d.score, 3)) for d in dets)  # noqa: E731
    assert labels(det.detect(None, img, score_threshold=0.01)) == [
        ("CHEST", 0.7), ("CHEST", 0.9), ("HEAD", 0.6), ("PELVIS", 0.05)
    ]  # fmt: skip
    # NMS threshold above the IoU of the 2 px shifted duplicate (0.98): it survives
    assert ("CHEST", 0.8) in labels(det.detect(None, img, nms_iou=0.99))
    assert labels(det.detect(None, img, classes=["HEAD"])) == [("HEAD", 0.6)]
    with pytest.raises(DecodeError, match=r"classes \['SPLEEN'\] are not in model"):
        det.detect(None, img, classes=["SPLEEN"])


def test_odd_sizes_map_back_within_a_model_pixel(model_dir: Path) -> None:
    det = Detector.from_card(load_card(model_dir / "yolov5.yaml"), "onnxruntime")
    for rows, cols, rect in (
        (517, 731, (33, 101, 480, 390)),
        (1023, 411, (5, 200, 400, 777)),
        (99, 101, (10, 10, 90, 90)),
    ):
        dets = det.detect(None, factory.rect_image(rows, cols, rect))
        chest = next(d for d in dets if d.label == "CHEST")
        scale = 320 / max(rows, cols)
        np.testing.assert_allclose(chest.box.as_tuple(), rect, atol=1.0 / scale + 1e-6)


def test_efficient_nms_center_coding_and_end2end() -> None:
    out = {
        "num_dets": np.array([[1]], dtype=np.int32),
        "det_boxes": np.array([[[0.5, 0.5, 0.2, 0.4]]], dtype=np.float32),  # cx cy w h, normalised
        "det_scores": np.array([[0.7]], dtype=np.float32),
        "det_classes": np.array([[0]], dtype=np.int32),
    }
    (c,) = decode(out, OutputSpec("efficient_nms", box_coding="center", normalized=True), 1, (100, 200))
    np.testing.assert_allclose(c.boxes, [[80, 30, 120, 70]], rtol=1e-6)
    e2e = np.array([[[10, 20, 30, 40, 0.9, 2.0], [0, 0, 0, 0, 0.0, 0.0]]], dtype=np.float32)
    (c,) = decode([e2e], OutputSpec("yolo_end2end"), 3, (100, 100))
    assert c.class_ids.tolist() == [2, 0] and c.boxes[0].tolist() == [10, 20, 30, 40]
    with pytest.raises(DecodeError, match="no decoder for output format 'detr'"):
        decode([e2e], OutputSpec("detr"), 3, (100, 100))
