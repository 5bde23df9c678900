"""Every GPU check and GPU timing of the inference engine, in ONE call on a GPU machine.

1. environment (nvidia-smi, torch/CUDA, TensorRT, ONNX Runtime providers);
2. the GPU tests (``pytest -m gpu tests/test_backends.py``: TensorRT build + engine cache + parity, ONNX Runtime
   CUDA parity, torch CUDA FP16 parity);
3. timings, numpy in -> numpy out, batch 1/4/8, p50/p95 per batch and images/s, on the representative conv
   detector of bench/engine.py (256x256x1) and the reference detector when shipped: torch eager CUDA FP32 and
   FP16 (the nn.Module itself), TorchScript CUDA FP16 (TorchBackend), ONNX Runtime CUDA, TensorRT FP32 and FP16
   (engine build and cached-load times included), ONNX Runtime CPU for scale;
4. the goal check "TensorRT at least 3x PyTorch eager" (reported, never asserted);
5. end to end on the real localizers with the ``tensorrt`` backend: preprocessing + inference per image.

``python -m bench.gpu_checks [--iterations N] [--out FILE]``; JSON to ``$OUT/gpu_checks.json`` when ``OUT`` is
set, else bench/results/gpu_checks.json; markdown on stdout. Without a CUDA GPU it says so and exits 0;
``--cpu-dry-run`` runs the same code paths on the CPU (torch eager, TorchScript, ONNX Runtime) to check the script.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _stats(times_s: list[float], batch: int) -> dict[str, float]:
    ms = np.asarray(times_s) * 1000
    return {
        "batch": batch,
        "ms_p50": round(float(np.percentile(ms, 50)), 3),
        "ms_p95": round(float(np.percentile(ms, 95)), 3),
        "images_per_s": round(float(batch * len(ms) / (ms.sum() / 1000)), 1),
    }


def time_fn(
    fn: Callable[[np.ndarray], Any], batch: np.ndarray, warmup: int, iterations: int
) -> dict[str, float]:
    for _ in range(warmup):
        fn(batch)
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t)
    return _stats(times, batch.shape[0])


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "cores": os.cpu_count()}
    if shutil.which("nvidia-smi"):
        q = "name,driver_version,memory.total,compute_cap"
        r = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True
        )
        env["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except ImportError:
        env["torch"] = None
        env["cuda_available"] = False
    env["tensorrt"] = __import__("tensorrt").__version__ if importlib.util.find_spec("tensorrt") else None
    import onnxruntime as ort

    env["onnxruntime"] = ort.__version__
    env["onnxruntime_providers"] = ort.get_available_providers()
    return env


def run_gpu_tests() -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-m",
        "gpu",
        "tests/test_backends.py",
        "-p",
        "no:cacheprovider",
    ]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = (r.stdout + r.stderr).strip().splitlines()[-8:]
    return {
        "command": " ".join(cmd[2:]),
        "rc": r.returncode,
        "seconds": round(time.perf_counter() - t, 1),
        "tail": tail,
    }


def timings(card: Any, eager: Any | None, device: str, batches: list[int], warmup: int, iterations: int,
            engine_dir: Path) -> list[dict[str, Any]]:  # fmt: skip
    """Every backend on one model; ``eager`` is the torch nn.Module when known (for the eager baseline)."""
    import torch

    from inference.backends import (
        BackendError,
        OnnxRuntimeBackend,
        TensorRTBackend,
        TorchBackend,
        availability,
    )

    rows: list[dict[str, Any]] = []
    c, h, w = card.input.channels, card.input.height, card.input.width
    rng = np.random.default_rng(0)
    inputs = {b: rng.uniform(0, 1, size=(b, c, h, w)).astype(np.float32) for b in batches}
    cuda = device.startswith("cuda")

    def add(name: str, fn: Callable[[np.ndarray], Any], extra: dict[str, Any] | None = None) -> None:
        for b in batches:
            try:
                row = {
                    "model": card.name,
                    "runtime": name,
                    **time_fn(fn, inputs[b], warmup, iterations),
                    **(extra or {}),
                }
            except Exception as exc:  # one failing runtime must not hide the others
                row = {
                    "model": card.name,
                    "runtime": name,
                    "batch": b,
                    "error": f"{type(exc).__name__}: {exc}",
                }
            rows.append(row)
            print(json.dumps(row), flush=True)

    if eager is not None:
        for half in (False, True) if cuda else (False,):
            m = eager.to(device).eval()
            m = m.half() if half else m.float()

            def run_eager(x: np.ndarray, m: Any = m, half: bool = half) -> Any:
                with torch.inference_mode():
                    t = torch.from_numpy(x).to(device)
                    out = m(t.half() if half else t)
                    return out.float().cpu().numpy()

            add(f"torch eager {device} {'fp16' if half else 'fp32'}", run_eager)
    if card.torch_weights is not None:
        tb = TorchBackend(card.torch_weights, device=device)
        add(f"torchscript {device} {'fp16' if tb.fp16 else 'fp32'}", tb.run)
    if cuda and availability(card)["onnxruntime-cuda"] is None:
        add("onnxruntime cuda", OnnxRuntimeBackend(card.weights, cuda=True).run)
    if cuda and availability(card)["tensorrt"] is None:
        for precision in ("fp32", "fp16"):
            try:
                t = time.perf_counter()
                trt_b = TensorRTBackend(
                    card, precision=precision, max_batch=max(batches), cache_dir=engine_dir
                )
                build_s = time.perf_counter() - t
                t = time.perf_counter()
                TensorRTBackend(card, precision=precision, max_batch=max(batches), cache_dir=engine_dir)
                load_s = time.perf_counter() - t
            except BackendError as exc:
                rows.append({"model": card.name, "runtime": f"tensorrt {precision}", "error": str(exc)})
                continue
            add(
                f"tensorrt {precision}",
                trt_b.run,
                {"build_s": round(build_s, 1), "cached_load_s": round(load_s, 2)},
            )
    add("onnxruntime cpu", OnnxRuntimeBackend(card.weights).run)
    return rows


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TensorRT FP16 vs torch eager (FP32 and FP16), per model and batch; goal: at least 3x eager."""
    out = []
    by = {(r["model"], r["runtime"], r.get("batch")): r for r in rows if "ms_p50" in r}
    for (model, runtime, b), r in by.items():
        if runtime != "tensorrt fp16":
            continue
        for base in ("torch eager cuda fp32", "torch eager cuda fp16", "torchscript cuda fp16"):
            ref = by.get((model, base, b))
            if ref:
                x = ref["ms_p50"] / r["ms_p50"]
                out.append(
                    {
                        "model": model,
                        "batch": b,
                        "vs": base,
                        "speedup_p50": round(x, 2),
                        "goal_3x_met": x >= 3,
                    }
                )
    return out


