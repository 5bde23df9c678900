"""`dicom-node simulate`: write simulated CT localizers / radiographs with their ground-truth sidecars."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from inference.simulator import KINDS, SimulationError, simulate_case, write_case
from inference.simulator.profiles import CT_PROFILES, DX_PROFILES


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, required=True, help="number of images to write")
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    parser.add_argument("--kind", default="ct_frontal",
                        help=f"comma-separated kinds, cycled over the images ({', '.join(KINDS)})")
    parser.add_argument("--shift-range", type=float, default=40.0,
                        help="patient off-centre shifts are drawn uniformly in +-this many mm (x and y)")
    parser.add_argument("--size", type=int, default=512, help="image columns (CT rows follow the scan length)")
    parser.add_argument("--profile", default=None,
                        help=f"vendor profile (CT: {', '.join(CT_PROFILES)}; DX: {', '.join(DX_PROFILES)}); "
                        "default: random per image")
    parser.add_argument("--strength", type=float, default=0.0,
                        help="domain-randomisation strength 0..1 (noise, blur, gamma, contrast, inversion)")


def run_simulate(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in str(args.kind).split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        print(f"dicom-node simulate: unknown kind(s) {bad or kinds}; expected {', '.join(KINDS)}", file=sys.stderr)
        return 2
    if args.count < 1:
        print("dicom-node simulate: --count must be at least 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    for i in range(args.count):
        kind = kinds[i % len(kinds)]
        profile = args.profile
        if profile is not None and (profile in CT_PROFILES) != (kind != "dx"):
            profile = None  # a CT profile does not apply to DX and vice versa
        try:
            case = simulate_case(args.seed + i, kind=kind, profile=profile, size=args.size,
                                 randomize={"shift_range": args.shift_range, "strength": args.strength})
        except SimulationError as exc:
            print(f"dicom-node simulate: {exc}", file=sys.stderr)
            return 2
        write_case(case, args.out)
    dt = time.perf_counter() - t0
    print(f"wrote {args.count} images (+ truth .json) to {args.out} in {dt:.1f} s ({dt / args.count * 1000:.0f} ms each)")
    return 0
