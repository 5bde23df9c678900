"""Training pieces: dataset loaders (YOLO txt, COCO JSON, labels.json), augmentation geometry, the training loop
(loss decreases on a tiny generated dataset) and the export (ONNX + TorchScript + card that the engine loads)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.training.augment import AugmentConfig, augment
from inference.training.data import (
    CLASSES,
    DatasetError,
    load_coco,
    load_dataset,
    load_labels_json,
    load_yolo,
    truths_from_regions,
)


def _png(path: Path, rows: int, cols: int, boxes: Sequence[tuple[float, float, float, float]] = ()) -> None:
    """A dark image with a bright rectangle per box (x1 y1 x2 y2 in pixel corners)."""
    a = np.full((rows, cols), 20, np.uint8)
    for x0, y0, x1, y1 in boxes:
        a[int(y0) : int(y1), int(x0) : int(x1)] = 200
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


# ---------------------------------------------------------------------------------------------- loaders


def test_yolo_loader_hand_values(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    _png(root / "images" / "train" / "a.png", 100, 200)
    _png(root / "images" / "train" / "b.png", 50, 50)
    (root / "labels" / "train").mkdir(parents=True)
    # class 1 = chest: centre (0.5, 0.25), size (0.5, 0.3) of 200 x 100 -> x 50..150, y 10..40
    # class 3 = "neck" is not one of ours: skipped and counted
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.25 0.5 0.3\n3 0.5 0.5 0.1 0.1\n\n0 0.1 0.9 0.4 0.4\n")
    (root / "data.yaml").write_text("names: {0: head, 1: chest, 2: pelvis, 3: neck}\n")
    samples, info = load_yolo(root)
    assert [s.key for s in samples] == ["images/train/a.png", "images/train/b.png"]
    a = samples[0]
    assert (a.rows, a.columns) == (100, 200)
    assert [t.label for t in a.truths] == ["CHEST", "HEAD"]
    assert a.truths[0].box == pytest.approx((50.0, 10.0, 150.0, 40.0))
    # HEAD box x -0.1..0.3, y 0.7..1.1 of the image: clipped to the image
    assert a.truths[1].box == pytest.approx((0.0, 70.0, 60.0, 100.0))
    assert samples[1].truths == ()  # no label file: a negative image
    assert info.skipped == {"NECK": 1}
    assert load_dataset(root)[1].format == "yolo"


def test_yolo_loader_errors(tmp_path: Path) -> None:
    root = tmp_path / "y"
    _png(root / "images" / "a.png", 10, 10)
    (root / "labels").mkdir()
    with pytest.raises(DatasetError, match="class names"):
        load_yolo(root)
    (root / "classes.txt").write_text("chest\n")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(DatasetError, match=r"a.txt:1: expected 'class cx cy w h'"):
        load_yolo(root)
    (root / "labels" / "a.txt").write_text("4 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match="class index 4 outside the 1 names"):
        load_yolo(root)


def test_coco_loader_hand_values(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "x.png", 300, 400)
    doc = {
        "images": [{"id": 7, "file_name": "x.png", "width": 400, "height": 300}],
        "categories": [{"id": 1, "name": "Abdomen"}, {"id": 2, "name": "Pelvis"}, {"id": 3, "name": "knee"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 100, 50], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [350, 250, 100, 100], "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5]},
        ],
    }
    p = tmp_path / "instances.json"
    p.write_text(json.dumps(doc))
    samples, info = load_coco(p)
    (s,) = samples
    assert s.path == tmp_path / "images" / "x.png"
    assert [(t.label, t.ignore) for t in s.truths] == [("ABDOMEN", False), ("PELVIS", True)]
    assert s.truths[0].box == pytest.approx((10.0, 20.0, 110.0, 70.0))  # x, y, w, h -> corners
    assert s.truths[1].box == pytest.approx((350.0, 250.0, 400.0, 300.0))  # clipped to 400 x 300
    assert info.skipped == {"KNEE": 1}
    assert load_dataset(tmp_path)[1].format == "coco"
    doc["annotations"][0]["image_id"] = 99
    p.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="unknown image 99"):
        load_coco(p)


def test_labels_json_real(realdata_dir: Path) -> None:
    samples, info = load_labels_json(realdata_dir / "labels.json")
    by = {s.key: s for s in samples}
    assert len(samples) == 6 and not info.skipped
    loc = by["loc_philips_MAROTECH_CT_JP2Lossy.dcm"]
    assert loc.is_dicom and (loc.rows, loc.columns) == (716, 512)
    chest = next(t for t in loc.truths if t.label == "CHEST")
    assert chest.box == (108.0, 40.0, 381.0, 279.0)  # inclusive pixel centres -> corners
    assert not chest.ignore
    spine = next(t for t in by["loc_philips_surview_fodicom_GH342.dcm"].truths if t.label == "SPINE")
    assert spine.ignore  # confidence "low"
    assert all(t.label != "HEAD" for s in samples for t in s.truths)


def test_simulator_regions_to_truth() -> None:
    regions = [
        {"label": "chest", "box_px": [10, 10, 100, 120], "visible_fraction": 1.0},
        {"label": "ABDOMEN", "box_px": [10, 100, 100, 130], "visible_fraction": 0.3},  # partly in: ignore
        {"label": "PELVIS", "box_px": [10, 128, 100, 130], "visible_fraction": 0.05},  # barely in: absent
        {"label": "HEAD", "box_px": None, "visible_fraction": 0.0},
    ]
    t = truths_from_regions(regions, 120, 130)
    assert [(x.label, x.ignore) for x in t] == [("CHEST", False), ("ABDOMEN", True)]
    assert t[0].box == (10.0, 10.0, 100.0, 120.0)


def test_load_dataset_rejects_unknown(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not a recognised dataset"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------------------------------------- augmentation


def _bright_bbox(img: np.ndarray, thr: float) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(img > thr)
    return (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)


@pytest.mark.parametrize("seed", range(12))
def test_augment_geometry_follows_the_pixels(seed: int) -> None:
    """Crops, padding, flips and 90-degree turns move the box exactly with the bright rectangle it encloses."""
    rows, cols = 120, 90
    img = np.zeros((rows, cols), np.float32)
    box = np.array([[20.0, 30.0, 60.0, 100.0]])
    img[30:100, 20:60] = 1000.0
    cfg = AugmentConfig(p_crop=0.7, crop_min=0.6, p_pad=0.5, p_hflip=0.5, p_vflip=0.5, p_rot90=0.5, p_rotate=0.0, p_bright_fill=0,
                        p_gamma=0, p_invert=0, p_noise=0, p_blur=0, p_collimate=0, p_lowres=0, p_table=0)
    out, b, f = augment(img, box, np.array([1.0]), np.random.default_rng(seed), cfg)
    if f[0] == 0:
        assert not (out > 500).any()
        return
    assert _bright_bbox(out, 500) == pytest.approx(tuple(b[0]), abs=1e-6)
    area = (b[0, 2] - b[0, 0]) * (b[0, 3] - b[0, 1])
    assert f[0] == pytest.approx(area / (40 * 70))


def test_augment_rotation_and_intensity() -> None:
    img = np.zeros((100, 100), np.float32)
    img[20:80, 30:70] = 1.0
    box = np.array([[30.0, 20.0, 70.0, 80.0]])
    cfg = AugmentConfig(p_crop=0, p_pad=0, p_hflip=0, p_vflip=0, p_rot90=0, p_rotate=1.0, max_rotate_deg=8)
    for seed in range(5):
        out, b, f = augment(img, box, np.array([1.0]), np.random.default_rng(seed), cfg)
        assert out.shape == img.shape and out.dtype == np.float32
        # the rotated rectangle's centre stays the box centre; the box lies between the original and the enclosure
        assert (b[0, 0] + b[0, 2]) / 2 == pytest.approx(50.0, abs=1e-6)
        assert 40 - 1e-6 <= b[0, 2] - b[0, 0] <= 40 + 60 * np.sin(np.radians(8)) + 1e-6
        assert f[0] == pytest.approx(1.0)
    # same seed, same result (fixed seeds make training reproducible)
    a1 = augment(img, box, np.array([1.0]), np.random.default_rng(3))
    a2 = augment(img, box, np.array([1.0]), np.random.default_rng(3))
    assert np.array_equal(a1[0], a2[0]) and np.array_equal(a1[1], a2[1])


# ---------------------------------------------------------------------------------------------- training loop


def _toy_yolo(root: Path, n: int = 12) -> Path:
    """Tiny YOLO dataset: CHEST a bright block at the top, PELVIS one at the bottom, sizes varying."""
    rng = np.random.default_rng(0)
    (root / "labels").mkdir(parents=True)
    (root / "data.yaml").write_text("names: [head, spine, chest, abdomen, pelvis]\n")
    for i in range(n):
        rows, cols = 96, 64
        h1, h2 = int(rng.integers(20, 35)), int(rng.integers(20, 35))
        chest = (8, 5, 56, 5 + h1)
        pelvis = (12, 90 - h2, 52, 90)
        _png(root / "images" / f"{i}.png", rows, cols, [chest, pelvis])
        lines = []
        for cls, (x0, y0, x1, y1) in ((2, chest), (4, pelvis)):
            lines.append(f"{cls} {(x0 + x1) / 2 / cols} {(y0 + y1) / 2 / rows} {(x1 - x0) / cols} {(y1 - y0) / rows}")
        (root / "labels" / f"{i}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow  # a real (short) training run with torch: in `make test`, not `make test-fast`
def test_training_loop_loss_decreases_and_export_loads(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from inference.modelcard import load_card
    from inference.preprocessing import preprocess
    from inference.training.train import TrainConfig, dataset_set, train

    data = dataset_set(_toy_yolo(tmp_path / "toy"), side=96)
    assert len(data) == 12 and (data.frac[:, CLASSES.index("CHEST")] == 1).all()
    cfg = TrainConfig(steps=40, batch=8, lr=3e-3, input_size=64, width=8, workers=0, threads=1, eval_every=0,
                      log_every=5, n_val=0, augment=AugmentConfig(p_crop=0, p_pad=0, p_rotate=0, p_rot90=0, p_vflip=0))
    summary = train(cfg, tmp_path / "model", train_sets=[data], val_set=data, progress=lambda m: None)
    hist = summary["history"]
    assert hist[0]["step"] == 1 and hist[-1]["step"] == 40
    assert hist[-1]["total"] < 0.6 * hist[0]["total"], hist
    card = load_card(tmp_path / "model")  # verifies both SHA-256
    assert card.class_names == CLASSES and card.output_format == "efficient_nms"
    assert card.input.height == 64 and card.torch_weights is not None
    assert (tmp_path / "model" / "model.onnx").stat().st_size < 10 * 2**20
    # the exported graph runs in onnxruntime on an engine-preprocessed image
    import onnxruntime as ort

    sess = ort.InferenceSession(str(card.weights), providers=["CPUExecutionProvider"])
    x = preprocess(np.asarray(Image.open(tmp_path / "toy" / "images" / "0.png"), np.float32), card).tensor[None]
    num, boxes, scores, classes = sess.run(None, {"images": x})
    assert num.tolist() == [[5]] and boxes.shape == (1, 5, 4) and classes.tolist() == [[0, 1, 2, 3, 4]]
    assert summary["heldout"]["n_images"] == 12


@pytest.mark.parametrize(
    "name", ["cr_fuji_chest_CR-MONO1-10-chest.dcm", "loc_philips_surview_fodicom_GH342.dcm"]
)
def test_training_inputs_match_engine_inputs(realdata_dir: Path, name: str) -> None:
    """Training feeds presentation pixels (modality LUT applied, MONOCHROME1 inverted) to the engine's preprocess;
    inference feeds the dataset. Both must give the same model input (MONOCHROME1 and a rescaled CT here)."""
    import pydicom

    from inference.preprocessing import preprocess
    from inference.training.export import template_card
    from inference.training.train import presentation_pixels

    card = template_card(256)
    ds = pydicom.dcmread(realdata_dir / name)
    engine = preprocess(ds, card).tensor
    training = preprocess(presentation_pixels(ds), card).tensor
    assert engine.shape == training.shape == (1, 256, 256)
    # equalisation bins can flip by one at exact ties after the inversion: allow one bin step (1/255 / std 0.25)
    assert np.abs(engine - training).max() <= 4 / 255 * 1.01
    assert np.abs(engine - training).mean() < 1e-3


def test_negative_patches_make_regions_absent() -> None:
    """A small patch (15-40 % of each side) keeps too little of a large region: its visible fraction drops below
    the ignore level, so the sample teaches 'absent' (limbs, background, zoomed-in fragments)."""
    img = np.zeros((200, 100), np.float32)
    img[20:180, 10:90] = 1.0
    cfg = AugmentConfig(p_patch=1.0, p_pad=0, p_rotate=0, p_rot90=0, p_collimate=0)
    for seed in range(8):
        out, b, f = augment(img, np.array([[10.0, 20.0, 90.0, 180.0]]), np.array([1.0]), np.random.default_rng(seed),
                            cfg)  # fmt: skip
        assert out.shape[0] <= 0.4 * 200 + 1 and out.shape[1] <= 0.4 * 100 + 1
        assert f[0] <= 0.4 * 0.4 * 200 * 100 / (80 * 160) + 1e-9
