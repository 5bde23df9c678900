"""The committed reference model (inference/models/reference): card and hashes, every CPU backend of the engine
agrees, and it really finds the regions on simulated localizers and radiographs (IoU > 0.5 with the truth)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inference.modelcard import ModelCardError, load_card
from inference.training.data import CLASSES, PRESENT_FRACTION, VAL_SEED_OFFSET, sim_randomize
from inference.training.metrics import box_iou

MODEL_DIR = Path(__file__).resolve().parents[1] / "inference" / "models" / "reference"
# seeds far from the training (0..) and held-out (1_000_000..) seeds
TEST_SEEDS = [(2_000_000 + i, kind) for i, kind in enumerate(["ct_frontal"] * 4 + ["ct_lateral"] * 2 + ["dx"] * 4)]


@pytest.fixture(scope="module")
def card():
    return load_card("builtin:reference")


@pytest.fixture(scope="module")
def cases():
    from inference.simulator import simulate_case

    return [simulate_case(seed, kind=kind, randomize=sim_randomize(seed, kind), size=320) for seed, kind in TEST_SEEDS]


def test_card_loads_with_verified_hashes(card) -> None:
    assert card.name == "dicom-node-reference-regions"
    assert card.class_names == CLASSES
    codes = {c.name: c.finding_site.value for c in card.classes}
    assert codes == {"HEAD": "69536005", "SPINE": "421060004", "CHEST": "816094009", "ABDOMEN": "818981001",
                     "PELVIS": "816092008"}  # fmt: skip
    assert all(c.finding_site.scheme == "SCT" for c in card.classes)
    assert card.output_format == "efficient_nms"
    assert card.weights.name == "model.onnx" and card.weights.stat().st_size <= 10 * 2**20
    assert card.torch_weights is not None and card.torch_weights.name == "model.pt"
    assert (MODEL_DIR / "TRAINING.md").is_file()


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "reference"
    shutil.copytree(MODEL_DIR, d)
    data = bytearray((d / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (d / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelCardError, match="SHA-256 mismatch for model.onnx"):
        load_card(d)


@pytest.mark.slow
def test_backends_agree_and_regions_are_found(card, cases) -> None:
    from inference.engine import Detector

    ort_det = Detector.from_card(card, "onnxruntime")
    torch_det = Detector.from_card(card, "torch")
    assert ort_det.backend.name == "onnxruntime-cpu" and torch_det.backend.name == "torch-cpu"
    found = missed = 0
    misses = []
    try:
        for case in cases:
            a = ort_det.detect(case.dataset, score_threshold=0.0)
            b = torch_det.detect(case.dataset, score_threshold=0.0)
            assert [d.label for d in a] == [d.label for d in b]
            for da, db in zip(a, b, strict=True):
                assert da.score == pytest.approx(db.score, abs=1e-4)
                assert np.allclose(da.box.as_tuple(), db.box.as_tuple(), atol=0.05)
            # batching through the engine gives the same boxes as one at a time
            (batched,) = ort_det.detect_batch([case.dataset], score_threshold=0.0)
            assert [d.box for d in batched] == [d.box for d in a]
            kept = {d.label: d for d in ort_det.detect(case.dataset)}  # the card's operating threshold
            for r in case.truth.regions:
                if r.visible_fraction < PRESENT_FRACTION:
                    continue
                d = kept.get(r.label)
                iou = box_iou(d.box.as_tuple(), r.box_px.as_tuple()) if d else 0.0
                if iou > 0.5:
                    found += 1
                else:
                    missed += 1
                    misses.append((case.truth.seed, case.truth.kind, r.label, round(iou, 2)))
    finally:
        ort_det.close()
        torch_det.close()
    assert found + missed >= 20
    assert found / (found + missed) >= 0.9, misses


@pytest.mark.slow
def test_evaluate_command_on_simulated_folder(tmp_path: Path, capsys) -> None:
    from dicom_node.cli import main
    from inference.training.data import write_simulated_dataset

    write_simulated_dataset(tmp_path / "sim", 8, seed0=VAL_SEED_OFFSET + 500_000)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", "builtin:reference", "--dataset", str(tmp_path / "sim"), "--backend",
                 "torch", "--json", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "| class | GT | ignored | AP50 | AP75 | AP@[.5:.95] | mean IoU |" in text
    assert "RSNA metric" in text
    import json

    doc = json.loads(out.read_text())
    assert doc["n_images"] == 8
    assert doc["map50"] > 0.7  # a broken model scores near 0 here


def test_real_labelled_images(realdata_dir: Path) -> None:
    """On the hand-labelled real images: every image is decoded and evaluated; the numbers are in MODEL_CARD.md."""
    from inference.training.evaluate import evaluate_model

    report, results, errors = evaluate_model("builtin:reference", realdata_dir / "labels.json", "onnxruntime")
    assert not errors, errors
    assert report.n_images == 6 and report.n_truths["HEAD"] == 0
    for c in ("CHEST", "ABDOMEN", "PELVIS"):
        assert report.ap50[c] >= 0.5, report.to_markdown()
