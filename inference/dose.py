"""Dose-related size quantities: ellipse area, effective and water-equivalent diameter, SSDE, DLP and DAP shares.

Units: lengths in mm unless a name says ``_cm``; areas in cm2; CTDIvol in mGy; DLP in mGy.cm; DAP in dGy.cm2.

* SSDE conversion factor (AAPM Report 204, exponential fits to its Tables 1 and 2, D in cm):
  ``f = a * exp(-b * D)``; 32 cm CTDI phantom a = 3.704369, b = 0.03671937; 16 cm phantom a = 1.874799,
  b = 0.03871313. AAPM Report 220 (Appendix) says D should be the water-equivalent diameter Dw when it is known.
* Water-equivalent diameter (AAPM Report 220): ``Dw = 2 * sqrt(Aw / pi)`` with the water-equivalent area of a
  cross-section ``Aw = integral of the water-equivalent path length (WEPL) across the fan``. From a localizer row the
  WEPL comes from the pixel value through a per-scanner calibration (``ScannerCalibration``: wepl_mm =
  slope * (value - offset)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from pydicom.dataset import Dataset

from nodecore.config_schema import ScannerCalibration
from nodecore.scanners import first_match

# AAPM Report 204 fit coefficients (a, b), D in cm, keyed by CTDI phantom diameter (cm).
SSDE_COEFFICIENTS: Mapping[int, tuple[float, float]] = {
    32: (3.704369, 0.03671937),
    16: (1.874799, 0.03871313),
}
# Range of effective diameters tabulated in AAPM Report 204 (cm); outside it the fit is extrapolated.
SSDE_TABLE_RANGE_CM = (8.0, 45.0)
HEAD_REGIONS = frozenset({"HEAD"})


def ssde_phantom_for_region(label: str) -> int:
    """CTDI phantom diameter (cm) used for a region: 16 cm for head regions, 32 cm for the body."""
    return 16 if label.upper() in HEAD_REGIONS else 32


def ssde_conversion_factor(diameter_cm: float | np.ndarray, phantom_cm: int = 32) -> float | np.ndarray:
    """AAPM Report 204 conversion factor f(D) = a exp(-b D) for an (effective or water-equivalent) diameter in cm."""
    if phantom_cm not in SSDE_COEFFICIENTS:
        raise ValueError(f"CTDI phantom must be 16 or 32 cm, got {phantom_cm!r}")
    d = np.asarray(diameter_cm, dtype=float)
    if np.any(~np.isfinite(d)) or np.any(d <= 0):
        raise ValueError(f"diameter must be positive and finite (cm), got {diameter_cm!r}")
    a, b = SSDE_COEFFICIENTS[phantom_cm]
    f = a * np.exp(-b * d)
    return float(f) if np.ndim(f) == 0 else f


def ssde_factor_uncertainty(diameter_cm: float, u_diameter_cm: float, phantom_cm: int = 32) -> float:
    """Standard uncertainty of f propagated from that of D: u(f) = b f u(D)."""
    _, b = SSDE_COEFFICIENTS[phantom_cm]
    return abs(b * float(ssde_conversion_factor(diameter_cm, phantom_cm)) * u_diameter_cm)


def ellipse_area_cm2(width_mm: float, height_mm: float) -> float:
    """Area (cm2) of the ellipse whose axes are the box sides: pi/4 * w * h (the original project's definition)."""
    if width_mm < 0 or height_mm < 0:
        raise ValueError(f"box sides must be non-negative, got {width_mm!r} x {height_mm!r} mm")
    return math.pi / 4.0 * width_mm * height_mm / 100.0


def effective_diameter_cm(ap_mm: float, lat_mm: float) -> float:
    """AAPM Report 204 effective diameter sqrt(AP x LAT), in cm, from AP and lateral dimensions in mm."""
    if ap_mm <= 0 or lat_mm <= 0:
        raise ValueError(f"AP and LAT dimensions must be positive, got {ap_mm!r}, {lat_mm!r} mm")
    return math.sqrt(ap_mm * lat_mm) / 10.0


def water_equivalent_diameter_mm(wepl_mm: np.ndarray, step_mm: float) -> np.ndarray:
    """Dw (mm) of each cross-section from its WEPL profile(s) across the fan, samples ``step_mm`` apart.

    ``wepl_mm``: (..., N) profiles; negative values (noise below air) count as 0. Aw = sum(WEPL) * step;
    Dw = 2 sqrt(Aw / pi).
    """
    if step_mm <= 0:
        raise ValueError(f"sample step must be positive, got {step_mm!r} mm")
    area = np.clip(np.asarray(wepl_mm, dtype=float), 0.0, None).sum(axis=-1) * step_mm
    return 2.0 * np.sqrt(area / math.pi)


def match_calibration(ds: Dataset, calibrations: Sequence[ScannerCalibration]) -> ScannerCalibration | None:
    """The first calibration whose ``match`` holds for ``ds`` (the one rule: ``nodecore.scanners``)."""
    return first_match(ds, calibrations)


def wepl_from_pixels(values: np.ndarray, calibration: ScannerCalibration) -> np.ndarray:
    """Water-equivalent path length (mm) of localizer pixel values (Modality LUT applied)."""
    return calibration.slope_mm_per_unit * (np.asarray(values, dtype=float) - calibration.offset)


def region_dlp_mgy_cm(ctdivol_mgy: float, length_mm: float) -> float:
    """DLP share (mGy.cm) of a region of ``length_mm`` along z irradiated at ``ctdivol_mgy``."""
    if ctdivol_mgy < 0 or length_mm < 0:
        raise ValueError(f"CTDIvol and length must be non-negative, got {ctdivol_mgy!r} mGy, {length_mm!r} mm")
    return ctdivol_mgy * length_mm / 10.0


def dap_share(
    dap_dgy_cm2: float,
    field: tuple[float, float, float, float],
    region: tuple[float, float, float, float],
) -> tuple[float, float]:
    """(share in dGy.cm2, fraction in %) of a dose-area product falling on ``region``.

    ``field`` and ``region`` are (x_min, y_min, x_max, y_max) in the SAME plane and unit (e.g. detector-plane
    pixels or mm); the fluence is taken as uniform over the collimated field. The DAP is independent of the plane
    (dose falls as 1/r2 while the area grows as r2), so the share is DAP x overlap / field area.
    """
    fx0, fy0, fx1, fy1 = field
    fa = (fx1 - fx0) * (fy1 - fy0)
    if fa <= 0:
        raise ValueError(f"collimated field has no area: {field}")
    if dap_dgy_cm2 < 0:
        raise ValueError(f"dose-area product must be non-negative, got {dap_dgy_cm2!r} dGy.cm2")
    ox = max(0.0, min(fx1, region[2]) - max(fx0, region[0]))
    oy = max(0.0, min(fy1, region[3]) - max(fy0, region[1]))
    fraction = ox * oy / fa
    return dap_dgy_cm2 * fraction, 100.0 * fraction
