"""Triton benchmark: what sending inference to a Triton server costs and gives, against the local backend.

Everything runs in one call on this machine, with the peers in the same run:

* **per-scout latency**: ``Detector.detect`` on one CT localizer at a time (preprocessing in the node, the
  backend call, decoding, NMS, mapping back), p50 / p95 over ``--iterations`` calls, for the local ONNX Runtime
  backend (CPU, 1 intra-op thread) and for the triton backend over gRPC and HTTP, to a real tritonserver on
  loopback (tests/triton_server.py: Triton 2.51 from nvidia-pytriton, python backend running the same ONNX file with
  ONNX Runtime, 1 thread), once with dynamic batching (``max_queue_delay`` 2 ms) and once with a 0 ms queue delay.
  Overhead = triton p50 - local p50.
* **node throughput**: real ``dicom-node serve`` processes (2 workers each, route ct -> reference -> SR only)
  receive ``--scouts`` CT localizers each by storescu; scouts/s from the first send to the last job done.
  Runs: 1 node with the local backend (baseline), 1 node with triton, 2 nodes with triton sending at once
  (total throughput). Triton's own statistics give the batch sizes it executed during each triton run.

``python -m bench.triton [--iterations N] [--scouts N] [--out FILE]``: JSON in bench/results/triton.json and a
markdown summary on stdout (copied to docs/BENCHMARKS.md, section ``triton``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 2)


def scouts(tmp: Path, n_sim: int = 4) -> list[Path]:
    """The real CT localizers of ../shared/realdata (when present) and simulated ones (frontal and lateral)."""
    from inference.simulator import simulate_case

    paths = sorted((ROOT.parent / "shared" / "realdata").glob("loc_*.dcm"))
    for i in range(n_sim):
        kind = "ct_frontal" if i % 2 == 0 else "ct_lateral"
        path = tmp / f"sim_{kind}_{i}.dcm"
        simulate_case(9100 + i, kind=kind, size=512, measure=False).dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def export(tmp: Path) -> Path:
    from dicom_node.triton_export import export_model
    from inference.modelcard import load_card

    card = load_card("builtin:reference")
    repo = tmp / "repo"
    export_model(card, "regions", "1", repo, platform="python", threads=1, max_queue_delay_us=2000, max_batch=8)
    export_model(card, "regions_nodelay", "1", repo, platform="python", threads=1, max_queue_delay_us=0, max_batch=8)
    return repo


def latency(server: Any, files: list[Path], iterations: int) -> dict[str, Any]:
    import pydicom

    from inference.engine import Detector
    from inference.modelcard import load_card
    from inference.preprocessing import stored_pixels
    from nodecore.config_schema import ModelSpec, TritonSpec

    card = load_card("builtin:reference")
    images = []
    for f in files:
        ds = pydicom.dcmread(f)
        images.append((ds, stored_pixels(ds)))
    setups: dict[str, Any] = {"local onnxruntime-cpu": ModelSpec("r", str(card.path), "onnxruntime", 8, 5.0,
                                                                 {"threads": 1})}  # fmt: skip
    for label, url, model in (("triton gRPC, queue delay 2 ms", server.grpc_url, "regions"),
                              ("triton HTTP, queue delay 2 ms", server.http_url, "regions"),
                              ("triton gRPC, queue delay 0", server.grpc_url, "regions_nodelay"),
                              ("triton HTTP, queue delay 0", server.http_url, "regions_nodelay")):  # fmt: skip
        setups[label] = ModelSpec("r", str(card.path), "triton", 8, 5.0, {}, None, TritonSpec((url,), model))
    out: dict[str, Any] = {}
    order = list(setups)
    detectors = {k: Detector.from_spec(s, card) for k, s in setups.items()}
    times: dict[str, list[float]] = {k: [] for k in order}
    for i in range(iterations):  # interleaved, so load from other jobs on the machine hits every setup alike
        ds, px = images[i % len(images)]
        for k in order:
            t0 = time.perf_counter()
            detectors[k].detect(ds, px)
            times[k].append((time.perf_counter() - t0) * 1e3)
    base = pct(times[order[0]], 50)
    for k in order:
        out[k] = {"p50_ms": pct(times[k], 50), "p95_ms": pct(times[k], 95),
                  "overhead_p50_ms": round(pct(times[k], 50) - base, 2)}  # fmt: skip
        detectors[k].close()
    return out


def node_config(node: Any, backend: str, server: str) -> str:
    triton = f"\n    triton: {{servers: [{server}], model: regions, fallback: fail}}" if backend == "triton" else ""
    return f"""node:
  ae_title: {node.workdir.name.upper()}
  bind: 127.0.0.1
  port: {node.port}
  storage: {node.storage}
  workers: 2
  log_level: WARNING
models:
  reference:
    card: builtin:reference
    backend: {backend}
    max_batch: 8
    options: {{threads: 1}}{triton}
routes:
  - name: scouts
    match: {{attribute: Modality, equals: CT}}
    pipeline: {{name: reference, detectors: [{{model: reference}}]}}
    outputs: [sr]
    destinations: []
