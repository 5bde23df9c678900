"""`make bench`: run every benchmark in one go, in a fixed order, and print where the figures went.

Each benchmark is a module ``bench/<name>.py`` with a ``main(argv) -> int``; ``BENCH=name1,name2 make bench`` runs a
subset. Results are written under ``bench/results/`` (ignored by git) and summarised in docs/BENCHMARKS.md by hand.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

ORDER = ["receive", "geometry_accuracy", "engine", "sr_write", "e2e", "triton"]


def main() -> int:
    wanted = [n for n in os.environ.get("BENCH", "").split(",") if n] or ORDER
    failed: list[str] = []
    for name in wanted:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            print(f"== bench {name}: not present ({exc})")
            continue
        print(f"== bench {name}", flush=True)
        t0 = time.perf_counter()
        rc = int(module.main([]) or 0)
        print(f"== bench {name}: rc={rc} in {time.perf_counter() - t0:.1f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
