"""Per-region physical measurements of one image (and of a frontal + lateral localizer pair).

``measure_image`` turns detections (boxes in original pixels, SCOORD) into ``ImageMeasurements``: box sizes in mm
at the plane the geometry allows, centres in LPS mm, isocenter offsets, ellipse area, water-equivalent diameter,
SSDE, DLP and DAP shares. What cannot be computed goes in ``unavailable`` with the reason; estimates carry
``estimated=True`` and a standard uncertainty. ``combine_views`` solves a frontal and a lateral localizer of one
Frame of Reference together for exact fan-beam-corrected 3-D offsets. Conventions: docs/GEOMETRY.md.

Fan-beam model of a region: each transverse cross-section is an ellipse; a localizer shows the shadow of the rays
from the source tangent to it (``geometry.silhouette_extents``); ``combine_views`` uses per-region edge models
(``SILHOUETTE_MODELS``: what casts each shadow edge, e.g. the iliac wing tips for the pelvis). Offsets: ``iso_offset_lateral`` = centre x minus
isocenter x (+: patient's left), ``iso_offset_vertical`` = centre y minus isocenter y (+: posterior).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from inference import dose
from inference.geometry import (
    EdgeModel,
    GeometryError,
    ImageGeometry,
    SilhouetteModel,
    Vec3,
    geometry_from_dataset,
    invert_silhouette,
    pixel_to_patient,
    solve_extent,
    table_move_instruction,
)
from inference.orientation import Orientation, canonical_orientation
from inference.types import (
    Detection,
    GeometryLevel,
    ImageMeasurements,
    Quantity,
    QuantityKind,
    RegionMeasurement,
)
from nodecore.config_schema import MEASUREMENT_OPTION_DEFAULTS, MeasurementSettings, RegionShape

K = QuantityKind
_DEFAULT_SETTINGS = MeasurementSettings()

# Constants from adult anatomy as modelled by the MIRD-type simulator phantom (docs/GEOMETRY.md); configurable
# through the measurement option ``region_model`` ({label: {density, centre_fraction, aspect, posterior_mm}}).
DEFAULT_REGION_MODEL: Mapping[str, RegionShape] = {
    "HEAD": RegionShape(density=0.95, centre_fraction=0.58, aspect=1.25),  # head holder lifts the head
    "CHEST": RegionShape(density=1.03, aspect=0.66, posterior_mm=25.0, bone_wepl_mm=30.0),  # cage on the back
    "ABDOMEN": RegionShape(density=1.0, centre_fraction=0.5, aspect=0.78, bone_wepl_mm=30.0),
    "PELVIS": RegionShape(density=1.0, centre_fraction=0.42, aspect=0.29, bone_wepl_mm=30.0),
    "SPINE": RegionShape(density=1.0, centre_fraction=0.24, aspect=0.8, bone_wepl_mm=30.0),
}
# What casts each shadow edge of a region in ``combine_views`` (geometry.SilhouetteModel). CHEST (rib-cage envelope)
# and the others: the elliptical cross-section, exact for an ellipse. ABDOMEN (trunk: the widest and the deepest
# cross-sections lie at different z) and PELVIS (bony pelvis: the AP extremes are the iliac wing tips and the pubis,
# far from the midline; the lateral extremes are the trochanters) are empirical fits on simulated pairs (seeds
# 7000-7039, pose fixed; docs/GEOMETRY.md): in the lateral view the pelvis's posterior edge is cast by the pair of
# iliac wing tips 0.818 half-widths either side of the midline, the anterior edge by the pubic pair at 0.549 (the
# same fractions as measured directly from the phantom's extreme points); across the frontal view, by trochanter
# caps lying 0.084 half-depths anterior of the box centre.
SILHOUETTE_MODELS: Mapping[str, SilhouetteModel] = {
    "ABDOMEN": SilhouetteModel(
        EdgeModel(across=1.62, depth=1.21, offset_lps=0.016), EdgeModel(across=1.62, depth=1.21, offset_lps=0.016),
        EdgeModel(across=0.226, depth=0.466, offset_lps=0.003), EdgeModel(across=1.171, depth=1.110, offset_lps=0.001),
        "trunk: fitted elliptical caps (anterior: the belly of the deepest cross-section)"),
    "PELVIS": SilhouetteModel(
        EdgeModel(across=0.29, depth=0.68, offset_lps=-0.084), EdgeModel(across=0.29, depth=0.68, offset_lps=-0.084),
        EdgeModel(across=0.0, depth=0.0, offset_pair=0.549), EdgeModel(across=0.0, depth=0.0, offset_pair=0.818),
        "bony pelvis: trochanter caps across, wing-tip / pubis points along the beam"),
}
DEFAULT_OPTIONS: Mapping[str, float] = MEASUREMENT_OPTION_DEFAULTS


@dataclass(frozen=True)
class RegionFan:
    """What a CT localizer shows of one region across the fan, kept for ``combine_views``.

    ``u_lo``/``u_hi``: shadow edges at the isocenter plane, mm along ``ImageGeometry.fan_direction`` from the
    isocenter; ``z_lo``/``z_hi``: LPS z extent (mm); ``half_depth_mm``: estimated half thickness along the beam
    from the water-equivalent path length (None without calibrated pixels).
    """

    label: str
    score: float
    u_lo: float
    u_hi: float
    z_lo: float
    z_hi: float
    half_depth_mm: float | None = None
    dw_mm: float | None = None


@dataclass(frozen=True)
class MeasuredImage(ImageMeasurements):
    """``ImageMeasurements`` plus the geometry it was computed with (for ``combine_views`` and the CLI)."""

    geometry: ImageGeometry | None = None
    fan: tuple[RegionFan, ...] = ()
    frame_of_reference_uid: str = ""


@dataclass(frozen=True)
class CombinedRegion:
    """3-D result for one region seen on a frontal and a lateral localizer."""

    label: str
    quantities: tuple[Quantity, ...] = ()
    unavailable: tuple[tuple[QuantityKind, str], ...] = ()
    center_lps_mm: Vec3 | None = None
    table_moves: tuple[str, ...] = ()  # e.g. "move table up by 12.0 mm"

    def get(self, kind: QuantityKind) -> Quantity | None:
        return next((q for q in self.quantities if q.kind == kind), None)


@dataclass(frozen=True)
class CombinedMeasurements:
    """Frontal + lateral localizers of one Frame of Reference combined into 3-D isocenter offsets."""

    frame_of_reference_uid: str
    frontal_sop_instance_uid: str
    lateral_sop_instance_uid: str
    isocenter_lps_mm: Vec3
    isocenter_source: str
    regions: tuple[CombinedRegion, ...] = ()
    notes: tuple[str, ...] = ()

    def region(self, label: str) -> CombinedRegion | None:
        return next((r for r in self.regions if r.label == label), None)


@dataclass
class _Ctx:
    ds: Dataset
    geom: ImageGeometry
    options: dict[str, Any]
    region_model: dict[str, RegionShape]
    wepl: np.ndarray | None
    ctdivol: tuple[float, str] | None
    dlp_total: tuple[float, str] | None
    notes: list[str] = field(default_factory=list)
    transposed: bool = False  # the stored image is transposed against the head-up view (inference.orientation)


def _q(kind: QuantityKind, value: float, unit: str, method: str, *, estimated: bool = False,
       uncertainty: float | None = None) -> Quantity:
    return Quantity(kind, float(value), unit, estimated=estimated,
                    uncertainty=None if uncertainty is None else float(uncertainty), method=method)


def _dataset_number(ds: Dataset, keyword: str) -> float | None:
    try:
        v = ds.get(keyword)
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def measure_image(
    ds: Dataset,
    detections: Sequence[Detection],
    *,
    pixels: np.ndarray | None = None,
    settings: MeasurementSettings = _DEFAULT_SETTINGS,
    ctdivol_mgy: float | None = None,
    dlp_mgy_cm: float | None = None,
    orientation: Orientation | None = None,
) -> MeasuredImage:
    """Measure every detection on ``ds``.

    ``pixels``: Modality-LUT-applied float image (Rows x Columns), needed for the water-equivalent diameter and the
    single-view depth estimates; None -> those are reported unavailable. ``ctdivol_mgy`` / ``dlp_mgy_cm``: the
    study's CT dose (e.g. from its dose report); when absent, CTDIvol (0018,9345) of this image is used and the
    method says so. ``orientation``: the turn of the stored image to the head-up view (default: from the header,
    ``inference.orientation``); box width and height are those of the head-up view (across / along the body).
    """
    options: dict[str, Any] = {**DEFAULT_OPTIONS, **dict(settings.options)}
    geom = geometry_from_dataset(ds, scanner_geometry=settings.scanner_geometry)
    model = {**DEFAULT_REGION_MODEL, **{str(k).upper(): v for k, v in settings.region_model.items()}}
    if orientation is None:
        orientation = canonical_orientation(ds)
    ctx = _Ctx(ds, geom, options, model, None, None, None, list(geom.notes), orientation.transpose)
    if pixels is not None:
        arr = np.asarray(pixels)
        if arr.ndim != 2 or arr.shape != (geom.rows, geom.columns):
            ctx.notes.append(f"pixels of shape {arr.shape} do not match Rows x Columns {geom.rows}x{geom.columns}: ignored")
        elif geom.kind == "ct_localizer":
            cal = dose.match_calibration(ds, settings.scanner_calibrations)
            if cal is None:
                ctx.notes.append(
                    "no scanner calibration matches this scanner (Manufacturer/Model): water-equivalent quantities"
                    " not computed; add one under measurement.scanner_calibrations"
                )
            else:
                ctx.wepl = dose.wepl_from_pixels(arr, cal)
    if ctdivol_mgy is not None:
        ctx.ctdivol = (ctdivol_mgy, "study CTDIvol")
    elif (v := _dataset_number(ds, "CTDIvol")) is not None and geom.kind.startswith("ct"):
        ctx.ctdivol = (v, "CTDIvol (0018,9345) of this acquisition")
    if dlp_mgy_cm is not None:
        ctx.dlp_total = (dlp_mgy_cm, "study DLP")

    regions: list[RegionMeasurement] = []
    fans: list[RegionFan] = []
    for det in detections:
        if geom.level == GeometryLevel.PATIENT:
            rm, fan = _measure_ct_region(ctx, det)
            if fan is not None:
                fans.append(fan)
        else:
            rm = _measure_projection_region(ctx, det)
        regions.append(rm)
    image_quantities = _diaphragm(ctx, detections)
    isocenter = geom.isocenter
    if geom.level == GeometryLevel.PATIENT and not geom.frame_of_reference_uid:
        regions, image_quantities = _without_frame(regions, image_quantities)
        fans = []
        isocenter = None
        ctx.notes.append(NO_FRAME_OF_REFERENCE)
    return MeasuredImage(
        sop_instance_uid=geom.sop_instance_uid,
        geometry_level=geom.level,
        regions=tuple(regions),
        view=geom.view,
        isocenter_lps_mm=isocenter,
        isocenter_source=geom.isocenter_source,
        notes=tuple(dict.fromkeys(ctx.notes)),
        image_quantities=image_quantities,
        geometry=geom,
        fan=tuple(fans),
        frame_of_reference_uid=geom.frame_of_reference_uid,
    )


NO_FRAME_OF_REFERENCE = (
    "Frame of Reference UID (0020,0052) absent (e.g. removed by an anonymiser): patient coordinates cannot be"
    " referenced, so the 3-D region coordinates (SCOORD3D), centres, isocenter offsets and the diaphragm level are"
    " not reported; pixel coordinates and sizes are"
)
# Quantities that are positions in the patient frame (meaningless without its Frame of Reference UID).
FRAME_QUANTITIES = (K.CENTER_X, K.CENTER_Y, K.CENTER_Z, K.ISO_OFFSET_LATERAL, K.ISO_OFFSET_VERTICAL)


def _without_frame(
    regions: Sequence[RegionMeasurement], image_quantities: tuple[Quantity, ...]
) -> tuple[list[RegionMeasurement], tuple[Quantity, ...]]:
    """Regions without their patient-frame polygon and positions (each listed unavailable with the reason)."""
    reason = "Frame of Reference UID (0020,0052) absent: no patient-frame position"
    out = []
    for rm in regions:
        quantities = tuple(q for q in rm.quantities if q.kind not in FRAME_QUANTITIES)
        unavailable = tuple((k, r) for k, r in rm.unavailable if k not in FRAME_QUANTITIES)
        unavailable += tuple((k, reason) for k in FRAME_QUANTITIES)
        out.append(RegionMeasurement(rm.detection, quantities, unavailable, None))
    return out, tuple(q for q in image_quantities if q.kind != K.DIAPHRAGM_Z)


# --------------------------------------------------------------------------------------------------------------
# CT localizers


def _row_range(box_y0: float, box_y1: float, rows: int) -> tuple[int, int]:
    return max(0, int(math.floor(box_y0))), min(rows, int(math.ceil(box_y1)))


def _table_range(box: Any, geom: ImageGeometry) -> tuple[int, int]:
    """Index range of the box along the image axis that follows the table: rows, or columns when the fan runs
    along image y (a localizer stored rotated, issue 19)."""
    if geom.fan_axis == "y":
        return _row_range(box.x_min, box.x_max, geom.columns)
    return _row_range(box.y_min, box.y_max, geom.rows)


def _measure_ct_region(ctx: _Ctx, det: Detection) -> tuple[RegionMeasurement, RegionFan | None]:
    geom, box, label = ctx.geom, det.box, det.label.upper()
    q: list[Quantity] = [_q(K.CONFIDENCE, 100.0 * det.score, "%", "detection score x 100")]
    un: list[tuple[QuantityKind, str]] = []
    corners_px = np.array([[box.x_min, box.y_min], [box.x_max, box.y_min], [box.x_max, box.y_max], [box.x_min, box.y_max]])
    corners = pixel_to_patient(geom, corners_px)
    centre = pixel_to_patient(geom, np.array([box.center]))[0]
    assert geom.spacing_x_mm is not None and geom.spacing_y_mm is not None
    w_mm, h_mm = box.width * geom.spacing_x_mm, box.height * geom.spacing_y_mm
    fan_axis = geom.fan_axis
    plane_note = "at the isocenter plane (fan-beam magnification not corrected)" if geom.kind == "ct_localizer" else "in the image plane"
    w_note = plane_note if fan_axis == "x" else "along the table (z), exact" if fan_axis == "y" else "in the image plane"
    h_note = plane_note if fan_axis == "y" else "along the table (z), exact" if fan_axis == "x" else "in the image plane"
    if ctx.transposed:  # width / height are those of the head-up view (across / along the body)
        w_mm, h_mm, w_note, h_note = h_mm, w_mm, h_note, w_note
    q.append(_q(K.BOX_WIDTH, w_mm, "mm", w_note))
    q.append(_q(K.BOX_HEIGHT, h_mm, "mm", h_note))
    q.append(_q(K.ELLIPSE_AREA, dose.ellipse_area_cm2(w_mm, h_mm), "cm2", "pi/4 x box width x box height (box sides as axes)"))
    z_vals = corners[:, 2]
    z_lo, z_hi = float(z_vals.min()), float(z_vals.max())
    q.append(_q(K.CENTER_Z, centre[2], "mm", "box centre, along the table"))
    un.append((K.EFFECTIVE_DIAMETER, "needs AP and LAT: combine a frontal and a lateral localizer (combine_views)"))

    fan: RegionFan | None = None
    if geom.kind != "ct_localizer" or fan_axis is None or geom.view == "unknown" or geom.isocenter is None:
        reason = "not a CT localizer with a known fan axis and view"
        for k in (K.ISO_OFFSET_LATERAL, K.ISO_OFFSET_VERTICAL):
            un.append((k, reason))
        _ct_dose(ctx, label, q, un, rows=_table_range(box, geom), depth=None, z_len=z_hi - z_lo)
        return _region(det, q, un, corners), None

    f = np.asarray(geom.fan_direction)
    iso = np.asarray(geom.isocenter)
    u = (corners - iso) @ f
    u_lo, u_hi = float(u.min()), float(u.max())
    axis = int(np.argmax(np.abs(f)))  # 0: x (frontal), 1: y (lateral)
    sign = float(np.sign(f[axis]))
    rows = _table_range(box, geom)
    shape = ctx.region_model.get(label, RegionShape())
    thickness, t_note = _ap_thickness(ctx, shape, box, rows) if geom.view == "frontal" else (None, "")
    if t_note:
        ctx.notes.append(f"{label}: {t_note}")

    depth: tuple[float, float] | None = None  # (centre depth towards the source, its standard uncertainty)
    if geom.view == "frontal":
        est = _frontal_vertical_estimate(ctx, shape, thickness, u_lo, u_hi)
        if isinstance(est, str):
            un.append((K.ISO_OFFSET_VERTICAL, est))
            un.append((K.CENTER_Y, est))
            half_depth = 0.5 * shape.aspect * (u_hi - u_lo)
        else:
            off_y, u_off, depth, half_depth, method = est
            q.append(_q(K.ISO_OFFSET_VERTICAL, off_y, "mm", method, estimated=True, uncertainty=u_off))
            q.append(_q(K.CENTER_Y, iso[1] + off_y, "mm", method, estimated=True, uncertainty=u_off))
        cu, u_cu, method = _fan_centre(ctx, u_lo, u_hi, depth, half_depth)
        q.append(_q(K.ISO_OFFSET_LATERAL, sign * cu, "mm", method, uncertainty=u_cu))
        q.append(_q(K.CENTER_X, iso[0] + sign * cu, "mm", method, uncertainty=u_cu))
    else:  # lateral: the vertical offset is measured across the fan; the lateral position is unknown
        lat_sd = float(ctx.options["lateral_position_sd_mm"])
        half_depth = 0.5 * (u_hi - u_lo) / shape.aspect  # half LAT from the AP extent and the region's aspect
        cu, u_cu, method = _fan_centre(ctx, u_lo, u_hi, (0.0, lat_sd), half_depth)
        method += "; lateral position assumed at the isocenter: combine with a frontal view for the exact correction"
        q.append(_q(K.ISO_OFFSET_VERTICAL, sign * cu, "mm", method, uncertainty=u_cu))
        q.append(_q(K.CENTER_Y, iso[1] + sign * cu, "mm", method, uncertainty=u_cu))
        reason = "not measurable on a lateral view: combine with a frontal view"
        un.append((K.ISO_OFFSET_LATERAL, reason))
        un.append((K.CENTER_X, reason))
        depth = (0.0, lat_sd)
    dw = _ct_dose(ctx, label, q, un, rows=rows, depth=depth, z_len=z_hi - z_lo)
    fan = RegionFan(label, det.score, u_lo, u_hi, z_lo, z_hi, half_depth, dw)
    return _region(det, q, un, corners), fan


def _region(det: Detection, q: list[Quantity], un: list[tuple[QuantityKind, str]], corners: np.ndarray | None) -> RegionMeasurement:
    poly = None if corners is None else tuple((float(p[0]), float(p[1]), float(p[2])) for p in corners)
    return RegionMeasurement(det, tuple(q), tuple(un), poly)


def _ap_thickness(ctx: _Ctx, shape: RegionShape, box: Any, rows: tuple[int, int]) -> tuple[float | None, str]:
    """Geometric AP thickness (mm) of the body at the region: WEPL on the central columns / density.

    Per row the median WEPL over the central columns (+- ``central_fraction`` of the box width); over the rows
    the 90th percentile (the region's box spans its thickest cross-section).
    """
    if ctx.wepl is None:
        return None, ""
    r0, r1 = rows
    fan_y = ctx.geom.fan_axis == "y"  # stored rotated: the table runs along image x
    cx, across, n_across = (box.center[1], box.height, ctx.geom.rows) if fan_y else (box.center[0], box.width,
                                                                                     ctx.geom.columns)
    half = max(across * float(ctx.options["central_fraction"]), 1.0)
    c0, c1 = max(0, int(math.floor(cx - half))), min(n_across, int(math.ceil(cx + half)))
    if r1 <= r0 or c1 <= c0:
        return None, "box outside the image, no water-equivalent thickness"
    wepl = ctx.wepl[c0:c1, r0:r1].T if fan_y else ctx.wepl[r0:r1, c0:c1]
    per_row = np.median(np.clip(wepl, 0.0, None), axis=1)
    return max(float(np.percentile(per_row, 90)) - shape.bone_wepl_mm, 0.0) / shape.density, ""


def _frontal_vertical_estimate(
    ctx: _Ctx, shape: RegionShape, thickness: float | None, u_lo: float, u_hi: float
) -> tuple[float, float, tuple[float, float] | None, float, str] | str:
    """(offset along +y, its uncertainty, (depth towards the source, uncertainty), half-depth, method) or why not.

    The patient lies on the table pad: the back is ``Table Height - pad`` below the isocenter; the region's centre
    is above the back by the region model (see ``RegionShape``).
    """
    geom, opt = ctx.geom, ctx.options
    if geom.table_height_mm is None:
        return "Table Height (0018,1130) absent: the vertical position cannot be estimated from a frontal view"
    up = geom.room_up
    if up is None or abs(up[1]) < 0.9:
        return "Patient Position unknown or decubitus: the room vertical is not the patient's y axis"
    pad = float(opt["table_pad_mm"])
    s = geom.source_direction
    towards_source = float(np.dot(up, s)) if s is not None else None
    u_pad = math.hypot(float(opt["table_height_sd_mm"]), float(opt["table_pad_sd_mm"]))
    if shape.posterior_mm is not None:
        lat = u_hi - u_lo
        for _ in range(10):  # the width at the isocenter plane is magnified by the (unknown) depth: iterate
            half_depth = 0.5 * shape.aspect * lat
            height = -geom.table_height_mm + pad + shape.posterior_mm + half_depth
            if geom.sod_mm is None or towards_source is None:
                break
            try:
                _, half_lat = invert_silhouette(u_lo, u_hi, height * towards_source, half_depth, geom.sod_mm)
            except GeometryError:
                break
            lat = 2.0 * half_lat
        u = math.hypot(u_pad, 0.3 * shape.posterior_mm, 0.1 * half_depth)
        how = (f"posterior tissue {shape.posterior_mm:g} mm + AP/2 {half_depth:.0f} mm (AP = {shape.aspect:g} x LAT"
               f" {lat:.0f} mm)")
    else:
        if thickness is None:
            return "no calibrated pixels: the AP thickness (water-equivalent) is unknown"
        half_depth = 0.5 * shape.aspect * (u_hi - u_lo) if shape.aspect < 0.5 else 0.5 * thickness
        height = -geom.table_height_mm + pad + shape.centre_fraction * thickness
        u = math.hypot(u_pad, shape.centre_fraction * thickness * float(opt["relative_density_rel_sd"]))
        how = f"{shape.centre_fraction:g} x AP thickness {thickness:.0f} mm (water-equivalent / {shape.density:g})"
    off_y = height * up[1]
    depth = (height * towards_source, u) if towards_source is not None else None
    method = (f"estimated from one frontal view: table top {geom.table_height_mm:g} mm below the isocenter, pad"
              f" {pad:g} mm, centre above the back by {how}")
    return off_y, u, depth, half_depth, method


def _fan_centre(
    ctx: _Ctx, u_lo: float, u_hi: float, depth: tuple[float, float] | None, half_depth: float | None
) -> tuple[float, float | None, str]:
    """Centre across the fan (mm from the isocenter along the fan direction), its uncertainty and method."""
    geom = ctx.geom
    mid = (u_lo + u_hi) / 2.0
    if geom.sod_mm is None:
        return mid, None, "box centre at the isocenter plane (SOD unknown: fan-beam magnification not corrected)"
    if depth is None or geom.source_direction is None:
        return mid, None, "box centre at the isocenter plane (depth or source side unknown: not corrected)"
    d, u_d = depth
    b = half_depth or 0.0
    try:
        cu, _ = invert_silhouette(u_lo, u_hi, d, b, geom.sod_mm)
        cu_hi, _ = invert_silhouette(u_lo, u_hi, d + u_d, b, geom.sod_mm)
    except GeometryError as exc:
        return mid, None, f"box centre at the isocenter plane ({exc})"
    how = f"ellipse half-depth {b:.0f} mm" if half_depth else "point model (no thickness known)"
    return cu, abs(cu_hi - cu), f"fan-beam silhouette inverted at depth {d:+.0f} mm ({how})"


def _ct_dose(
    ctx: _Ctx,
    label: str,
    q: list[Quantity],
    un: list[tuple[QuantityKind, str]],
    *,
    rows: tuple[int, int],
    depth: tuple[float, float] | None,
    z_len: float,
) -> float | None:
    """Dw, SSDE factor, SSDE and DLP share of a region; returns Dw (mm) when computed."""
    geom, opt = ctx.geom, ctx.options
    phantom = dose.ssde_phantom_for_region(label)
    dw_mm: float | None = None
    if ctx.wepl is not None and geom.view == "lateral":
        un.append((K.WATER_EQUIVALENT_DIAMETER, "lateral localizer: the table lies in the beam; Dw is taken from the frontal view"))
    elif ctx.wepl is None:
        reason = ("no scanner calibration for this scanner" if any("no scanner calibration" in n for n in ctx.notes)
                  else "pixel values not available (or not a CT localizer)")
        un.append((K.WATER_EQUIVALENT_DIAMETER, reason))
    else:
        r0, r1 = rows
        if r1 <= r0:
            un.append((K.WATER_EQUIVALENT_DIAMETER, "box has no image rows"))
        else:
            assert geom.spacing_x_mm is not None
            step = geom.spacing_x_mm if geom.fan_axis == "x" else geom.spacing_y_mm or geom.spacing_x_mm
            profiles = ctx.wepl[r0:r1, :] if geom.fan_axis != "y" else ctx.wepl[:, r0:r1].T
            dws = dose.water_equivalent_diameter_mm(profiles, step)
            dw_mm = float(np.mean(dws))
            method = f"AAPM Report 220 from the localizer, mean of {r1 - r0} rows"
            rel_u = float(opt["wed_calibration_rel_sd"])
            if geom.sod_mm is not None and depth is not None:
                m = geom.sod_mm / (geom.sod_mm - depth[0])
                dw_mm /= math.sqrt(m)  # the area is magnified by m across the fan
                rel_u = math.hypot(rel_u, 0.5 * depth[1] / (geom.sod_mm - depth[0]))
                method += f", fan-beam corrected at depth {depth[0]:+.0f} mm"
            else:
                method += ", at the isocenter-plane scale"
            q.append(_q(K.WATER_EQUIVALENT_DIAMETER, dw_mm / 10.0, "cm", method, uncertainty=dw_mm / 10.0 * rel_u))
    if dw_mm is not None:
        d_cm = dw_mm / 10.0
        f = float(dose.ssde_conversion_factor(d_cm, phantom))
        u_f = dose.ssde_factor_uncertainty(d_cm, d_cm * float(opt["wed_calibration_rel_sd"]), phantom)
        lo, hi = dose.SSDE_TABLE_RANGE_CM
        extra = "" if lo <= d_cm <= hi else f" (Dw outside the report's {lo:g}-{hi:g} cm: extrapolated)"
        q.append(_q(K.SSDE_FACTOR, f, "1", f"AAPM Report 204, {phantom} cm phantom, from Dw{extra}", estimated=True, uncertainty=u_f))
        if ctx.ctdivol is not None:
            ct, src = ctx.ctdivol
            q.append(_q(K.SSDE, f * ct, "mGy", f"f x {src} {ct:g} mGy ({phantom} cm phantom assumed for CTDIvol)",
                        estimated=True, uncertainty=u_f * ct))
        else:
            un.append((K.SSDE, "CTDIvol unknown for this study"))
    else:
        un.append((K.SSDE_FACTOR, "needs the water-equivalent diameter, or AP and LAT from two views"))
        un.append((K.SSDE, "needs the SSDE conversion factor"))
    if ctx.ctdivol is not None:
        ct, src = ctx.ctdivol
        q.append(_q(K.DLP, dose.region_dlp_mgy_cm(ct, z_len), "mGy.cm", f"{src} x region length {z_len:.0f} mm"))
    elif ctx.dlp_total is not None and geom.rows > 0 and geom.spacing_y_mm:
        total, src = ctx.dlp_total
        scan = geom.rows * geom.spacing_y_mm if geom.fan_axis == "x" else geom.columns * (geom.spacing_x_mm or 0.0)
        if scan > 0:
            q.append(_q(K.DLP, total * min(z_len / scan, 1.0), "mGy.cm",
                        f"{src} x region length / localizer length (uniform CTDIvol assumed)", estimated=True))
    else:
        un.append((K.DLP, "neither CTDIvol nor DLP known for this study"))
    return dw_mm


def _diaphragm(ctx: _Ctx, detections: Sequence[Detection]) -> tuple[Quantity, ...]:
    """Diaphragm level (patient z, mm) from the overlap of the best CHEST and ABDOMEN boxes."""
    best: dict[str, Detection] = {}
    for d in detections:
        lab = d.label.upper()
        if lab in ("CHEST", "ABDOMEN") and (lab not in best or d.score > best[lab].score):
            best[lab] = d
    if len(best) < 2:
        return ()
    if not ctx.geom.has_patient_frame or ctx.geom.fan_axis is None:
        ctx.notes.append("diaphragm level not computed: needs a CT localizer with the table axis in the image")
        return ()
    ch, ab = best["CHEST"].box, best["ABDOMEN"].box
    along_y = ctx.geom.fan_axis == "x"  # the table runs along image y
    c_lo, c_hi = (ch.y_min, ch.y_max) if along_y else (ch.x_min, ch.x_max)
    a_lo, a_hi = (ab.y_min, ab.y_max) if along_y else (ab.x_min, ab.x_max)
    lo, hi = max(c_lo, a_lo), min(c_hi, a_hi)
    if hi >= lo:
        mid, half, how = (lo + hi) / 2.0, (hi - lo) / 2.0, "middle of the chest/abdomen box overlap"
    else:
        gap = sorted((c_lo, c_hi, a_lo, a_hi))
        mid, half, how = (gap[1] + gap[2]) / 2.0, (gap[2] - gap[1]) / 2.0, "middle of the gap between the chest and abdomen boxes"
    cx, cy = ch.center
    px = np.array([[cx, mid]]) if along_y else np.array([[mid, cy]])
    z = float(pixel_to_patient(ctx.geom, px)[0][2])
    spacing = ctx.geom.spacing_y_mm if along_y else ctx.geom.spacing_x_mm
    u = half * float(spacing or 0.0) / math.sqrt(3.0)  # uniform over the overlap
    return (_q(K.DIAPHRAGM_Z, z, "mm", how, estimated=True, uncertainty=u),)


# --------------------------------------------------------------------------------------------------------------
# projection radiographs


def _measure_projection_region(ctx: _Ctx, det: Detection) -> RegionMeasurement:
    geom, box = ctx.geom, det.box
    q: list[Quantity] = [_q(K.CONFIDENCE, 100.0 * det.score, "%", "detection score x 100")]
    un: list[tuple[QuantityKind, str]] = []
    if geom.spacing_x_mm is not None and geom.spacing_y_mm is not None:
        plane = {
            GeometryLevel.OBJECT_PLANE: "at the object plane",
            GeometryLevel.DETECTOR_PLANE: "at the detector plane (magnification unknown)",
        }.get(geom.level, "in the image plane")
        method = f"{plane}; {geom.spacing_source}"
        w, h = box.width * geom.spacing_x_mm, box.height * geom.spacing_y_mm
        if ctx.transposed:  # width / height are those of the head-up view (across / along the body)
            w, h = h, w
        q.append(_q(K.BOX_WIDTH, w, "mm", method))
        q.append(_q(K.BOX_HEIGHT, h, "mm", method))
        q.append(_q(K.ELLIPSE_AREA, dose.ellipse_area_cm2(w, h), "cm2", f"pi/4 x w x h, {plane}"))
    else:
        for k in (K.BOX_WIDTH, K.BOX_HEIGHT, K.ELLIPSE_AREA):
            un.append((k, "no pixel spacing: pixel units only"))
    for k in (K.CENTER_X, K.CENTER_Y, K.CENTER_Z, K.ISO_OFFSET_LATERAL, K.ISO_OFFSET_VERTICAL):
        un.append((k, "no patient frame (projection radiograph)"))
    _dap(ctx, box, q, un)
    return _region(det, q, un, None)


def _collimated_field(ds: Dataset, geom: ImageGeometry) -> tuple[tuple[float, float, float, float], str, bool]:
    """Collimated field in SCOORD pixels (detector plane), its source and whether it is assumed."""
    try:
        shape = str(ds.get("CollimatorShape", "") or "").upper()
        edges = [ds.get(k) for k in ("CollimatorLeftVerticalEdge", "CollimatorRightVerticalEdge",
                                     "CollimatorUpperHorizontalEdge", "CollimatorLowerHorizontalEdge")]
        if "RECTANGULAR" in shape and all(e is not None and e != "" for e in edges):
            left, right, upper, lower = (float(e) for e in edges)
            # 1-based inclusive pixel columns/rows -> SCOORD corners
            x0, x1, y0, y1 = left - 1.0, right, upper - 1.0, lower
            x0, x1 = max(0.0, x0), min(float(geom.columns), x1)
            y0, y1 = max(0.0, y0), min(float(geom.rows), y1)
            if x1 > x0 and y1 > y0:
                return (x0, y0, x1, y1), "collimator edges (0018,1702)-(0018,1708)", False
    except (TypeError, ValueError):
        pass
    return (0.0, 0.0, float(geom.columns), float(geom.rows)), "whole image (no rectangular collimator edges)", True


def _dap(ctx: _Ctx, box: Any, q: list[Quantity], un: list[tuple[QuantityKind, str]]) -> None:
    dap = _dataset_number(ctx.ds, "ImageAndFluoroscopyAreaDoseProduct")
    if dap is None or dap <= 0:
        reason = "Image and Fluoroscopy Area Dose Product (0018,115E) absent" if dap is None else \
            "Image and Fluoroscopy Area Dose Product (0018,115E) is 0 (not recorded)"
        un.append((K.DAP_SHARE, reason))
        un.append((K.DAP_FRACTION, reason))
        return
    if ctx.geom.rows <= 0 or ctx.geom.columns <= 0:
        un.append((K.DAP_SHARE, "image size unknown"))
        return
    fld, src, assumed = _collimated_field(ctx.ds, ctx.geom)
    share, pct = dose.dap_share(dap, fld, box.as_tuple())
    method = f"DAP {dap:g} dGy.cm2 x (box within field) / field area, detector plane; field: {src}"
    u_share = share * 0.1 if assumed else None
    q.append(_q(K.DAP_SHARE, share, "dGy.cm2", method, estimated=assumed, uncertainty=u_share))
    q.append(_q(K.DAP_FRACTION, pct, "%", method, estimated=assumed, uncertainty=None if u_share is None else pct * 0.1))


# --------------------------------------------------------------------------------------------------------------
# frontal + lateral


def combine_views(
    frontal: ImageMeasurements,
    lateral: ImageMeasurements,
    *,
    ctdivol_mgy: float | None = None,
    max_iterations: int = 50,
) -> CombinedMeasurements:
    """3-D offsets from a frontal and a lateral CT localizer of the same Frame of Reference.

    Each region's axis-aligned extent (x, y; half LAT, half AP) is solved so that its fan-beam shadows match both
    boxes (``geometry.solve_extent``; the lateral position from the frontal view sets the lateral view's depth and
    vice versa), with the region's ``SILHOUETTE_MODELS`` entry saying what casts each edge (default: the
    elliptical cross-section, exact for ellipses). Both arguments must come from ``measure_image``.
    Raises ValueError for views of different Frames of Reference or the wrong orientation.
    """
    fg, lg = _geometry_of(frontal, "frontal"), _geometry_of(lateral, "lateral")
    if fg.view != "frontal" or lg.view != "lateral":
        raise ValueError(f"combine_views needs a frontal and a lateral localizer, got {fg.view} and {lg.view}")
    if not fg.frame_of_reference_uid or fg.frame_of_reference_uid != lg.frame_of_reference_uid:
        raise ValueError("frontal and lateral localizers are not in the same Frame of Reference (0020,0052)")
    assert fg.isocenter is not None and lg.isocenter is not None
    notes: list[str] = []
    explicit = ("Data Collection", "Reconstruction Target")
    if fg.isocenter_source.startswith(explicit):
        iso = np.asarray(fg.isocenter)
        iso_source = "frontal: " + fg.isocenter_source
    else:  # each localizer's plane gives the isocenter along its beam
        iso = np.array([lg.isocenter[0], fg.isocenter[1], fg.isocenter[2]])
        iso_source = "x = lateral localizer plane, y = frontal localizer plane"
    for name, own in (("frontal", fg.isocenter), ("lateral", lg.isocenter)):
        dev = np.abs(np.asarray(own)[:2] - iso[:2])
        if np.any(dev > 1.0):
            notes.append(f"{name} view's own isocenter {tuple(round(v, 1) for v in own[:2])} differs from"
                         f" the combined one {tuple(round(float(v), 1) for v in iso[:2])} by up to {dev.max():.1f} mm")
    f_fan = {r.label: r for r in sorted(_fans(frontal), key=lambda r: r.score)}
    l_fan = {r.label: r for r in sorted(_fans(lateral), key=lambda r: r.score)}
    ff, lf = np.asarray(fg.fan_direction), np.asarray(lg.fan_direction)
    # shift each view's u to the combined isocenter
    f_shift = float((np.asarray(fg.isocenter) - iso) @ ff)
    l_shift = float((np.asarray(lg.isocenter) - iso) @ lf)
    fx, ly = float(np.sign(ff[0])), float(np.sign(lf[1]))
    f_ok = fg.sod_mm is not None and fg.source_direction is not None
    l_ok = lg.sod_mm is not None and lg.source_direction is not None
    if not f_ok:
        notes.append("frontal view: SOD or source side unknown, its fan-beam magnification is not corrected")
    if not l_ok:
        notes.append("lateral view: SOD or source side unknown, its fan-beam magnification is not corrected")
    sf = float(fg.source_direction[1]) if fg.source_direction is not None else 0.0
    sl = float(lg.source_direction[0]) if lg.source_direction is not None else 0.0

    regions: list[CombinedRegion] = []
    for label in sorted(set(f_fan) | set(l_fan)):
        if label not in f_fan or label not in l_fan:
            missing = "lateral" if label not in l_fan else "frontal"
            regions.append(CombinedRegion(label, unavailable=((K.ISO_OFFSET_LATERAL, f"not detected on the {missing} view"),
                                                              (K.ISO_OFFSET_VERTICAL, f"not detected on the {missing} view"))))
            continue
        a, b = f_fan[label], l_fan[label]
        fu = (a.u_lo + f_shift, a.u_hi + f_shift)
        lu = (b.u_lo + l_shift, b.u_hi + l_shift)
        model = SILHOUETTE_MODELS.get(label, SilhouetteModel())
        # shadows in LPS terms (x: right..left; y: anterior..posterior), relative to the combined isocenter
        f_lo, f_hi = sorted((fx * fu[0], fx * fu[1]))
        l_lo, l_hi = sorted((ly * lu[0], ly * lu[1]))
        f_lps, l_lps = (f_lo, f_hi), (l_lo, l_hi)
        try:
            (x_lo, x_hi), (y_lo, y_hi) = solve_extent(
                f_lps, l_lps, frontal_sod_mm=fg.sod_mm if f_ok else None, frontal_source_sign=float(np.sign(sf)) or 1.0,
                lateral_sod_mm=lg.sod_mm if l_ok else None, lateral_source_sign=float(np.sign(sl)) or 1.0,
                model=model, max_iterations=max_iterations)
        except GeometryError as exc:
            reason = f"frontal and lateral shadows could not be solved together: {exc}"
            regions.append(CombinedRegion(label, unavailable=((K.ISO_OFFSET_LATERAL, reason), (K.ISO_OFFSET_VERTICAL, reason))))
            continue
        cx, cy = (x_lo + x_hi) / 2.0, (y_lo + y_hi) / 2.0
        half_x, half_y = (x_hi - x_lo) / 2.0, (y_hi - y_lo) / 2.0
        method = f"frontal + lateral localizers solved together ({model.name}, fan-beam silhouettes)"
        z_c = ((a.z_lo + a.z_hi) / 2.0 + (b.z_lo + b.z_hi) / 2.0) / 2.0
        centre = (float(iso[0] + cx), float(iso[1] + cy), z_c)
        lat, ap = 2.0 * half_x, 2.0 * half_y
        q = [
            _q(K.ISO_OFFSET_LATERAL, cx, "mm", method),
            _q(K.ISO_OFFSET_VERTICAL, cy, "mm", method),
            _q(K.CENTER_X, centre[0], "mm", method),
            _q(K.CENTER_Y, centre[1], "mm", method),
            _q(K.CENTER_Z, z_c, "mm", "mean of the two views' box centres"),
            _q(K.BOX_WIDTH, lat, "mm", "lateral width (LAT) of the widest cross-section, fan-beam corrected"),
        ]
        un: list[tuple[QuantityKind, str]] = []
        phantom = dose.ssde_phantom_for_region(label)
        if lat > 0 and ap > 0:
            d_eff = dose.effective_diameter_cm(ap, lat)
            q.append(_q(K.EFFECTIVE_DIAMETER, d_eff, "cm", f"sqrt(AP {ap:.0f} mm x LAT {lat:.0f} mm)"))
            dws = [v for v in (a.dw_mm, b.dw_mm) if v is not None]
            if dws:
                d_cm, how = float(np.mean(dws)) / 10.0, "Dw"
            else:
                d_cm, how = d_eff, "effective diameter (no Dw: water equivalence not known)"
            fct = float(dose.ssde_conversion_factor(d_cm, phantom))
            q.append(_q(K.SSDE_FACTOR, fct, "1", f"AAPM Report 204, {phantom} cm phantom, from {how}", estimated=True))
            if ctdivol_mgy is not None:
                q.append(_q(K.SSDE, fct * ctdivol_mgy, "mGy", f"f x study CTDIvol {ctdivol_mgy:g} mGy", estimated=True))
            else:
                un.append((K.SSDE, "CTDIvol unknown for this study"))
        moves = (
            table_move_instruction(cx, (1.0, 0.0, 0.0), fg.patient_position),
            table_move_instruction(cy, (0.0, 1.0, 0.0), fg.patient_position),
        )
        regions.append(CombinedRegion(label, tuple(q), tuple(un), centre, moves))
    return CombinedMeasurements(
        frame_of_reference_uid=fg.frame_of_reference_uid,
        frontal_sop_instance_uid=frontal.sop_instance_uid,
        lateral_sop_instance_uid=lateral.sop_instance_uid,
        isocenter_lps_mm=(float(iso[0]), float(iso[1]), float(iso[2])),
        isocenter_source=iso_source,
        regions=tuple(regions),
        notes=tuple(notes),
    )


def _geometry_of(m: ImageMeasurements, name: str) -> ImageGeometry:
    g = getattr(m, "geometry", None)
    if g is None:
        raise ValueError(f"the {name} measurements carry no geometry: pass the result of measure_image")
    if not g.has_patient_frame or g.fan_direction is None or g.isocenter is None:
        raise ValueError(f"the {name} image is not a CT localizer with a patient frame and a known fan axis")
    return g


def _fans(m: ImageMeasurements) -> tuple[RegionFan, ...]:
    return tuple(getattr(m, "fan", ()))
