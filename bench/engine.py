"""Engine benchmark: preprocessing and inference latency (p50/p95) and images/s per backend and batch size.

Runs in one call: for each model (the shipped reference detector when ``builtin:reference`` loads, and always a
representative conv detector built here: ``tests.onnx_factory.ConvDetector``, 256x256, 1 channel, 5 classes, ten
3x3 convolutions, YOLOv8 head, exported to ONNX and TorchScript), each backend (onnxruntime CPU, torch CPU) and
each batch size (1, 4, 8), on the real CT localizers of ../shared/realdata (decoded once, beforehand):

* preprocessing: stored pixels -> model tensor, per image (modality LUT, VOI, MONOCHROME1, equalisation,
  letterbox as the card says);
* inference: backend call + decoding + NMS + mapping back, per batch;
* per image: preprocessing + inference / batch; images/s = batch / (its preprocessing + its inference), one thread.

``python -m bench.engine [--iterations N] [--batches 1,4,8] [--out FILE]``; results as JSON in
bench/results/engine.json and a markdown table on stdout (copied to docs/BENCHMARKS.md, section ``engine``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def load_localizers() -> list[tuple[Any, np.ndarray]]:
    import pydicom

    from inference.preprocessing import stored_pixels

    items = []
    for path in sorted(REALDATA.glob("loc_*.dcm")):
        ds = pydicom.dcmread(path)
        items.append((ds, stored_pixels(ds)))
    if not items:
        raise SystemExit(f"no localizers (loc_*.dcm) in {REALDATA}")
    return items


def build_convdet(directory: Path, size: int = 256) -> Any:
    """The representative detector: ONNX + TorchScript + card (reference-like preprocessing)."""
    sys.path.insert(0, str(ROOT))
    from inference.modelcard import load_card
    from tests import onnx_factory as factory

    onnx_path, ts_path = factory.build_conv_detector(directory, size, num_classes=5)
    data = factory.card_dict(
        onnx_path, "yolov8", height=size, width=size, name=f"convdet-{size}",
        torch_weights=ts_path.name, torch_weights_sha256=factory.sha256(ts_path),
        score_threshold=0.25, max_detections_per_class=1,
        preprocessing=["modality_lut", {"voi": {"mode": "percentile", "low": 0.5, "high": 99.5}},
                       "invert_monochrome1", {"equalize_histogram": {"bins": 256}},
                       {"letterbox": {"pad_value": 0.0}}, {"normalize": {"mean": [0.5], "std": [0.25]}}],
    )  # fmt: skip
    data["classes"] = [
        {"name": n, "finding_site": {"code": c, "scheme": "SCT", "meaning": m}}
        for n, c, m in (
            ("HEAD", "69536005", "Head"),
            ("SPINE", "421060004", "Spine"),
            ("CHEST", "816094009", "Chest"),
            ("ABDOMEN", "818981001", "Abdomen"),
            ("PELVIS", "816092008", "Pelvis"),
        )  # fmt: skip
    ]
    return load_card(factory.write_card(directory, data))


def bench_one(card: Any, backend: str, batch: int, images: list[tuple[Any, np.ndarray]], iterations: int,
              threads: int) -> dict[str, Any]:  # fmt: skip
    from inference.engine import Detector
    from inference.postprocess import postprocess
    from nodecore.config_schema import ModelSpec

    spec = ModelSpec(name=card.name, card=str(card.path), backend=backend, max_batch=batch,
                     options={"threads": threads})  # fmt: skip
    t0 = time.perf_counter()
    det = Detector.from_spec(spec, card)  # loads and warms up (batch 1 and max_batch)
    load_s = time.perf_counter() - t0
    pre_ms: list[float] = []
    inf_ms: list[float] = []
    per_image_ms: list[float] = []
    n_dets = 0
    k = 0
    cpu0 = time.process_time()
    for _ in range(iterations):
        chunk = [images[(k + j) % len(images)] for j in range(batch)]
        k += batch
        t_pre = 0.0
        prepared = []
        for ds, px in chunk:
            t = time.perf_counter()
            prepared.append(det.prepare(ds, px))
            dt = time.perf_counter() - t
            pre_ms.append(dt * 1000)
            t_pre += dt
        t = time.perf_counter()
        raw = det.run_tensors([p.tensor for p in prepared])
        for p, r in zip(prepared, raw, strict=True):
            (cand,) = postprocess(r, det.card)
            n_dets += len(det.to_detections(cand, p))
        t_inf = time.perf_counter() - t
        inf_ms.append(t_inf * 1000)
        per_image_ms.append((t_pre + t_inf) * 1000 / batch)
    cpu_ms_per_image = (time.process_time() - cpu0) * 1000 / (iterations * batch)
    det.close()
    total_s = (sum(pre_ms) + sum(inf_ms)) / 1000
    return {
        "model": card.name,
        "input": f"{card.input.height}x{card.input.width}x{card.input.channels}",
        "backend": det.backend.name,
        "batch": batch,
        "iterations": iterations,
        "load_and_warmup_s": round(load_s, 3),
        "preprocess_ms_p50": round(percentile(pre_ms, 50), 2),
        "preprocess_ms_p95": round(percentile(pre_ms, 95), 2),
        "inference_batch_ms_p50": round(percentile(inf_ms, 50), 2),
        "inference_batch_ms_p95": round(percentile(inf_ms, 95), 2),
        "per_image_ms_p50": round(percentile(per_image_ms, 50), 2),
        "per_image_ms_p95": round(percentile(per_image_ms, 95), 2),
        "images_per_s": round(iterations * batch / total_s, 1),
        "cpu_ms_per_image": round(
            cpu_ms_per_image, 2
        ),  # CPU time of all threads: less sensitive to other load
        "detections_per_image": round(n_dets / (iterations * batch), 2),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| model (input) | backend | batch | preproc ms p50 / p95 | inference ms per batch p50 / p95 | "
            "per image ms p50 / p95 | images/s | CPU ms/image |")  # fmt: skip
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['input']}) | {r['backend']} | {r['batch']} | {r['preprocess_ms_p50']} / "
            f"{r['preprocess_ms_p95']} | {r['inference_batch_ms_p50']} / {r['inference_batch_ms_p95']} | "
            f"{r['per_image_ms_p50']} / {r['per_image_ms_p95']} | {r['images_per_s']} | {r['cpu_ms_per_image']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.engine", description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=40, help="batches per configuration")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--backends", default="onnxruntime-cpu,torch-cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from inference.modelcard import ModelCardError, load_card

    images = load_localizers()
    cards = []
    try:
        cards.append(load_card("builtin:reference"))
    except ModelCardError as exc:
        print(f"reference model not available ({exc}); benchmarking the representative conv detector only")
    tmp = tempfile.TemporaryDirectory(prefix="bench-engine-")
    cards.append(build_convdet(Path(tmp.name)))
    rows = []
    for card in cards:
        for backend in args.backends.split(","):
            if backend.startswith("torch") and card.torch_weights is None:
                continue
            for b in (int(x) for x in args.batches.split(",")):
                iters = max(5, args.iterations // b * 2) if b > 1 else args.iterations
                rows.append(bench_one(card, backend, b, images, iters, args.threads))
                print(json.dumps(rows[-1]), flush=True)
    env = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": __import__("onnxruntime").__version__,
        "torch": __import__("torch").__version__,
        "localizers": [f"{int(ds.Columns)}x{int(ds.Rows)}" for ds, _ in images],
        "threads": args.threads,
        "load_average_1_5_15": [
            round(x, 2) for x in os.getloadavg()
        ],  # other work on the machine skews timings
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "results": rows}, indent=1))
    print()
    print(markdown(rows))
    print(f"\nenvironment: {env}\nwritten: {args.out}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