"""


def clones(sources: list[Path], out: Path, tag: str, n: int) -> list[Path]:
    import pydicom

    from nodecore.uids import derived_uid

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ds = pydicom.dcmread(sources[i % len(sources)])
        uid = pydicom.uid.UID(derived_uid("bench-triton", tag, str(i)))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = out / f"{tag}{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def throughput(tmp: Path, server: Any, sources: list[Path], n: int) -> dict[str, Any]:
    from dicom_node.jobqueue import JobQueue
    from inference.triton import server_statistics
    from tests.node_process import NodeProcess, storescu

    def done(node: Any) -> int:
        q = JobQueue(node.storage / "queue.sqlite3")
        try:
            c = q.job_counts()
            return c["done"] + c["error"]
        finally:
            q.close()

    out: dict[str, Any] = {}
    for label, backend, count in (("1 node, local onnxruntime-cpu", "onnxruntime", 1),
                                  ("1 node, triton gRPC", "triton", 1), ("2 nodes, triton gRPC", "triton", 2)):
        nodes = [NodeProcess(tmp / f"{backend}{count}-{i}") for i in range(count)]
        try:
            for node in nodes:
                node.write_config(node_config(node, backend, server.grpc_url))
                node.start(wait_ready=False)
            for node in nodes:
                node.wait_message("READY=1", 180)
            files = [clones(sources, tmp / f"in-{backend}{count}-{i}", f"{count}{i}-", n) for i in range(count)]
            before = server_statistics(server.http_url, "regions")
            t0 = time.perf_counter()
            threads = [threading.Thread(target=storescu, args=(node.port, fs), kwargs={"called": node.workdir.name.upper()})
                       for node, fs in zip(nodes, files, strict=True)]  # fmt: skip
            for t in threads:
                t.start()
            while sum(done(node) for node in nodes) < n * count:
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError(f"{label}: jobs not done after 600 s")
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            for t in threads:
                t.join()
            after = server_statistics(server.http_url, "regions")
            errors = sum(JobQueue(node.storage / "queue.sqlite3").job_counts()["error"] for node in nodes)
            sizes = {k: v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
            sizes = {k: v for k, v in sorted(sizes.items()) if v > 0}
            requests = after["inference_count"] - before["inference_count"]
            executions = after["execution_count"] - before["execution_count"]
            out[label] = {"scouts": n * count, "seconds": round(elapsed, 2),
                          "scouts_per_s": round(n * count / elapsed, 2), "errors": errors,
                          "triton_images": requests, "triton_executions": executions,
                          "triton_batch_sizes": sizes}  # fmt: skip
        finally:
            for node in nodes:
                node.stop()
                node.close()
    one, two = out["1 node, triton gRPC"], out["2 nodes, triton gRPC"]
    out["ratio_2_nodes_vs_1"] = round(two["scouts_per_s"] / one["scouts_per_s"], 2)
    return out


def machine() -> dict[str, Any]:
    import onnxruntime

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "triton": "2.51.0 (nvidia-pytriton 0.7.0, python backend)",
            "gpu": "none", "load_average_1min_at_start": round(os.getloadavg()[0], 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--scouts", type=int, default=60, help="scouts per node in the throughput runs")
    ap.add_argument("--skip-nodes", action="store_true", help="latency only")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "triton.json")
    args = ap.parse_args(argv)
    from tests.triton_server import TritonServer

    with tempfile.TemporaryDirectory(prefix="bench-triton-") as d:
        tmp = Path(d)
        files = scouts(tmp)
        server = TritonServer(export(tmp), tmp / "triton.log")
        server.start()
        try:
            result: dict[str, Any] = {"machine": machine(), "scout_files": len(files)}
            result["latency"] = latency(server, files, args.iterations)
            if not args.skip_nodes:
                result["throughput"] = throughput(tmp, server, files, args.scouts)
        finally:
            server.stop()
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["machine"]))
    print(f"\nper-scout latency ({args.iterations} scouts, one at a time), ms:\n")
    print("| backend | p50 | p95 | overhead p50 vs local |\n|---|---|---|---|")
    for k, v in result["latency"].items():
        print(f"| {k} | {v['p50_ms']} | {v['p95_ms']} | {v['overhead_p50_ms']:+} |")
    if "throughput" in result:
        t = result["throughput"]
        print(f"\nnode throughput ({args.scouts} scouts per node):\n")
        print("| run | scouts | s | scouts/s | Triton images / executions | batch sizes (executions) | errors |")
        print("|---|---|---|---|---|---|---|")
        for k, v in t.items():
            if isinstance(v, dict):
                print(f"| {k} | {v['scouts']} | {v['seconds']} | {v['scouts_per_s']} | {v['triton_images']} / "
                      f"{v['triton_executions']} | {v['triton_batch_sizes'] or '-'} | {v['errors']} |")
        print(f"\n2 nodes vs 1 node through Triton: {t['ratio_2_nodes_vs_1']}x")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
