"""Backends: ONNX Runtime vs torch parity on one conv detector exported both ways (max abs diff < 1e-4), backend
selection and its reasons, clear errors, the TensorRT engine cache key; GPU paths (TensorRT, ONNX Runtime CUDA,
torch CUDA FP16) run only where a GPU exists and are skipped with the reason elsewhere."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest

from inference.backends import (
    BackendError,
    BackendUnavailable,
    EngineKey,
    OnnxRuntimeBackend,
    TorchBackend,
    availability,
    choose_backend,
    engine_cache_path,
    open_backend,
)
from inference.engine import Detector
from inference.modelcard import ModelCard, load_card
from tests import onnx_factory as factory

SIZE = 256
REGION_CLASSES = [
    ("HEAD", "69536005", "Head"), ("SPINE", "421060004", "Spine"), ("CHEST", "816094009", "Chest"),
    ("ABDOMEN", "818981001", "Abdomen"), ("PELVIS", "816092008", "Pelvis"),
]  # fmt: skip


@pytest.fixture(scope="module")
def convdet(tmp_path_factory: pytest.TempPathFactory) -> ModelCard:
    pytest.importorskip("torch", reason="torch exports the conv detector")
    d = tmp_path_factory.mktemp("convdet")
    onnx_path, ts_path = factory.build_conv_detector(d, SIZE, num_classes=5)
    data = factory.card_dict(
        onnx_path, "yolov8", height=SIZE, width=SIZE, torch_weights=ts_path.name,
        torch_weights_sha256=factory.sha256(ts_path), score_threshold=0.05, max_detections_per_class=3,
        preprocessing=["modality_lut", {"voi": {"mode": "percentile"}}, "invert_monochrome1", "letterbox"],
    )  # fmt: skip
    data["classes"] = [
        {"name": n, "finding_site": {"code": c, "scheme": "SCT", "meaning": m}} for n, c, m in REGION_CLASSES
    ]
    return load_card(factory.write_card(d, data))


@pytest.mark.slow  # TorchScript export of a test model (~5 s CPU): in `make test`, not `make test-fast`
def test_onnxruntime_torch_parity(convdet: ModelCard) -> None:
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 1, size=(3, 1, SIZE, SIZE)).astype(np.float32)
    ort_out = OnnxRuntimeBackend(convdet.weights).run(batch)
    assert convdet.torch_weights is not None
    torch_out = TorchBackend(convdet.torch_weights, device="cpu").run(batch)
    (a,), (b,) = ort_out.values(), torch_out.values()
    assert a.shape == b.shape == (3, 4 + 5, (SIZE // 32) ** 2)
    assert float(np.max(np.abs(a - b))) < 1e-4


@pytest.mark.slow  # loads torch (~5 s CPU): in `make test`, not `make test-fast`
def test_detector_parity_on_a_real_localizer(convdet: ModelCard, realdata_dir: Path) -> None:
    ds = pydicom.dcmread(realdata_dir / "loc_philips_surview_fodicom_GH342.dcm")
    d_ort = Detector.from_card(convdet, "onnxruntime")
    d_torch = Detector.from_card(convdet, "torch-cpu")
    assert d_ort.backend.name == "onnxruntime-cpu" and d_torch.backend.name == "torch-cpu"
    a, b = d_ort.detect(ds), d_torch.detect(ds)
    assert a, "the random conv detector with threshold 0.05 returns boxes"
    assert [x.label for x in a] == [x.label for x in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.box.as_tuple(), y.box.as_tuple(), atol=1e-2)  # original pixels
        assert abs(x.score - y.score) < 1e-4
        assert 0 <= x.box.x_min <= x.box.x_max <= ds.Columns and 0 <= x.box.y_min <= x.box.y_max <= ds.Rows


def test_auto_choice_and_reasons(convdet: ModelCard) -> None:
    avail = availability(convdet)
    name, why = choose_backend("auto", convdet)
    first = next(
        n for n in ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu") if avail[n] is None
    )
    assert name == first and why.startswith(f"auto: {name}")
    if name == "onnxruntime-cpu":  # this CPU machine: every better backend is named with its reason
        assert "not tensorrt:" in why and "not onnxruntime-cuda:" in why and "not torch-cuda:" in why
    assert choose_backend("onnxruntime")[0] == "onnxruntime-cpu"
    with pytest.raises(BackendError, match=r"unknown backend 'openvino'"):
        choose_backend("openvino")


def test_unavailable_backends_are_clear_errors(convdet: ModelCard, tmp_path: Path) -> None:
    no_torch = dataclasses.replace(convdet, torch_weights=None, torch_weights_sha256="")
    with pytest.raises(BackendUnavailable, match="has no torch_weights"):
        open_backend(no_torch, "torch")
    if availability()["onnxruntime-cuda"] is not None:
        with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider not available"):
            open_backend(convdet, "onnxruntime-cuda")
    if availability()["tensorrt"] is not None:
        with pytest.raises(BackendUnavailable, match="tensorrt"):
            open_backend(convdet, "tensorrt")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    with pytest.raises(BackendError, match="onnxruntime could not load bad.onnx"):
        OnnxRuntimeBackend(bad)


def test_engine_cache_key_covers_every_dependency(tmp_path: Path) -> None:
    key = EngineKey("a" * 64, "10.3.0", "NVIDIA H100 80GB HBM3", "9.0", "fp16", (1, 8, 8), (256, 256))
    assert key.digest == EngineKey(**key.__dict__).digest  # deterministic
    changes = {
        "onnx_sha256": "b" * 64, "tensorrt_version": "10.4.0", "gpu_name": "NVIDIA L4", "compute_capability": "8.9",
        "precision": "int8", "batch_profile": (1, 4, 4), "input_hw": (320, 320),
    }  # fmt: skip
    digests = {dataclasses.replace(key, **{k: v}).digest for k, v in changes.items()}
    assert len(digests) == len(changes) and key.digest not in digests
    p = engine_cache_path(tmp_path, "my model/v1", key)
    assert p.parent == tmp_path and p.name.startswith("my_model_v1-fp16-") and p.suffix == ".engine"


def test_build_engines_without_tensorrt_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    from dicom_node.infer_cli import run_build_engines

    if availability()["tensorrt"] is None:
        pytest.skip(
            "TensorRT and a GPU are present: the build path is covered by test_tensorrt_engine_build_cache_parity"
        )
    rc = run_build_engines(argparse.Namespace(config=None, precision=None, cache_dir=None))
    assert rc == 0
    assert "nothing to do" in capsys.readouterr().out


# ------------------------------------------------------------------ GPU (skipped here with the reason)


def _require(backend: str) -> None:
    reason = availability()[backend] if backend != "torch-cuda" else _torch_cuda_reason()
    if reason is not None:
        pytest.skip(f"{backend} test needs a CUDA GPU: {reason}")


def _torch_cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    return None if torch.cuda.is_available() else "torch has no CUDA device"


@pytest.mark.gpu
def test_tensorrt_engine_build_cache_parity(convdet: ModelCard, tmp_path: Path) -> None:
    _require("tensorrt")
    from inference.backends import TensorRTBackend

    batch = np.random.default_rng(1).uniform(0, 1, size=(4, 1, SIZE, SIZE)).astype(np.float32)
    ref = next(iter(OnnxRuntimeBackend(convdet.weights).run(batch).values()))
    trt32 = TensorRTBackend(convdet, precision="fp32", max_batch=8, cache_dir=tmp_path)
    assert trt32.built and trt32.engine_path.is_file()
    out32 = next(iter(trt32.run(batch).values()))
    np.testing.assert_allclose(out32, ref, rtol=1e-3, atol=1e-3)  # strict fp32 (TF32 off)
    again = TensorRTBackend(convdet, precision="fp32", max_batch=8, cache_dir=tmp_path)
    assert not again.built  # deserialised from the cache
    trt16 = TensorRTBackend(convdet, precision="fp16", max_batch=8, cache_dir=tmp_path)
    assert trt16.engine_path != trt32.engine_path
    out16 = next(iter(trt16.run(batch[:1]).values()))
    np.testing.assert_allclose(out16[:, :4], ref[:1, :4], rtol=2e-2, atol=0.5)  # FP16 boxes (pixels)
    assert float(np.max(np.abs(out16[:, 4:] - ref[:1, 4:]))) < 0.02  # FP16 scores


@pytest.mark.gpu
def test_onnxruntime_cuda_parity(convdet: ModelCard) -> None:
    _require("onnxruntime-cuda")
    batch = np.random.default_rng(2).uniform(0, 1, size=(2, 1, SIZE, SIZE)).astype(np.float32)
    a = next(iter(OnnxRuntimeBackend(convdet.weights).run(batch).values()))
    b = next(iter(OnnxRuntimeBackend(convdet.weights, cuda=True).run(batch).values()))
    np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2)  # cuDNN may use TF32 tensor cores


@pytest.mark.gpu
def test_torch_cuda_fp16_parity(convdet: ModelCard) -> None:
    _require("torch-cuda")
    assert convdet.torch_weights is not None
    batch = np.random.default_rng(3).uniform(0, 1, size=(2, 1, SIZE, SIZE)).astype(np.float32)
    a = next(iter(TorchBackend(convdet.torch_weights, device="cpu").run(batch).values()))
    gpu = TorchBackend(convdet.torch_weights, device="cuda")
    assert gpu.fp16
    b = next(iter(gpu.run(batch).values()))
    assert float(np.max(np.abs(a[:, 4:] - b[:, 4:]))) < 0.02


@pytest.mark.slow
def test_torch_export_program_parity(convdet: ModelCard, tmp_path: Path) -> None:
    """A torch.export program (.pt2) runs on the torch backend with the same outputs as ONNX Runtime."""
    torch = pytest.importorskip("torch")
    module = factory.conv_detector_module(5)
    batch_dim = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (torch.zeros(2, 1, SIZE, SIZE),), dynamic_shapes=({0: batch_dim},))
    torch.export.save(program, str(tmp_path / "convdet.pt2"))
    x = np.random.default_rng(5).uniform(0, 1, size=(3, 1, SIZE, SIZE)).astype(np.float32)
    a = next(iter(TorchBackend(tmp_path / "convdet.pt2", device="cpu").run(x).values()))
    b = next(iter(OnnxRuntimeBackend(convdet.weights).run(x).values()))
    assert float(np.max(np.abs(a - b))) < 1e-4
