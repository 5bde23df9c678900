"""Preprocessing: intensity steps give the documented values; every geometric step is recorded and inverted
exactly (hypothesis round trips for resize/letterbox/crop/flip, odd sizes, portrait and landscape); the pixels
really land where the transform says; real DICOM files of every transfer syntax go through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from inference.modelcard import ModelCard, parse_card
from inference.preprocessing import (
    GeometricStep,
    PreprocessingError,
    Transform,
    boxes_to_original,
    preprocess,
)


def make_card(
    steps: list[Any], height: int = 320, width: int = 320, channels: int = 1, **extra: Any
) -> ModelCard:
    data = {
        "name": "pp",
        "version": "1",
        "weights": "w.onnx",
        "weights_sha256": "0" * 64,
        "classes": [
            {"name": "CHEST", "finding_site": {"code": "816094009", "scheme": "SCT", "meaning": "Chest"}}
        ],
        "input": {"height": height, "width": width, "channels": channels},
        "preprocessing": steps,
        "output_format": "yolov8",
        **extra,
    }
    return parse_card(data, Path("/tmp/pp/card.yaml"), check_weights=False)


def ds_with(pixels: np.ndarray, **attrs: Any) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = attrs.pop("PhotometricInterpretation", "MONOCHROME2")
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


# ------------------------------------------------------------------ intensity


def test_modality_lut_and_fixed_window() -> None:
    px = np.array([[0, 1000], [1024, 2048]], dtype=np.uint16)
    ds = ds_with(px, RescaleSlope=1, RescaleIntercept=-1024)
    card = make_card(["modality_lut", {"voi": {"mode": "fixed", "center": 0, "width": 2048}}, "resize"], 8, 8)
    out = preprocess(ds, card, pixels=px).tensor[0]
    # HU -1024, -24, 0, 1024 -> window [-1024, 1024] -> 0, 0.488, 0.5, 1.0 (then resized: check the corners)
    assert out[0, 0] == pytest.approx(0.0) and out[-1, -1] == pytest.approx(1.0)
    assert out[0, -1] == pytest.approx((1000 - 1024 + 1024) / 2048, abs=1e-6)


def test_header_window_dicom_linear_formula() -> None:
    px = np.array([[40 - 200, 40], [40 + 199.5, 40 + 500]], dtype=np.float32)
    ds = ds_with(px, WindowCenter=40, WindowWidth=400)
    card = make_card([{"voi": {"mode": "header"}}, "resize"], 8, 8)
    out = preprocess(ds, card, pixels=px).tensor[0]
    # PS3.3 C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped
    assert out[0, 0] == pytest.approx(max(0.0, (-200 + 0.5) / 399 + 0.5), abs=1e-6)
    assert out[0, -1] == pytest.approx(0.5 / 399 + 0.5, abs=1e-6)
    assert out[-1, -1] == pytest.approx(1.0)


def test_header_window_missing_falls_back_to_percentiles_with_note() -> None:
    px = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    card = make_card([{"voi": {"mode": "header", "low": 1, "high": 99}}, "resize"], 100, 100)
    prepared = preprocess(ds_with(px), card, pixels=px)
    assert any("percentile" in n for n in prepared.notes)
    lo, hi = np.percentile(px, [1, 99])
    assert prepared.tensor[0, 50, 50] == pytest.approx((px[50, 50] - lo) / (hi - lo), abs=1e-5)
    assert prepared.tensor.min() == 0.0 and prepared.tensor.max() == 1.0


def test_monochrome1_inverted_only_when_monochrome1() -> None:
    px = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    card = make_card(
        [{"voi": {"mode": "minmax"}}, "invert_monochrome1", {"resize": {"interpolation": "nearest"}}], 8, 8
    )
    m2 = preprocess(ds_with(px), card, pixels=px).tensor[0]
    m1 = preprocess(ds_with(px, PhotometricInterpretation="MONOCHROME1"), card, pixels=px).tensor[0]
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m2[0, 0] == 0.0 and m1[0, 0] == 1.0


def test_histogram_equalisation_flattens_the_histogram() -> None:
    rng = np.random.default_rng(1)
    px = (rng.beta(8, 2, size=(200, 300)) * 4000).astype(np.uint16)  # strongly skewed
    card = make_card([{"voi": {"mode": "minmax"}}, {"equalize_histogram": {"bins": 256}}, "resize"], 200, 300)
    out = preprocess(px, card).tensor[0]
    hist, _ = np.histogram(out, bins=4, range=(0, 1))
    assert hist.min() > 0.15 * out.size  # each quarter of the range now holds roughly a quarter of the pixels
    ranks = np.argsort(np.argsort(px.ravel(), kind="stable"), kind="stable")
    assert np.corrcoef(ranks, out.ravel())[0, 1] > 0.99  # monotone mapping


def test_equalisation_before_voi_is_refused() -> None:
    card = make_card([{"equalize_histogram": {}}, "resize"], 8, 8)
    with pytest.raises(PreprocessingError, match="put a voi step before it"):
        preprocess(np.ones((10, 10)), card)


def test_constant_image_is_reported_not_invented() -> None:
    card = make_card([{"voi": {"mode": "percentile"}}, "letterbox"], 16, 16)
    prepared = preprocess(np.full((10, 12), 7, dtype=np.uint16), card)
    assert not prepared.tensor.any()
    assert any("constant image" in n for n in prepared.notes)


def test_three_channels_and_normalize() -> None:
    px = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    card = make_card(["resize", {"normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}],
                     8, 8, channels=3)  # fmt: skip
    t = preprocess(px, card).tensor
    assert t.shape == (3, 8, 8) and t.dtype == np.float32
    np.testing.assert_allclose(t[1], (px - 0.456) / 0.224, atol=1e-5)


def test_missing_geometric_step_is_a_clear_error() -> None:
    card = make_card([{"voi": {"mode": "minmax"}}], 32, 32)
    with pytest.raises(PreprocessingError, match="add a resize or letterbox step"):
        preprocess(np.zeros((20, 30)), card)


# ------------------------------------------------------------------ transforms

sizes = st.integers(min_value=9, max_value=3001)
model_sizes = st.sampled_from(
    [(256, 256), (320, 320), (300, 300), (640, 480), (384, 640), (512, 512), (97, 131)]
)


def _letterbox_step(rows: int, cols: int, H: int, W: int) -> GeometricStep:
    s = min(H / rows, W / cols)
    nr, nc = max(1, min(H, round(rows * s))), max(1, min(W, round(cols * s)))
    return GeometricStep(
        "letterbox", (rows, cols), (H, W), nc / cols, float((W - nc) // 2), nr / rows, float((H - nr) // 2)
    )


@st.composite
def box_in(draw: Any, rows: int, cols: int) -> np.ndarray:
    x0 = draw(st.floats(0, cols - 1, allow_nan=False))
    y0 = draw(st.floats(0, rows - 1, allow_nan=False))
    x1 = draw(st.floats(x0, cols, allow_nan=False))
    y1 = draw(st.floats(y0, rows, allow_nan=False))
    return np.array([[x0, y0, x1, y1]])


@settings(max_examples=300, deadline=None)
@given(
    rows=sizes, cols=sizes, model=model_sizes, kind=st.sampled_from(["resize", "letterbox"]), data=st.data()
)
def test_round_trip_resize_letterbox(
    rows: int, cols: int, model: tuple[int, int], kind: str, data: Any
) -> None:
    H, W = model
    step = (GeometricStep("resize", (rows, cols), (H, W), W / cols, 0.0, H / rows, 0.0) if kind == "resize"
            else _letterbox_step(rows, cols, H, W))  # fmt: skip
    t = Transform((rows, cols)).then(step)
    box = data.draw(box_in(rows, cols))
    back = t.boxes_to_original(t.boxes_to_model(box), clip=False)
    np.testing.assert_allclose(back, box, rtol=0, atol=1e-9 * max(rows, cols))
    # the image corners land on the content area of the model input (inside it, touching it for resize)
    corners = t.points_to_model(np.array([[0.0, 0.0], [cols, rows]]))
    assert corners.min() >= -1e-9 and corners[1, 0] <= W + 1e-9 and corners[1, 1] <= H + 1e-9


@settings(max_examples=150, deadline=None)
@given(rows=sizes, cols=sizes, flip_h=st.booleans(), flip_v=st.booleans(), data=st.data())
def test_round_trip_crop_flip_letterbox_chain(
    rows: int, cols: int, flip_h: bool, flip_v: bool, data: Any
) -> None:
    r0 = data.draw(st.integers(0, rows // 3))
    c0 = data.draw(st.integers(0, cols // 3))
    cr, cc = (
        rows - r0 - data.draw(st.integers(0, rows // 3)),
        cols - c0 - data.draw(st.integers(0, cols // 3)),
    )
    t = Transform((rows, cols)).then(GeometricStep("crop", (rows, cols), (cr, cc), 1.0, -c0, 1.0, -r0))
    t = t.then(GeometricStep("flip", (cr, cc), (cr, cc), -1.0 if flip_h else 1.0, cc if flip_h else 0.0,
                             -1.0 if flip_v else 1.0, cr if flip_v else 0.0))  # fmt: skip
    t = t.then(_letterbox_step(cr, cc, 320, 320))
    box = data.draw(box_in(rows, cols))
    back = t.boxes_to_original(t.boxes_to_model(box), clip=False)
    np.testing.assert_allclose(back, box, rtol=0, atol=1e-9 * max(rows, cols))
    sx, tx, sy, ty = t.affine()  # the composed map agrees with the step-by-step one
    np.testing.assert_allclose(t.points_to_model(box[:, :2]), box[:, :2] * [sx, sy] + [tx, ty], atol=1e-9)


def test_clip_to_original_and_chain_size_check() -> None:
    t = Transform((100, 200)).then(_letterbox_step(100, 200, 320, 320))  # content rows 80..240 of the input
    out = boxes_to_original(np.array([[0.0, 0.0, 320.0, 320.0]]), t)
    np.testing.assert_allclose(out, [[0, 0, 200, 100]])
    with pytest.raises(ValueError, match="expects size"):
        t.then(GeometricStep("resize", (10, 10), (5, 5), 0.5, 0, 0.5, 0))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(17, 700), cols=st.integers(17, 700), kind=st.sampled_from(["resize", "letterbox"]),
    flip=st.booleans(), data=st.data(),
)  # fmt: skip
def test_pixels_land_where_the_transform_says(rows: int, cols: int, kind: str, flip: bool, data: Any) -> None:
    """A bright rectangle drawn in the original is found in the model input at transform.boxes_to_model(box)."""
    x0 = data.draw(st.integers(0, cols - 8))
    y0 = data.draw(st.integers(0, rows - 8))
    x1 = data.draw(st.integers(x0 + 8, cols))
    y1 = data.draw(st.integers(y0 + 8, rows))
    img = np.zeros((rows, cols), dtype=np.uint16)
    img[y0:y1, x0:x1] = 1000
    steps: list[Any] = [{"voi": {"mode": "fixed", "center": 500, "width": 1000}}]
    if flip:
        steps.append({"flip": {"horizontal": True, "vertical": True}})
    steps.append({kind: {"interpolation": "bilinear"}})
    card = make_card(steps, 160, 224)
    prepared = preprocess(img, card)
    mask = prepared.tensor[0] > 0.5
    ys, xs = np.nonzero(mask)
    expected = prepared.transform.boxes_to_model(np.array([[x0, y0, x1, y1]], dtype=float))[0]
    if xs.size == 0:  # rectangle thinner than half a model pixel: nothing above 0.5 is expected
        assert min(expected[2] - expected[0], expected[3] - expected[1]) < 2.0
        return
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
    np.testing.assert_allclose(found, expected, atol=1.0)  # within one model pixel (resampling blurs edges)


# ------------------------------------------------------------------ real data

CARD_REAL = ["modality_lut", {"voi": {"mode": "percentile", "low": 1, "high": 99}}, "invert_monochrome1",
             {"equalize_histogram": {}}, {"letterbox": {"pad_value": 0.0}}]  # fmt: skip


@pytest.mark.slow
def test_real_files_every_transfer_syntax(realdata_files: list[Path]) -> None:
    card = make_card(CARD_REAL, 320, 320)
    seen = 0
    for path in realdata_files:
        ds = pydicom.dcmread(path)
        try:
            prepared = preprocess(ds, card)
        except PreprocessingError as exc:
            assert path.name.startswith("hard_"), f"{path.name}: {exc}"
            assert "could not be decoded" in str(exc)
            continue
        seen += 1
        t = prepared.tensor
        assert t.shape == (1, 320, 320) and t.dtype == np.float32 and np.isfinite(t).all()
        assert 0.0 <= t.min() and t.max() <= 1.0 and t.std() > 0.05, path.name
        assert prepared.transform.original_size == (int(ds.Rows), int(ds.Columns))
        # the whole original image maps onto the letterboxed content area and back exactly
        full = np.array([[0.0, 0.0, ds.Columns, ds.Rows]])
        np.testing.assert_allclose(
            prepared.transform.boxes_to_original(prepared.transform.boxes_to_model(full)), full
        )
    assert seen >= 8


def test_labelled_boxes_round_trip(realdata_dir: Path) -> None:
    labels = json.loads((realdata_dir / "labels.json").read_text())
    card = make_card([{"voi": {"mode": "minmax"}}, "letterbox"], 256, 256)
    for entry in labels["images"]:
        t = Transform((entry["rows"], entry["columns"]))
        t = t.then(_letterbox_step(entry["rows"], entry["columns"], card.input.height, card.input.width))
        for b in entry["boxes"]:
            x0, y0, x1, y1 = b["box"]
            corners = np.array([[x0, y0, x1 + 1.0, y1 + 1.0]])  # inclusive centres -> SCOORD corners
            np.testing.assert_allclose(t.boxes_to_original(t.boxes_to_model(corners)), corners, atol=1e-9)


def test_crop_to_content_is_recorded_and_inverted() -> None:
    """A radiograph with a dark collimation border: the crop is part of the transform, boxes come back exactly."""
    img = np.zeros((600, 500), dtype=np.uint16)
    img[50:560, 40:470] = 300  # exposed field
    img[200:300, 100:400] = 1000  # bright object
    card = make_card([{"voi": {"mode": "minmax"}}, {"crop_to_content": {"threshold": 0.1, "margin": 2}}, "letterbox"],
                     256, 256)  # fmt: skip
    prepared = preprocess(img, card)
    assert [s.op for s in prepared.transform.steps] == ["crop", "letterbox"]
    assert prepared.transform.steps[0].size_out == (514, 434)  # field plus the 2 px margin
    ys, xs = np.nonzero(prepared.tensor[0] > 0.5)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=float)
    np.testing.assert_allclose(prepared.transform.boxes_to_original(found), [[100, 200, 400, 300]], atol=2.0)
    blank = preprocess(np.zeros((50, 60)), card)
    assert any("crop_to_content: no pixel above" in n for n in blank.notes)
