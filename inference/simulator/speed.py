"""Timing of the simulator: ``python -m inference.simulator.speed [--count N] [--size S]``.

Reports wall and CPU time per image (CPU time is the fairer number on a shared machine) for each kind, with and
without the water-equivalent-diameter truth (``measure``). Not a test: speed is never asserted.
"""

from __future__ import annotations

import argparse
import time

from inference.simulator import simulate_case


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args(argv)
    runs = [
        ("ct_frontal", {"protocol": "abdomen_pelvis"}, True),
        ("ct_frontal", {"protocol": "abdomen_pelvis"}, False),
        ("ct_frontal", {"protocol": "chest_abdomen_pelvis"}, True),
        ("ct_lateral", {"protocol": "abdomen_pelvis"}, True),
        ("dx", {"exam": "chest"}, True),
    ]
    print(f"{'kind':<11} {'protocol/exam':<22} {'measure':<8} {'rows x cols':<12} {'wall ms':>8} {'cpu ms':>8}")
    for kind, rnd, measure in runs:
        simulate_case(10_000, kind=kind, size=args.size, randomize=rnd, measure=measure)  # warm-up
        w0, c0 = time.perf_counter(), time.process_time()
        shape = (0, 0)
        for i in range(args.count):
            case = simulate_case(i, kind=kind, size=args.size, randomize=rnd, measure=measure)
            shape = (case.dataset.Rows, case.dataset.Columns)
        wall = (time.perf_counter() - w0) / args.count * 1000
        cpu = (time.process_time() - c0) / args.count * 1000
        label = next(iter(rnd.values()))
        print(f"{kind:<11} {label:<22} {measure!s:<8} {shape[0]}x{shape[1]:<8} {wall:8.0f} {cpu:8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