def end_to_end(card: Any, backend: str, iterations: int) -> dict[str, Any]:
    import pydicom

    from inference.engine import Detector
    from inference.preprocessing import stored_pixels
    from nodecore.config_schema import ModelSpec

    files = sorted((ROOT.parent / "shared" / "realdata").glob("loc_*.dcm"))
    if not files:
        return {"error": "no localizers in ../shared/realdata"}
    images = [(ds, stored_pixels(ds)) for ds in (pydicom.dcmread(f) for f in files)]
    det = Detector.from_spec(
        ModelSpec(name=card.name, card=str(card.path), backend=backend, max_batch=1), card
    )
    times = []
    for i in range(iterations):
        ds, px = images[i % len(images)]
        t = time.perf_counter()
        det.detect(ds, px)
        times.append(time.perf_counter() - t)
    return {"model": card.name, "backend": det.backend.name, **_stats(times, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.gpu_checks", description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument(
        "--cpu-dry-run", action="store_true", help="exercise the script on the CPU (no GPU numbers)"
    )
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    env = environment()
    print(json.dumps(env, indent=1), flush=True)
    if not env.get("cuda_available") and not args.cpu_dry_run:
        print("gpu_checks: no CUDA GPU here (torch sees none): nothing measured. Run on a GPU machine.")
        return 0
    device = "cuda" if env.get("cuda_available") and not args.cpu_dry_run else "cpu"
    out = args.out or (Path(os.environ["OUT"]) / "gpu_checks.json" if os.environ.get("OUT") else
                       ROOT / "bench" / "results" / "gpu_checks.json")  # fmt: skip
    report: dict[str, Any] = {"environment": env, "device": device}
    if not args.skip_tests:
        report["gpu_tests"] = run_gpu_tests()
        print(json.dumps(report["gpu_tests"], indent=1), flush=True)

    from bench.engine import build_convdet
    from inference.modelcard import ModelCardError, load_card
    from tests import onnx_factory as factory

    batches = [int(b) for b in args.batches.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="gpu-checks-"))
    card = build_convdet(tmp, 256)
    rows = timings(
        card, factory.conv_detector_module(5), device, batches, args.warmup, args.iterations, tmp / "engines"
    )
    try:
        ref = load_card("builtin:reference")
        rows += timings(ref, None, device, batches, args.warmup, args.iterations, tmp / "engines")
    except ModelCardError as exc:
        print(f"reference model not shipped: {exc}")
        ref = None
    report["timings"] = rows
    report["tensorrt_vs_eager"] = speedups(rows)
    e2e_backend = "tensorrt" if device == "cuda" and env.get("tensorrt") else "onnxruntime"
    report["end_to_end"] = [
        end_to_end(c, e2e_backend, min(args.iterations, 50)) for c in (card, ref) if c is not None
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("\n| model | runtime | batch | ms p50 / p95 | images/s |\n|---|---|---|---|---|")
    for r in rows:
        if "ms_p50" in r:
            print(
                f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['ms_p50']} / {r['ms_p95']} | {r['images_per_s']} |"
            )
        else:
            print(f"| {r['model']} | {r['runtime']} | {r.get('batch', '')} | error: {r['error'][:80]} | |")
    for s in report["tensorrt_vs_eager"]:
        print(
            f"TensorRT fp16 vs {s['vs']} (batch {s['batch']}): {s['speedup_p50']}x, goal 3x met: {s['goal_3x_met']}"
        )
    for e in report["end_to_end"]:
        print(f"end to end ({e.get('backend')}): {e}")
    print(f"written: {out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if report.get("gpu_tests", {}).get("rc", 0) in (0, 5) else 1


if __name__ == "__main__":
    raise SystemExit(main())
