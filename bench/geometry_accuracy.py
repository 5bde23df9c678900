"""Geometry accuracy on simulated CT localizers: isocenter offsets computed from the TRUE region boxes.

For each case a frontal + lateral localizer pair of one simulated subject is made with a random off-centre shift
(uniform in [-60, +60] mm in x and y) and a vendor-like profile (cycled: Philips-like, Siemens-like, GE-like,
Canon-like). The true silhouette boxes (``truth.regions[*].box_px``) go through ``measure_image`` and
``combine_views`` exactly as detections would, so the errors are those of the geometry and region models alone.
Regions whose box is truncated by the image are excluded (their true centre is not visible).

Metrics per region (mm, signed error = measured - true, summarised as |error|):
  lateral (x)   from the two views combined, and from the frontal view alone;
  vertical (y)  from the two views combined, from the lateral view alone, and ESTIMATED from the frontal view
                alone (table height + water-equivalent thickness).

Usage: python -m bench.geometry_accuracy [--cases 200] [--pose fixed|random|both] [--jobs 2] [--size 512]
Writes bench/results/geometry_accuracy.json and prints a Markdown summary for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SHIFT_RANGE_MM = 60.0
TRUNK_REGIONS = ("CHEST", "ABDOMEN")
METRICS = ("lat_combined", "lat_frontal", "vert_combined", "vert_lateral", "vert_frontal_est")


def simulator_settings() -> Any:
    """Measurement settings a site would configure for the simulated scanners (``inference.simulator.site``)."""
    from inference.simulator.site import simulated_site_settings

    return simulated_site_settings()


def run_case(args: tuple[int, str, bool, int]) -> dict[str, Any]:
    """Simulate one frontal + lateral pair and measure it from the true boxes; errors per region."""
    from pydicom.pixels import apply_modality_lut

    from inference.measure import combine_views, measure_image
    from inference.simulator.simulate import simulate_pair
    from inference.types import CodedConcept, Detection, ModelIdentity
    from inference.types import QuantityKind as K

    seed, profile, fixed_pose, size = args
    rng = np.random.default_rng([seed, 2024])
    shift = (float(rng.uniform(-SHIFT_RANGE_MM, SHIFT_RANGE_MM)), float(rng.uniform(-SHIFT_RANGE_MM, SHIFT_RANGE_MM)))
    randomize: dict[str, Any] = {"protocol": "chest_abdomen_pelvis"}
    if fixed_pose:
        randomize.update(roll_deg=0.0, yaw_deg=0.0)
    settings = simulator_settings()
    frontal, lateral = simulate_pair(seed, shift, profile=profile, randomize=randomize, size=size)
    measured = []
    for case in (frontal, lateral):
        ds = case.dataset
        px = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        dets = [Detection(r.label, CodedConcept("0", "99SIM", r.label), 1.0, r.box_px, ModelIdentity("truth", "1"))
                for r in case.truth.regions]
        measured.append(measure_image(ds, dets, pixels=px, settings=settings))
    combined = combine_views(measured[0], measured[1])
    out: dict[str, Any] = {"seed": seed, "profile": profile, "shift_mm": shift, "regions": {}}
    for r in frontal.truth.regions:
        lt = lateral.truth.region(r.label)
        if r.truncated or lt is None or lt.truncated or r.iso_offset_mm is None:
            continue
        tx, ty = r.iso_offset_mm
        fm = next(m for m in measured[0].regions if m.detection.label == r.label)
        lm = next(m for m in measured[1].regions if m.detection.label == r.label)
        cm = combined.region(r.label)

        def err(m: Any, kind: Any, truth: float) -> float | None:
            q = m.get(kind) if m is not None else None
            return None if q is None else float(q.value - truth)

        vf = fm.get(K.ISO_OFFSET_VERTICAL)
        out["regions"][r.label] = {
            "lat_combined": err(cm, K.ISO_OFFSET_LATERAL, tx),
            "lat_frontal": err(fm, K.ISO_OFFSET_LATERAL, tx),
            "vert_combined": err(cm, K.ISO_OFFSET_VERTICAL, ty),
            "vert_lateral": err(lm, K.ISO_OFFSET_VERTICAL, ty),
            "vert_frontal_est": err(fm, K.ISO_OFFSET_VERTICAL, ty),
            "vert_frontal_est_u": None if vf is None else vf.uncertainty,
        }
    return out


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """region -> metric -> {n, mean, p50, p95, max} of |error| (mean is of the signed error, 'bias')."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    labels = sorted({lab for r in results for lab in r["regions"]})
    for label in [*labels, "TRUNK"]:
        table[label] = {}
        for metric in METRICS:
            vals = [r["regions"][lab][metric] for r in results for lab in r["regions"]
                    if (lab == label or (label == "TRUNK" and lab in TRUNK_REGIONS))
                    and r["regions"][lab][metric] is not None]
            if not vals:
                continue
            a = np.abs(np.asarray(vals))
            table[label][metric] = {
                "n": len(vals),
                "bias": float(np.mean(vals)),
                "mean": float(a.mean()),
                "p50": float(np.percentile(a, 50)),
                "p95": float(np.percentile(a, 95)),
                "max": float(a.max()),
                "within_0.5": float(np.mean(a < 0.5)),
                "within_10": float(np.mean(a <= 10.0)),
            }
    return table


def collect(cases: int, fixed_pose: bool, jobs: int, size: int, first_seed: int = 1000) -> list[dict[str, Any]]:
    from inference.simulator.profiles import CT_PROFILES

    profiles = sorted(CT_PROFILES)
    work = [(first_seed + i, profiles[i % len(profiles)], fixed_pose, size) for i in range(cases)]
    if jobs <= 1:
        return [run_case(w) for w in work]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run_case, work, chunksize=2))


def markdown(summary: dict[str, dict[str, dict[str, float]]], title: str) -> str:
    lines = [f"**{title}** (|error| in mm: mean / p50 / p95 / max; n regions)", "",
             "| region | lateral, 2 views | lateral, frontal only | vertical, 2 views | vertical, lateral only |"
             " vertical ESTIMATED, frontal only (share <= 10 mm) |",
             "|---|---|---|---|---|---|"]
    for label, metrics in summary.items():
        cells = []
        for m in METRICS:
            s = metrics.get(m)
            if s is None:
                cells.append("-")
                continue
            cell = f"{s['mean']:.2f} / {s['p50']:.2f} / {s['p95']:.2f} / {s['max']:.2f} (n={s['n']})"
            if m == "vert_frontal_est":
                cell += f", {100 * s['within_10']:.0f} %"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.geometry_accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--pose", choices=("fixed", "random", "both"), default="both",
                    help="fixed: no patient roll/yaw (pure geometry); random: the simulator's pose variation")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "geometry_accuracy.json")
    args = ap.parse_args(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {"cases": args.cases, "size": args.size, "machine": platform.platform(),
                              "cpus": os.cpu_count(), "runs": {}}
    poses = ("fixed", "random") if args.pose == "both" else (args.pose,)
    for pose in poses:
        t0 = time.perf_counter()
        results = collect(args.cases, pose == "fixed", args.jobs, args.size)
        summary = summarise(results)
        report["runs"][pose] = {"seconds": time.perf_counter() - t0, "summary": summary, "cases": results}
        print(markdown(summary, f"{args.cases} pairs, pose {pose}"))
        print(f"({time.perf_counter() - t0:.0f} s)\n", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
