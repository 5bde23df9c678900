"""Scout simulator with exact ground truth: analytic phantom -> fan-beam CT localizers and cone-beam DX.

Public API (see docs/SIMULATOR.md for the geometry, the box definitions and the vendor profiles)::

    case = simulate_case(seed, kind="ct_frontal", shift_mm=(x, y), profile="siemens", randomize={...}, size=512)
    case.dataset   # pydicom Dataset (CT Image Storage localizer or DX for presentation)
    case.truth     # SimTruth: region boxes in pixels and LPS mm, isocenter offsets, geometry, parameters
    dcm, js = write_case(case, out_dir)
    frontal, lateral = simulate_pair(seed, shift_mm=(x, y))
"""

from __future__ import annotations

from pathlib import Path

from inference.simulator.simulate import KINDS, PROTOCOLS, SimulationError, simulate_case, simulate_pair
from inference.simulator.truth import RegionTruth, SimCase, SimTruth

__all__ = [
    "KINDS",
    "PROTOCOLS",
    "RegionTruth",
    "SimCase",
    "SimTruth",
    "SimulationError",
    "case_stem",
    "simulate_case",
    "simulate_pair",
    "write_case",
]


def case_stem(case: SimCase) -> str:
    """File stem of a case: ``sim_<seed>_<kind>``."""
    return f"sim_{case.truth.seed:06d}_{case.truth.kind}"


def write_case(case: SimCase, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<stem>.dcm`` and the sidecar ``<stem>.json`` (the SimTruth) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = case_stem(case)
    dcm = out_dir / f"{stem}.dcm"
    js = out_dir / f"{stem}.json"
    case.dataset.save_as(dcm, enforce_file_format=True)
    js.write_text(case.truth.to_json() + "\n", encoding="utf-8")
    return dcm, js
