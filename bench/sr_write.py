"""Benchmark: writing SR + SC + GSPS for a CT localizer with five regions (goal p50 < 100 ms on 2 cores).

Source: the real Philips localizer (716 x 512) from ../shared/realdata with its four hand-labelled regions plus a
HEAD box, measurements from its header geometry (tests/test_sr.py ``hand_measurements``). Pixels are decoded once
(the pipeline has them already). Timed: ``write_results`` (build the three datasets) and, separately, build plus
encoding to bytes (what the spool stores), for the default builders and, as "before", ``reference=True`` (GSPS
built entirely from highdicom objects; the SR has one builder, the directly encoded tree of sr_writer.sr_content). ``--png DIR`` also writes the annotated secondary captures of
this localizer and of a simulated one as PNG files (docs/sc_real.png, docs/sc_simulated.png).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"
LOCALIZER = "loc_philips_MAROTECH_CT_JP2Lossy.dcm"


def _inputs():
    sys.path.insert(0, str(ROOT))
    from inference.types import Box, Detection
    from tests.test_sr import CONCEPTS, MODEL, hand_measurements, labelled_detections

    src = pydicom.dcmread(REALDATA / LOCALIZER)
    dets = labelled_detections(REALDATA, LOCALIZER)
    dets.append(Detection("HEAD", CONCEPTS["HEAD"], 0.55, Box(190.0, 0.0, 320.0, 40.0), MODEL))
    return src, dets, hand_measurements(src, dets), src.pixel_array


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def write_pngs(out: Path) -> list[Path]:
    from PIL import Image

    from sr_writer import write_sc
    from tests.test_sr import CONCEPTS, MODEL, ctx

    out.mkdir(parents=True, exist_ok=True)
    src, dets, meas, px = _inputs()
    paths = [out / "sc_real.png"]
    Image.fromarray(write_sc(src, dets, meas, ctx(), pixels=px).pixel_array).save(paths[0])
    try:
        from inference.measure import measure_image
        from inference.simulator.simulate import simulate_case
        from inference.types import Detection
    except ImportError as exc:
        print(f"simulated PNG skipped: {exc}")
        return paths
    case = simulate_case(6, kind="ct_frontal")  # a head-to-pelvis scout: all five regions
    ds = case.dataset
    sdets = [Detection(r.label, CONCEPTS[r.label], 0.9, r.box_px, MODEL) for r in case.truth.regions]
    spx = ds.pixel_array
    values = spx * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    smeas = measure_image(ds, sdets, pixels=values)
    paths.append(out / "sc_simulated.png")
    Image.fromarray(write_sc(ds, sdets, smeas, ctx(), pixels=spx).pixel_array).save(paths[1])
    return paths


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _measure(src, dets, meas, px, context, kinds, *, reference: bool, iterations: int) -> dict:
    from sr_writer import write_results

    for _ in range(3):  # warm-up (imports, code caches)
        write_results(src, dets, meas, kinds, context, pixels=px, reference=reference)
    build: list[float] = []
    encode: list[float] = []
    per_kind: dict[str, list[float]] = {k: [] for k in kinds}
    sizes: dict[str, int] = {}
    for _ in range(iterations):
        t0 = time.perf_counter()
        objs = write_results(src, dets, meas, kinds, context, pixels=px, reference=reference)
        t1 = time.perf_counter()
        for kind, obj in zip(kinds, objs, strict=True):
            buf = io.BytesIO()
            obj.save_as(buf, enforce_file_format=True)
            sizes[kind] = buf.tell()
        t2 = time.perf_counter()
        build.append((t1 - t0) * 1000)
        encode.append((t2 - t0) * 1000)
        for kind in kinds:
            k0 = time.perf_counter()
            write_results(src, dets, meas, (kind,), context, pixels=px, reference=reference)
            per_kind[kind].append((time.perf_counter() - k0) * 1000)
    return {
        "build_ms": {"p50": statistics.median(build), "p95": _percentile(build, 95)},
        "build_and_encode_ms": {"p50": statistics.median(encode), "p95": _percentile(encode, 95)},
        "per_kind_ms_p50": {k: statistics.median(v) for k, v in per_kind.items()},
        "bytes": sizes,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.sr_write", description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the 'before' figures (write_results(reference=True): all-highdicom GSPS)")
    parser.add_argument("--png", type=Path, default=None, help="also write the SC PNGs into this directory")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    if not (REALDATA / LOCALIZER).exists():
        print(f"real data missing: {REALDATA / LOCALIZER}")
        return 1
    from tests.test_sr import ctx

    src, dets, meas, px = _inputs()
    context = ctx()
    kinds = ("sr", "sc", "gsps")
    load_before = _load()
    result: dict = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "iterations": args.iterations,
        "regions": len(dets),
        "image": f"{src.Rows}x{src.Columns}",
        "fast": _measure(src, dets, meas, px, context, kinds, reference=False, iterations=args.iterations),
    }
    if not args.no_reference:
        result["reference"] = _measure(src, dets, meas, px, context, kinds, reference=True,
                                       iterations=args.iterations)
    result["load_average_1_5_15"] = {"start": load_before, "end": _load()}
    print(json.dumps(result, indent=1))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sr_write.json").write_text(json.dumps(result, indent=1))
    if args.png:
        for p in write_pngs(args.png):
            print("wrote", p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
