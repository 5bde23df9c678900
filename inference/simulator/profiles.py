"""Vendor-like profiles: scanner geometry and which geometry attributes the DICOM header carries.

Modelled on what real scanners write (see docs/SIMULATOR.md): the two Philips localizers in
../shared/realdata carry Table Height but no source distances, and place the frontal image plane at
y = 255 - TableHeight (a table-based patient frame); other vendors write Distance Source to Detector / Patient.
Profiles are *like* a vendor, never a claim of what a given product writes.

Conventions shared by every CT profile:

* The frontal localizer plane (IPP y) and the lateral plane (IPP x) pass through the isocenter.
* Table Height (0018,1130) = distance from the table top to the isocenter, positive when the table top is below
  it (DICOM definition). The isocenter's LPS y is ``iso_y(table_height)``; its x is 0.
* Pixel Spacing is at the isocenter plane; rows are along -z (table travel), columns along +x (frontal) or +y
  (lateral).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CTProfile:
    name: str
    manufacturer: str
    model: str
    sod: float  # mm, source to isocenter
    sid: float  # mm, source to detector
    fov: float  # mm across the columns at the isocenter plane
    row_spacing_factor: float  # row spacing / column spacing
    iso_y: Callable[[float], float]  # isocenter LPS y (mm) as a function of Table Height
    write_distances: bool  # (0018,1110) and (0018,1111)
    write_table_height: bool
    write_data_collection_center: bool  # (0018,9313)
    frontal_view: str  # 'AP' or 'PA'
    lateral_view: str  # 'LAT_R' (tube at the patient's right) or 'LAT_L'
    patient_position: str
    rescale_intercept: float
    gain: float  # stored value per unit of line integral
    offset: float  # stored value of air (before the rescale)
    kvp: float
    ma: float
    exposure_time_ms: float
    ctdivol: float | None  # mGy, written when not None
    window: tuple[float, float]  # centre, width (rescaled units)
    scan_options: str
    image_type_extra: tuple[str, ...] = ()


def _philips_iso(th: float) -> float:
    return 255.0 - th


def _zero_iso(th: float) -> float:
    return 0.0


def _tabletop_iso(th: float) -> float:
    return -th


CT_PROFILES: dict[str, CTProfile] = {
    "philips": CTProfile(
        "philips", "Philips", "Ingenuity CT", 570.0, 1040.0, 500.0, 1.0, _philips_iso,
        write_distances=False, write_table_height=True, write_data_collection_center=False,
        frontal_view="PA", lateral_view="LAT_L", patient_position="FFS", rescale_intercept=-1024.0,
        gain=230.0, offset=60.0, kvp=120.0, ma=30.0, exposure_time_ms=5000.0, ctdivol=0.16,
        window=(20.0, 1500.0), scan_options="SURVIEW",
    ),
    "siemens": CTProfile(
        "siemens", "SIEMENS", "SOMATOM Definition AS", 595.0, 1085.6, 512.0, 1.0, _zero_iso,
        write_distances=True, write_table_height=True, write_data_collection_center=False,
        frontal_view="AP", lateral_view="LAT_R", patient_position="HFS", rescale_intercept=-1024.0,
        gain=260.0, offset=40.0, kvp=120.0, ma=35.0, exposure_time_ms=4200.0, ctdivol=None,
        window=(0.0, 2000.0), scan_options="TOPOGRAM",
    ),
    "ge": CTProfile(
        "ge", "GE MEDICAL SYSTEMS", "LightSpeed VCT", 541.0, 949.075, 500.0, 1.1, _zero_iso,
        write_distances=True, write_table_height=True, write_data_collection_center=False,
        frontal_view="AP", lateral_view="LAT_L", patient_position="HFS", rescale_intercept=0.0,
        gain=240.0, offset=80.0, kvp=120.0, ma=10.0, exposure_time_ms=4500.0, ctdivol=None,
        window=(1200.0, 2500.0), scan_options="SCOUT MODE",
    ),
    "canon": CTProfile(
        "canon", "CANON_MEC", "Aquilion ONE", 600.0, 1072.0, 500.0, 1.0, _tabletop_iso,
        write_distances=True, write_table_height=True, write_data_collection_center=True,
        frontal_view="PA", lateral_view="LAT_R", patient_position="HFS", rescale_intercept=-1024.0,
        gain=250.0, offset=50.0, kvp=120.0, ma=20.0, exposure_time_ms=3600.0, ctdivol=0.2,
        window=(40.0, 1800.0), scan_options="SCANOGRAM",
    ),
}


@dataclass(frozen=True)
class DXProfile:
    name: str
    manufacturer: str
    model: str
    sid: float  # mm
    detector_mm: float  # square detector side
    photometric: str  # MONOCHROME1 or MONOCHROME2
    bits_stored: int
    gain: float
    offset: float
    write_sod: bool  # (0018,1111) + Estimated Radiographic Magnification Factor + calibrated Pixel Spacing
    write_pixel_spacing: bool  # (0028,0030) (calibrated GEOMETRY when write_sod else = imager spacing)
    nominal_object_to_detector: float  # mm, what the modality assumes for its estimated SOD
    output_mgy_per_mas_1m: float  # tube output at 1 m (for the dose-area product)
    kvp: float
    mas: float


DX_PROFILES: dict[str, DXProfile] = {
    "canon_dx": DXProfile("canon_dx", "Canon Inc.", "CXDI-710C", 1800.0, 430.0, "MONOCHROME1", 12, 330.0, 300.0,
                          write_sod=True, write_pixel_spacing=True, nominal_object_to_detector=150.0,
                          output_mgy_per_mas_1m=0.085, kvp=125.0, mas=3.2),
    "agfa_dx": DXProfile("agfa_dx", "Agfa", "DX-D 600", 1500.0, 430.0, "MONOCHROME2", 14, 1300.0, 800.0,
                         write_sod=False, write_pixel_spacing=False, nominal_object_to_detector=0.0,
                         output_mgy_per_mas_1m=0.06, kvp=110.0, mas=4.0),
    "fuji_dx": DXProfile("fuji_dx", "FUJIFILM Corporation", "FDR D-EVO II", 1800.0, 430.0, "MONOCHROME1", 12, 320.0,
                         280.0, write_sod=False, write_pixel_spacing=True, nominal_object_to_detector=0.0,
                         output_mgy_per_mas_1m=0.08, kvp=120.0, mas=2.5),
}
