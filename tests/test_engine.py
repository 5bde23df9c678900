"""Engine: the thread-safe MicroBatcher, Detector batching and threads, real DICOM files end to end, the
DetectorPool with gate -> heavy cascades (heavy loaded only when the gate fires), and the `infer` command."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.cli import main as cli_main
from inference.cascade import models_to_preload, run_cascade, run_detectors
from inference.engine import DetectItem, Detector, DetectorPool, MicroBatcher
from inference.modelcard import ModelCard, ModelCardError, load_card
from inference.orientation import canonical_orientation
from inference.preprocessing import PreprocessingError, orient_step, stored_pixels
from nodecore.config_schema import DetectorSpec, ModelSpec
from tests import onnx_factory as factory

RECT = (100, 60, 300, 200)

# ------------------------------------------------------------------ MicroBatcher


def test_microbatcher_groups_concurrent_items() -> None:
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        time.sleep(0.01)
        return [x * 2 for x in items]

    mb = MicroBatcher(fn, max_batch=4, max_wait_ms=200)
    barrier = threading.Barrier(16)
    results: dict[int, int] = {}

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = mb.submit(i).result(timeout=10)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mb.close()
    assert results == {i: 2 * i for i in range(16)}
    assert sum(mb.batch_sizes) == 16 and max(mb.batch_sizes) <= 4
    assert max(mb.batch_sizes) > 1, f"no batching happened: {mb.batch_sizes}"
    assert sorted(x for c in calls for x in c) == list(range(16))


def test_microbatcher_errors_and_lifecycle() -> None:
    def fn(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky batch")
        return items if 7 not in items else items[:-1]

    mb = MicroBatcher(fn, max_batch=1, max_wait_ms=0)
    with pytest.raises(ValueError, match="unlucky batch"):
        mb.submit(13).result(timeout=5)
    with pytest.raises(RuntimeError, match="returned 0 results for 1 items"):
        mb(7)
    assert mb(3) == 3  # the worker survives failures
    mb.close()
    with pytest.raises(RuntimeError, match="closed"):
        mb.submit(1)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        MicroBatcher(fn, max_batch=0)


def test_microbatcher_close_runs_what_is_queued() -> None:
    mb: MicroBatcher[int, int] = MicroBatcher(lambda items: [x + 1 for x in items], max_batch=100, max_wait_ms=60_000)
    fut = mb.submit(41)
    mb.close()
    assert fut.result(timeout=5) == 42


# ------------------------------------------------------------------ Detector


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="torch builds the tiny ONNX test models")
    d = tmp_path_factory.mktemp("engine_models")
    gate_onnx = factory.build_format_model("yolov8", d)
    heavy_onnx = factory.build_format_model("yolo_end2end", d)
    factory.write_card(d, factory.card_dict(gate_onnx, "yolov8", name="gate"), "gate.yaml")
    factory.write_card(d, factory.card_dict(heavy_onnx, "yolo_end2end", name="heavy"), "heavy.yaml")
    card_gated = factory.card_dict(heavy_onnx, "yolo_end2end", name="heavy-carded",
                                   gate={"model": "gate", "classes": ["CHEST"], "threshold": 0.5})  # fmt: skip
    factory.write_card(d, card_gated, "heavy-carded.yaml")
    real = factory.card_dict(
        gate_onnx, "yolov8", name="real",
        preprocessing=["modality_lut", {"voi": {"mode": "percentile", "low": 1, "high": 99}}, "invert_monochrome1",
                       {"letterbox": {"pad_value": 0.0}}],
    )  # fmt: skip
    factory.write_card(d, real, "real.yaml")
    return d


def _boxes(dets: list[Any]) -> list[tuple[str, float, tuple[float, ...]]]:
    return [(d.label, round(d.score, 6), tuple(round(v, 6) for v in d.box.as_tuple())) for d in dets]


def test_detect_batch_equals_single_detects(models: Path) -> None:
    det = Detector.from_card(load_card(models / "gate.yaml"), "onnxruntime", max_batch=2)
    assert det.warm
    imgs = [factory.rect_image(480, 640, RECT), factory.rect_image(700, 300, (20, 30, 250, 600)),
            factory.rect_image(64, 64, (8, 8, 40, 56)), np.zeros((100, 100), dtype=np.uint16)]  # fmt: skip
    single = [_boxes(det.detect(None, im)) for im in imgs]
    batched = [_boxes(x) for x in det.detect_batch([DetectItem(None, im) for im in imgs])]
    assert batched == single
    assert single[0][0] == ("CHEST", 0.9, (100.0, 60.0, 300.0, 200.0))
    assert single[3] == []


def test_detect_from_threads_through_the_batcher(models: Path) -> None:
    det = Detector.from_card(load_card(models / "gate.yaml"), "onnxruntime", max_batch=4, max_wait_ms=100)
    rects = [(10 + 7 * i, 20 + 3 * i, 200 + 5 * i, 150 + 9 * i) for i in range(8)]
    imgs = [factory.rect_image(480, 640, r) for r in rects]
    expected = [_boxes(det.detect(None, im)) for im in imgs]
    got: dict[int, Any] = {}
    barrier = threading.Barrier(len(imgs))

    def worker(i: int) -> None:
        barrier.wait()
        got[i] = _boxes(det.detect(None, imgs[i], use_batcher=True))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(imgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    det.close()
    assert [got[i] for i in range(len(imgs))] == expected
    assert sum(det.batcher.batch_sizes) == len(imgs) and max(det.batcher.batch_sizes) > 1


def _finder_box_in_original(tensor: np.ndarray, rows: int, cols: int, size: int = 320) -> np.ndarray | None:
    """Independent re-computation: the RectFinder box on the model input, undone with the letterbox formula."""
    ys, xs = np.nonzero(tensor[0] > 0.5)
    if xs.size == 0:
        return None
    s = min(size / rows, size / cols)
    nr, nc = round(rows * s), round(cols * s)
    top, left = (size - nr) // 2, (size - nc) // 2
    x0, x1 = (xs.min() - left) * cols / nc, (xs.max() + 1 - left) * cols / nc
    y0, y1 = (ys.min() - top) * rows / nr, (ys.max() + 1 - top) * rows / nr
    return np.clip([x0, y0, x1, y1], 0, [cols, rows, cols, rows])


@pytest.mark.slow
def test_real_files_end_to_end(models: Path, realdata_files: list[Path]) -> None:
    """Every decodable real file (all transfer syntaxes, MONOCHROME1, 16-bit) through a detector; boxes in
    ORIGINAL pixels agree with an independent computation; the undecodable file is a clear error."""
    det = Detector.from_card(load_card(models / "real.yaml"), "onnxruntime")
    done = 0
    for path in realdata_files:
        ds = pydicom.dcmread(path)
        try:
            pixels = stored_pixels(ds)
        except PreprocessingError as exc:
            assert path.name.startswith("hard_"), f"{path.name}: {exc}"
            continue
        prepared = det.prepare(ds, pixels)
        dets = det.detect(ds, pixels)
        # the image is first turned head-up (inference.orientation; e.g. the Rentgenprom DX, Patient Orientation
        # H\\L): the letterbox is undone in the turned frame, then the turn (tests/test_orientation.py checks it)
        turn = canonical_orientation(ds)
        rows, cols = turn.output_size(int(ds.Rows), int(ds.Columns))
        expected = _finder_box_in_original(prepared.tensor, rows, cols)
        if expected is not None:
            back = orient_step(turn, int(ds.Rows), int(ds.Columns)).backward(expected.reshape(2, 2))
            expected = np.concatenate([back.min(axis=0), back.max(axis=0)])
        chest = [d for d in dets if d.label == "CHEST"]
        if expected is None:
            assert chest == [], path.name
            continue
        assert len(chest) == 1, path.name
        np.testing.assert_allclose(chest[0].box.as_tuple(), expected, atol=1e-6, err_msg=path.name)
        assert chest[0].box.x_max <= ds.Columns and chest[0].box.y_max <= ds.Rows
        done += 1
    assert done >= 8


# ------------------------------------------------------------------ pool and cascades


class CountingDetector(Detector):
    """A real Detector that counts its detect calls."""

    calls: dict[str, int] = {}

    def detect(self, *args: Any, **kwargs: Any) -> Any:
        CountingDetector.calls[self.card.name] = CountingDetector.calls.get(self.card.name, 0) + 1
        return super().detect(*args, **kwargs)


def _pool(models: Path) -> DetectorPool:
    specs = {
        name: ModelSpec(name=name, card=str(models / f"{name}.yaml"), backend="onnxruntime")
        for name in ("gate", "heavy", "heavy-carded")
    }

    def loader(spec: ModelSpec, card: ModelCard) -> Detector:
        from inference.backends import open_backend

        det = CountingDetector(card, open_backend(card, spec.backend), max_batch=spec.max_batch)
        det.warmup()
        return det

    CountingDetector.calls = {}
    return DetectorPool(specs, loader=loader)


def _ds(modality: str = "CR") -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    return ds


def test_cascade_heavy_loaded_only_when_gate_fires(models: Path) -> None:
    pool = _pool(models)
    specs = (DetectorSpec(model="heavy", gate="gate", gate_classes=("CHEST",), gate_threshold=0.5),)
    assert models_to_preload(specs, pool) == ["gate"]
    pool.preload(models_to_preload(specs, pool))
    blank = np.zeros((480, 640), dtype=np.uint16)
    out = run_cascade(_ds(), specs, pool, pixels=blank)
    assert out.detections == () and not pool.is_loaded("heavy")
    assert out.runs[0].ran is False and out.runs[0].reason == "gate gate did not fire (CHEST >= 0.5)"

    out = run_cascade(_ds(), specs, pool, pixels=factory.rect_image(480, 640, RECT))
    assert pool.is_loaded("heavy")
    assert [(d.label, d.model.name) for d in out.detections] == [("CHEST", "heavy"), ("HEAD", "heavy")]
    assert out.detections[0].box.as_tuple() == (100.0, 60.0, 300.0, 200.0)
    assert [name for name, _ in pool.load_log] == ["gate", "heavy"]


def test_gate_class_and_threshold(models: Path) -> None:
    pool = _pool(models)
    img = factory.rect_image(
        640, 640, RECT
    )  # square: no letterbox bars, so the PELVIS box at (0, 0) is inside
    # the gate's PELVIS score is 0.05: gating on PELVIS at 0.5 never fires
    specs = (DetectorSpec(model="heavy", gate="gate", gate_classes=("PELVIS",), gate_threshold=0.5),)
    assert run_detectors(_ds(), specs, pool, pixels=img) == [] and not pool.is_loaded("heavy")
    # ... but at 0.01 it does
    specs = (DetectorSpec(model="heavy", gate="gate", gate_classes=("PELVIS",), gate_threshold=0.01),)
    assert len(run_detectors(_ds(), specs, pool, pixels=img)) == 2


def test_gate_runs_once_for_several_detectors_and_card_gate(models: Path) -> None:
    pool = _pool(models)
    specs = (
        DetectorSpec(model="gate"),  # the gate's own detections are wanted too
        DetectorSpec(model="heavy", gate="gate", gate_threshold=0.5, classes=("HEAD",)),
        DetectorSpec(model="heavy-carded"),  # gate named in its card: gate, CHEST >= 0.5
    )
    assert models_to_preload(specs, pool) == ["gate"]
    out = run_cascade(_ds(), specs, pool, pixels=factory.rect_image(480, 640, RECT))
    assert [r.ran for r in out.runs] == [True, True, True]
    assert [(d.model.name, d.label) for d in out.detections] == [
        ("gate", "CHEST"), ("gate", "HEAD"), ("heavy", "HEAD"), ("heavy-carded", "CHEST"), ("heavy-carded", "HEAD")
    ]  # fmt: skip
    # "gate" ran once for its own spec and once (shared, threshold 0.5) for both gated specs
    assert CountingDetector.calls["gate"] == 2


def test_modality_not_intended_is_skipped_with_reason(models: Path) -> None:
    pool = _pool(models)
    out = run_cascade(
        _ds("MR"), (DetectorSpec(model="gate"),), pool, pixels=factory.rect_image(480, 640, RECT)
    )
    assert out.detections == () and "modality MR not intended for gate" in out.runs[0].reason
    assert not pool.is_loaded("gate")


def test_pool_validates_every_card_at_start(models: Path, tmp_path: Path) -> None:
    data = factory.card_dict(models / "yolov8.onnx", "yolov8")
    data["weights_sha256"] = "1" * 64
    (tmp_path / "yolov8.onnx").write_bytes((models / "yolov8.onnx").read_bytes())
    bad = factory.write_card(tmp_path, data, "bad.yaml")
    with pytest.raises(ModelCardError, match="SHA-256 mismatch"):
        DetectorPool({"bad": ModelSpec(name="bad", card=str(bad))})
    with pytest.raises(KeyError, match="model 'nope' is not configured"):
        _pool(models).get("nope")


# ------------------------------------------------------------------ the infer command


def test_infer_command_json_and_text(
    models: Path, realdata_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = realdata_dir / "loc_philips_surview_fodicom_GH342.dcm"
    rc = cli_main(
        ["infer", str(f), "--card", str(models / "real.yaml"), "--backend", "onnxruntime", "--json"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    result = json.loads(out)
    assert result["model"]["name"] == "real" and result["backend"] == "onnxruntime-cpu on cpu"
    assert result["image_size"] == {"rows": 512, "columns": 512}
    chest = [d for d in result["detections"] if d["label"] == "CHEST"]
    assert len(chest) == 1 and chest[0]["concept"]["value"] == "816094009"
    x0, y0, x1, y1 = chest[0]["box_px"]
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
    assert "PatientName" not in out and str(pydicom.dcmread(f).PatientName or "@@") not in out
    if result["measurements"] is None:
        assert "inference.measure" in result["measurements_note"]
    else:
        assert result["measurements"]["regions"][0]["detection"]["label"] == result["detections"][0]["label"]

    rc = cli_main(
        ["infer", str(f), "--card", str(models / "real.yaml"), "--backend", "onnxruntime", "--no-measure"]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "CHEST" in text and "box px x" in text


def test_infer_command_errors(models: Path, realdata_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = realdata_dir / "loc_philips_surview_fodicom_GH342.dcm"
    assert cli_main(["infer", str(f), "--card", str(models / "missing.yaml")]) == 2
    assert "model card not found" in capsys.readouterr().err
    assert cli_main(["infer", str(models / "gate.yaml"), "--card", str(models / "gate.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli_main(["infer", str(f), "--card", str(models / "gate.yaml"), "--backend", "tpu"]) == 2
    assert "unknown backend 'tpu'" in capsys.readouterr().err


def test_nhwc_uint8_model(tmp_path: Path) -> None:
    """A model taking NHWC uint8 (as some exports do): layout and dtype come from the card, boxes stay exact."""
    torch = pytest.importorskip("torch")
    inner = factory.format_model("yolov8", 320, 320)

    class Nhwc(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return self.inner(x.permute(0, 3, 1, 2).float() / 255.0)

    import warnings

    path = tmp_path / "nhwc.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Nhwc().eval(), (torch.zeros(1, 320, 320, 1, dtype=torch.uint8),), str(path), dynamo=False,
                          input_names=["images"], output_names=["output0"], dynamic_axes={"images": {0: "b"}})  # fmt: skip
    data = factory.card_dict(path, "yolov8", preprocessing=[{"voi": {"mode": "minmax"}}, "letterbox",
                                                            {"normalize": {"scale": 255.0}}])  # fmt: skip
    data["input"].update({"layout": "NHWC", "dtype": "uint8"})
    det = Detector.from_card(load_card(factory.write_card(tmp_path, data)), "onnxruntime")
    dets = det.detect(None, factory.rect_image(480, 640, RECT))
    assert _boxes(dets)[0] == ("CHEST", 0.9, (100.0, 60.0, 300.0, 200.0))


def test_micro_batching_option_routes_detect_through_the_batcher(models: Path) -> None:
    spec = ModelSpec(name="gate", card=str(models / "gate.yaml"), backend="onnxruntime", max_batch=4,
                     max_wait_ms=1.0, options={"micro_batching": True})  # fmt: skip
    det = Detector.from_spec(spec)
    assert _boxes(det.detect(None, factory.rect_image(480, 640, RECT)))[0][0] == "CHEST"
    assert det.batcher.batch_sizes == [1]
    det.detect(None, factory.rect_image(480, 640, RECT), use_batcher=False)  # explicit override
    assert det.batcher.batch_sizes == [1]
    det.close()
