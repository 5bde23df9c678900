"""What a site would configure for the simulated scanners: WEPL calibration and scanner geometry.

The simulator's value model is known exactly (stored = offset + gain * line integral, ``profiles.py``), so the
calibration a physicist would measure on such a scanner can be written down: slope = 1 / (gain * mu_water) and
offset = the rescaled value of the empty table and mattress (a calibration scan of the table), so the
water-equivalent path length counts the patient only. Scanner geometry (SOD, SID, tube side) is given for the
profiles whose headers lack it. Used by the demo, the accuracy benchmark and tests; real sites configure their own
scanners under ``measurement:`` in the node configuration (docs/CONFIG.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nodecore.config_schema import MeasurementSettings, ScannerCalibration, ScannerGeometry


def _vertical_chord(component: Any) -> float:
    from inference.simulator.raycast import Rays

    rays = Rays((np.zeros((1, 1)), np.full((1, 1), -1000.0), np.zeros((1, 1))),
                (np.zeros((1, 1)), np.ones((1, 1)), np.zeros((1, 1))))
    return float(component.length(rays)[0, 0])


def simulated_site_config() -> dict[str, Any]:
    """The ``measurement:`` section of a node configuration (YAML-ready dict) for the simulated CT scanners."""
    from inference.simulator.phantom import MU_WATER, table_components
    from inference.simulator.profiles import CT_PROFILES

    table_p = sum(c.excess * _vertical_chord(c) for c in table_components(0.0))  # table + mattress, vertical ray
    calibrations, geometry = [], []
    for p in CT_PROFILES.values():
        calibrations.append({
            "match": {"Manufacturer": p.manufacturer},
            "slope_mm_per_unit": float(1.0 / (p.gain * MU_WATER)),
            "offset": float(p.offset + p.gain * table_p + p.rescale_intercept),
        })
        geometry.append({
            "match": {"Manufacturer": p.manufacturer, "ManufacturerModelName": p.model},
            "sod_mm": float(p.sod),
            "sid_mm": float(p.sid),
            "frontal_view_position": p.frontal_view,
            "lateral_view_position": {"LAT_L": "RL", "LAT_R": "LL"}[p.lateral_view],
        })
    return {"scanner_calibrations": calibrations, "options": {"scanner_geometry": geometry}}


def simulated_site_settings() -> MeasurementSettings:
    """``simulated_site_config`` as the typed settings ``inference.measure.measure_image`` takes."""
    cfg = simulated_site_config()
    cals = tuple(ScannerCalibration(match=c["match"], slope_mm_per_unit=c["slope_mm_per_unit"], offset=c["offset"])
                 for c in cfg["scanner_calibrations"])
    geometry = tuple(ScannerGeometry(**g) for g in cfg["options"]["scanner_geometry"])
    return MeasurementSettings(scanner_calibrations=cals, scanner_geometry=geometry)
