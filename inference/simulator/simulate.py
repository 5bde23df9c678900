"""Simulate one CT localizer or radiograph with exact ground truth.

``simulate_case(seed, kind=..., shift_mm=..., profile=..., randomize=..., size=...)`` is a pure function of its
arguments (same arguments, same pixels and truth). Steps: sample a subject (``phantom.py``), place it on the table
with the requested off-centre shift, render analytic line integrals P through the acquisition geometry
(``projection.py``), add quantum noise, detector blur and the vendor's processing, map P to stored values, and
measure the true region silhouettes and 3-D extents (``render.py``).

Pixel values (before any domain-randomisation photometric change): stored = offset + gain * P' where P' is P after
noise, blur, edge enhancement and latitude compression (all preserve the integral of P over the image), so
``truth.geometry['value_model']`` is a linear calibration of line integrals while ``params['photometric_linear']``
is true.

``randomize`` keys (all optional): ``strength`` (0..1, scales the photometric randomisation: noise, blur, gamma,
contrast, edge enhancement, latitude; 0 = the profile's default processing), ``latitude`` (dynamic-range
compression amount), ``arms`` ('up'|'down'|'none'), ``table``
(bool), ``roll_deg`` / ``yaw_deg`` (patient rotation about the long axis / in-plane tilt, degrees),
``protocol`` (CT scan range: 'head', 'head_neck_chest', 'chest', 'abdomen_pelvis', 'chest_abdomen_pelvis',
'whole'), ``crop_mm`` (random extension/crop of each end of the scan range, mm), ``girth`` (0.5 thin .. 2.5 obese),
``invert`` (bool: stored values inverted, header unchanged), ``table_half_width`` (mm, default 170-235), ``gamma``, ``contrast``, ``noise`` (photons per
unattenuated ray), ``blur_px``, ``edge`` (unsharp amount), ``collimation`` (DX: field size fraction 0.5..1),
``exam`` (DX: 'chest' | 'abdomen' | 'pelvis'), ``shift_range`` (mm, when shift_mm is None), ``z_offset`` (CT
table position of the vertex, mm).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from inference.simulator import dicom_out
from inference.simulator.phantom import (
    MU_WATER,
    REGIONS,
    Phantom,
    build_phantom,
    sample_subject,
    table_components,
)
from inference.simulator.profiles import CT_PROFILES, DX_PROFILES, CTProfile, DXProfile
from inference.simulator.projection import (
    ConeBeamRadiograph,
    FanBeamLocalizer,
    Geometry,
    Orthographic,
    OrthoSlices,
    Placement,
)
from inference.simulator.raycast import Quadric
from inference.simulator.render import line_integrals, silhouette_box
from inference.simulator.truth import RegionTruth, SimCase, SimTruth
from inference.types import Box

KINDS = ("ct_frontal", "ct_lateral", "dx")
PROTOCOLS = ("head", "head_neck_chest", "chest", "abdomen_pelvis", "chest_abdomen_pelvis", "whole")
MATTRESS_MM = 40.0


class SimulationError(ValueError):
    """Invalid simulation request."""


def _opt(randomize: Mapping[str, Any], key: str, default: Any) -> Any:
    v = randomize.get(key, default)
    return default if v is None else v


def _scan_range(ph: Phantom, protocol: str) -> tuple[float, float]:
    lm = ph.landmarks
    ranges = {
        "head": (lm["chin"] - 50.0, 25.0),
        "head_neck_chest": (lm["cp_left"] - 50.0, 25.0),
        "chest": (min(lm["cp_left"], lm["cp_right"]) - 70.0, lm["lung_apex"] + 50.0),
        "abdomen_pelvis": (lm["ischial_tuberosity"] - 50.0, max(lm["dome_right"], lm["dome_left"]) + 60.0),
        "chest_abdomen_pelvis": (lm["ischial_tuberosity"] - 60.0, lm["lung_apex"] + 60.0),
        "whole": (lm["ischial_tuberosity"] - 120.0, 30.0),
    }
    if protocol not in ranges:
        raise SimulationError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    return ranges[protocol]


def _photometric(rng: np.random.Generator, randomize: Mapping[str, Any], scale: float, kind: str) -> dict[str, Any]:
    """Noise / blur / processing knobs; ``scale`` = pixels per mm relative to 512 columns over 500 mm."""
    st = float(_opt(randomize, "strength", 0.0))
    base_noise = 3e5 if kind != "dx" else 8e4
    p = {
        "noise": base_noise * float(np.exp(rng.uniform(-1.5, 1.0) * st)),
        "blur_px": max(0.0, 0.6 * scale * (1.0 + rng.uniform(-0.6, 1.5) * st)),
        "edge": max(0.0, 1.8 + rng.uniform(-1.8, 1.2) * st),
        "edge_sigma_px": 5.0 * scale * (1.0 + rng.uniform(-0.4, 0.8) * st),
        "latitude": float(rng.uniform(0.0, 0.7) * st),  # none at strength 0: WED-faithful rows
        "latitude_sigma_px": 30.0 * scale,
        "gamma": float(np.exp(rng.uniform(-0.35, 0.35) * st)),
        "contrast": float(np.exp(rng.uniform(-0.3, 0.3) * st)),
        "invert": bool(rng.random() < 0.1 * st),
    }
    for k in ("noise", "blur_px", "edge", "latitude", "gamma", "contrast", "invert"):
        if k in randomize and randomize[k] is not None:
            p[k] = randomize[k]
    p["photometric_linear"] = bool(p["gamma"] == 1.0 and p["contrast"] == 1.0 and not p["invert"])
    return p


def _process(p_img: np.ndarray, ph: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Quantum noise on the transmitted intensity, detector blur, unsharp-mask edge enhancement (all in P)."""
    out = p_img.astype(np.float32)
    if ph["noise"] and ph["noise"] > 0:
        photons = np.maximum(float(ph["noise"]) * np.exp(-np.clip(out, 0.0, 30.0)), 1.0)
        out = (out + rng.standard_normal(out.shape, dtype=np.float32) / np.sqrt(photons)).astype(np.float32)
    if ph["blur_px"] > 0.05:
        out = ndimage.gaussian_filter(out, ph["blur_px"], mode="nearest")
    if ph["edge"] > 0:
        low = ndimage.gaussian_filter(out, ph["edge_sigma_px"], mode="nearest")
        out = out + ph["edge"] * (out - low)
    if ph["latitude"] > 0:  # dynamic-range compression: subtract part of the large-scale trend (any smooth trend
        # with its mean removed keeps the image integral); the trend is computed on a 4x block-averaged image
        k = 4
        h, w = (out.shape[0] // k) * k, (out.shape[1] // k) * k
        small = out[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
        small = ndimage.gaussian_filter(small, ph["latitude_sigma_px"] / k, mode="constant", cval=0.0)
        trend = ndimage.zoom(small, (out.shape[0] / small.shape[0], out.shape[1] / small.shape[1]), order=1,
                             mode="nearest")
        out = out - ph["latitude"] * (trend - float(trend.mean()))
    return out


def _to_stored(p: np.ndarray, gain: float, offset: float, max_value: int, ph: dict[str, Any]) -> np.ndarray:
    v = offset + gain * ph["contrast"] * p
    if ph["gamma"] != 1.0:
        v = max_value * np.clip(v / max_value, 0.0, 1.0) ** ph["gamma"]
    if ph["invert"]:
        v = max_value - v
    return np.clip(np.rint(v), 0, max_value).astype(np.uint16)


def _world_z_range(comp_z: tuple[float, float], placement: Placement) -> tuple[float, float]:
    return comp_z[0] + placement.t[2], comp_z[1] + placement.t[2]


def _region_3d(
    ph: Phantom, label: str, placement: Placement
) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """True 3-D extent (world LPS mm) from orthographic silhouettes (x and z from a frontal view, y lateral)."""
    comps, (z0, z1) = ph.regions[label]
    # unclipped quadrics inside the region's z-limits have an exact analytic box; the rest is measured
    lo_a = np.full(3, np.inf)
    hi_a = np.full(3, -np.inf)
    numeric = []
    for c in comps:
        q = c.shape
        if isinstance(q, Quadric) and not q.local_slabs and not c.slabs and not c.minus:
            lo, hi = q.world_aabb(placement.matrix, np.asarray(placement.t))
            if lo[2] - placement.t[2] >= z0 and hi[2] - placement.t[2] <= z1:
                lo_a, hi_a = np.minimum(lo_a, lo), np.maximum(hi_a, hi)
                continue
        numeric.append(c)
    if not numeric:
        return tuple(float(v) for v in lo_a), tuple(float(v) for v in hi_a)  # type: ignore[return-value]
    comps = numeric
    zw0, zw1 = _world_z_range((z0, z1), placement)
    t = placement.t
    spacing = 4.0
    half = 700.0
    rows = int(np.ceil((zw1 - zw0) / spacing)) + 4
    out = []
    for axis, centre in (("y", t[0]), ("x", t[1])):
        geom = Orthographic(axis, (centre - half, zw1 + spacing), spacing, rows, int(2 * half / spacing))
        box = silhouette_box(comps, geom, placement, (z0, z1))
        if box is None:
            return None
        u0 = geom.first[0] + (box[0] - 0.5) * spacing
        u1 = geom.first[0] + (box[2] - 0.5) * spacing
        zt = geom.first[1] - (box[1] - 0.5) * spacing
        zb = geom.first[1] - (box[3] - 0.5) * spacing
        out.append((u0, u1, zb, zt))
    (x0, x1, zb, zt), (y0, y1, _, _) = out
    lo_n = np.minimum(lo_a, [x0, y0, zb])
    hi_n = np.maximum(hi_a, [x1, y1, zt])
    return tuple(float(v) for v in lo_n), tuple(float(v) for v in hi_n)  # type: ignore[return-value]


def _wed_many(ph: Phantom, placement: Placement, z_body: list[float]) -> list[float]:
    """Water-equivalent diameters (mm) of transverse slices at body z: 2 sqrt(A_w / pi), A_w = integral of
    mu / mu_water over the slice (patient only, no table), from one finely sampled parallel projection with exact
    line integrals (AAPM Report 220 definition)."""
    spacing = 1.0
    half = 700.0
    zs = sorted({round(z + placement.t[2], 6) for z in z_body}, reverse=True)
    geom = OrthoSlices(placement.t[0] - half, spacing, tuple(zs), int(2 * half / spacing))
    p = line_integrals(ph.components, (), geom, placement)
    area = p.sum(axis=1) * spacing / MU_WATER
    wed = {z: float(2.0 * np.sqrt(max(a, 0.0) / np.pi)) for z, a in zip(zs, area, strict=True)}
    return [wed[round(z + placement.t[2], 6)] for z in z_body]


def _skin(ph: Phantom, label: str, z_body: float) -> tuple[float, float]:
    """(AP, LAT) skin extents in mm at body z: the head ellipsoid for HEAD, otherwise the trunk."""
    if label == "HEAD":
        comps, _ = ph.regions["HEAD"]
        q = comps[0].shape
        cz, sz = q.center[2], q.semi[2]  # type: ignore[attr-defined]
        k = np.sqrt(max(0.0, 1.0 - ((z_body - cz) / sz) ** 2))
        return 2.0 * q.semi[1] * k, 2.0 * q.semi[0] * k  # type: ignore[attr-defined]
    assert ph.trunk_params is not None
    _, _, a, b = ph.trunk_params(np.array([z_body]))
    return 2.0 * float(b[0]), 2.0 * float(a[0])


def _subject_truth(ph: Phantom, placement: Placement, labels: tuple[str, ...], wed: bool) -> dict[str, dict]:
    """View-independent truth per region: 3-D box (world LPS mm), skin AP/LAT and WED at the centre."""
    out: dict[str, dict] = {}
    for label in labels:
        b3 = _region_3d(ph, label, placement)
        if b3 is None:
            continue
        lo, hi = b3
        centre = tuple(float((a + b) / 2.0) for a, b in zip(lo, hi, strict=True))
        zc = centre[2] - placement.t[2]
        ap, lat = _skin(ph, label, zc)
        zr = ph.regions[label][1]
        out[label] = {"lo": tuple(float(v) for v in lo), "hi": tuple(float(v) for v in hi), "centre": centre,
                      "zc": zc, "zs": [float(z) for z in np.linspace(zr[0], zr[1], 5)[1:-1]], "ap": ap, "lat": lat}
    if wed and out:
        zall = [v["zc"] for v in out.values()] + [z for v in out.values() for z in v["zs"]]
        w = dict(zip(zall, _wed_many(ph, placement, zall), strict=True))
        for v in out.values():
            v["wed_center"] = w[v["zc"]]
            v["wed_mean"] = float(np.mean([w[z] for z in v["zs"]]))
    return out


def _regions_truth(
    ph: Phantom,
    geom: Geometry,
    placement: Placement,
    subject_truth: dict[str, dict],
    limits: tuple[float, float, float, float],
    iso: tuple[float, float] | None,
) -> tuple[RegionTruth, ...]:
    out = []
    field_area = (limits[2] - limits[0]) * (limits[3] - limits[1])
    fan = isinstance(geom, FanBeamLocalizer)
    for label, st in subject_truth.items():
        comps, zr = ph.regions[label]
        clipped = silhouette_box(comps, geom, placement, zr, limits=limits)
        if clipped is None:
            continue
        if fan:  # rows are exact in z: the visible share of the z-extent is an overlap of intervals
            assert isinstance(geom, FanBeamLocalizer)
            z_top = geom.first[2] + 0.5 * geom.spacing[0]
            z_bot = z_top - geom.rows * geom.spacing[0]
            zw0, zw1 = st["lo"][2], st["hi"][2]
            vis = max(0.0, min(zw1, z_top) - max(zw0, z_bot)) / (zw1 - zw0)
            truncated = zw1 > z_top or zw0 < z_bot or clipped[0] <= limits[0] or clipped[2] >= limits[2]
        else:
            full = silhouette_box(comps, geom, placement, zr, limits=(-1e5, -1e5, 1e5, 1e5))
            assert full is not None
            fh = full[3] - full[1]
            vis = float(np.clip((clipped[3] - clipped[1]) / fh, 0.0, 1.0)) if fh > 0 else 0.0
            truncated = any(abs(a - b) > 1e-6 for a, b in zip(full, clipped, strict=True))
        if vis <= 0.0:
            continue
        box = Box(*clipped)
        centre = st["centre"]
        out.append(
            RegionTruth(
                label=label,
                box_px=box,
                box_lps_mm=(st["lo"], st["hi"]),
                center_lps_mm=centre,
                visible_fraction=float(min(1.0, vis)),
                truncated=bool(truncated),
                iso_offset_mm=(centre[0] - iso[0], centre[1] - iso[1]) if iso is not None else None,
                wed_center_mm=st.get("wed_center"),
                wed_mean_mm=st.get("wed_mean"),
                ap_mm=st["ap"],
                lat_mm=st["lat"],
                field_fraction=None if iso is not None else float(box.width * box.height / field_area),
            )
        )
    return tuple(out)


def _subject_and_phantom(seed: int, randomize: Mapping[str, Any]) -> tuple[np.random.Generator, Phantom]:
    rng = np.random.default_rng([seed, 7211])
    arms = randomize.get("arms")
    if arms is not None and arms not in ("up", "down", "none"):
        raise SimulationError(f"randomize['arms'] must be 'up', 'down' or 'none', not {arms!r}")
    subject = sample_subject(rng, arms=arms, size=randomize.get("girth"))
    return rng, build_phantom(subject)


def simulate_case(
    seed: int,
    *,
    kind: str = "ct_frontal",
    shift_mm: tuple[float, float] | None = None,
    profile: str | None = None,
    randomize: Mapping[str, Any] | None = None,
    size: int | None = None,
    measure: bool = True,
) -> SimCase:
    """Simulate one image. ``kind``: 'ct_frontal', 'ct_lateral' or 'dx'. ``shift_mm`` = (x, y): the trunk centre
    minus the isocenter, LPS mm (CT; for DX the offset from the central ray / object plane). ``size`` = columns
    (CT rows follow from the scan length at the same spacing; DX images are size x size). ``measure=False``
    skips the water-equivalent diameters (``wed_*`` are None), about 20 % faster for detector training."""
    if kind not in KINDS:
        raise SimulationError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    randomize = dict(randomize or {})
    if size is not None and not (16 <= int(size) <= 4096):
        raise SimulationError(f"size must be between 16 and 4096 pixels, not {size}")
    if kind == "dx":
        return _simulate_dx(seed, shift_mm, profile, randomize, size or 512)
    views = ("frontal",) if kind == "ct_frontal" else ("lateral",)
    return _simulate_ct(seed, views, shift_mm, profile, randomize, size or 512, measure)[0]


def simulate_pair(
    seed: int,
    shift_mm: tuple[float, float] | None = None,
    *,
    profile: str | None = None,
    randomize: Mapping[str, Any] | None = None,
    size: int | None = None,
    measure: bool = True,
) -> tuple[SimCase, SimCase]:
    """Frontal and lateral localizers of the same subject, table position and Frame of Reference."""
    a, b = _simulate_ct(seed, ("frontal", "lateral"), shift_mm, profile, dict(randomize or {}), size or 512, measure)
    return a, b


def _pick_profile(rng: np.random.Generator, name: str | None, table: Mapping[str, Any]) -> Any:
    if name is None:
        keys = sorted(table)
        return table[keys[int(rng.integers(0, len(keys)))]]
    if name not in table:
        raise SimulationError(f"unknown profile {name!r}; expected one of {', '.join(sorted(table))}")
    return table[name]


def _simulate_ct(
    seed: int,
    views: tuple[str, ...],
    shift_mm: tuple[float, float] | None,
    profile_name: str | None,
    randomize: dict[str, Any],
    size: int,
    measure: bool = True,
) -> list[SimCase]:
    protocol = _opt(randomize, "protocol", None)
    if protocol is None:
        rng_p = np.random.default_rng([seed, 7212])
        protocol = PROTOCOLS[int(rng_p.choice(len(PROTOCOLS), p=[0.1, 0.1, 0.25, 0.2, 0.3, 0.05]))]
    if protocol in ("head", "head_neck_chest") and randomize.get("arms") is None:
        randomize = {**randomize, "arms": "down"}  # head scans are done with the arms down
    rng, ph = _subject_and_phantom(seed, randomize)
    prof: CTProfile = _pick_profile(rng, profile_name, CT_PROFILES)
    shift_range = float(_opt(randomize, "shift_range", 40.0))
    if shift_mm is None:
        shift_mm = (float(rng.uniform(-shift_range, shift_range)), float(rng.uniform(-shift_range, shift_range)))
    sx, sy = float(shift_mm[0]), float(shift_mm[1])
    roll = np.deg2rad(float(_opt(randomize, "roll_deg", rng.normal(0.0, 1.5))))
    yaw = np.deg2rad(float(_opt(randomize, "yaw_deg", rng.normal(0.0, 1.0))))
    crop = float(_opt(randomize, "crop_mm", 40.0))
    z_lo, z_hi = _scan_range(ph, protocol)
    z_lo += float(rng.uniform(-crop, crop))
    z_hi += float(rng.uniform(-crop, crop))
    table = bool(_opt(randomize, "table", True))

    ref = np.asarray(ph.trunk_ref_body, float)
    th = sy + MATTRESS_MM - ref[1]  # table top to isocenter (mm, + = table below the isocenter)
    y_iso = float(prof.iso_y(th))
    x_iso = 0.0
    z_off = float(_opt(randomize, "z_offset", rng.uniform(-400.0, 1700.0)))
    placement = Placement.make(roll, float(np.tan(yaw)), ref, np.array([x_iso + sx, y_iso + sy, ref[2] + z_off]))
    y_table = y_iso + th
    table_half_width = float(_opt(randomize, "table_half_width", rng.uniform(170.0, 235.0)))
    world = table_components(y_table, half_width=table_half_width, pad=MATTRESS_MM) if table else []

    du = prof.fov / size
    dz = du * prof.row_spacing_factor
    rows = max(16, int(round((z_hi - z_lo) / dz)))
    z_first = z_hi + z_off - dz / 2.0
    photometric = _photometric(rng, randomize, size / 512.0 * 500.0 / prof.fov, "ct")
    study = dicom_out.study_identity(seed, "ct")
    cases = []
    trunk_centre = placement.to_world(ref[None, :])[0]
    labels = tuple(r for r in REGIONS if r in ph.regions)
    subject_truth = _subject_truth(ph, placement, labels, wed=measure)
    for view in views:
        if view == "frontal":
            vname = prof.frontal_view
            first = (x_iso - size / 2.0 * du, y_iso, z_first)
        else:
            vname = prof.lateral_view
            first = (x_iso, y_iso - size / 2.0 * du, z_first)
        geom = FanBeamLocalizer(vname, prof.sod, prof.sid, (x_iso, y_iso), first, (dz, du), rows, size)
        p = line_integrals(ph.components, world, geom, placement)
        view_rng = np.random.default_rng([seed, 99, 0 if view == "frontal" else 1])
        p_proc = _process(p, photometric, view_rng)
        stored = _to_stored(p_proc, prof.gain, prof.offset, 4095, photometric)
        regions = _regions_truth(ph, geom, placement, subject_truth, (0.0, 0.0, float(size), float(rows)),
                                 (x_iso, y_iso))
        geometry = {
            "modality": "CT",
            "profile": prof.name,
            "view": view,
            "sod_mm": prof.sod,
            "sid_mm": prof.sid,
            "isocenter_lps_mm": [x_iso, y_iso],
            "table_height_mm": th,
            "table_top_y_mm": y_table,
            "mattress_mm": MATTRESS_MM,
            "table_present": table,
            "table_half_width_mm": table_half_width,
            "pixel_spacing_mm": [dz, du],
            "pixel_spacing_plane": "isocenter",
            "image_position_mm": list(first),
            "image_orientation": [1, 0, 0, 0, 0, -1] if view == "frontal" else [0, 1, 0, 0, 0, -1],
            "rows": rows,
            "columns": size,
            "magnification_model": "fan beam in x-y, parallel along z: m = SOD / (SOD - d), d = depth toward the "
            "source from the isocenter plane; rows exact in z",
            "value_model": {
                "stored": "offset + gain * P, P = line integral of mu (70 keV) after noise/blur/edge enhancement",
                "gain": prof.gain,
                "offset": prof.offset,
                "rescale_intercept": prof.rescale_intercept,
                "mu_water_per_mm": MU_WATER,
            },
            "placement": {"A": [list(r) for r in placement.a], "t": list(placement.t)},
            "z_range_body_mm": [z_lo, z_hi],
            "ctdivol_mgy": prof.ctdivol,
        }
        iso_off = {
            "x": float(trunk_centre[0] - x_iso),
            "y": float(trunk_centre[1] - y_iso),
            "definition": "trunk x-y box centre minus isocenter, LPS mm (+x: patient's left, +y: posterior)",
            "regions": {r.label: {"x": r.iso_offset_mm[0], "y": r.iso_offset_mm[1]} for r in regions
                        if r.iso_offset_mm is not None},
        }
        params = {
            "subject": dict(ph.subject.__dict__),
            "protocol": protocol,
            "roll_deg": float(np.rad2deg(roll)),
            "yaw_deg": float(np.rad2deg(yaw)),
            "shift_mm": [sx, sy],
            "landmarks_body_mm": dict(ph.landmarks),
            **{k: (float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) else v)
               for k, v in photometric.items()},
        }
        truth = SimTruth(f"ct_{view}", vname, regions, iso_off, geometry, seed, params)
        ds = dicom_out.ct_localizer(stored, truth, prof, study, view_index=0 if view == "frontal" else 1)
        cases.append(SimCase(ds, truth))
    return cases


def _simulate_dx(
    seed: int, shift_mm: tuple[float, float] | None, profile_name: str | None, randomize: dict[str, Any], size: int
) -> SimCase:
    rng, ph = _subject_and_phantom(seed, {**randomize, "arms": randomize.get("arms", "down")})
    prof: DXProfile = _pick_profile(rng, profile_name, DX_PROFILES)
    exam = _opt(randomize, "exam", None)
    if exam is None:
        exam = ("chest", "abdomen", "pelvis")[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
    lm = ph.landmarks
    aims = {
        "chest": (lm["lung_apex"] + min(lm["cp_left"], lm["cp_right"])) / 2.0,
        "abdomen": (max(lm["dome_left"], lm["dome_right"]) + lm["iliac_crest"]) / 2.0 - 40.0,
        "pelvis": (lm["iliac_crest"] + lm["ischial_tuberosity"]) / 2.0,
    }
    if exam not in aims:
        raise SimulationError(f"unknown DX exam {exam!r}; expected chest, abdomen or pelvis")
    view = "PA" if exam == "chest" else "AP"
    sid = prof.sid if exam == "chest" else 1150.0
    z_aim = aims[exam] + float(rng.uniform(-25.0, 25.0))
    assert ph.trunk_params is not None
    _, cy, _, b = ph.trunk_params(np.array([z_aim]))
    gap = 25.0 if view == "PA" else 70.0
    sod = sid - gap - float(b[0])
    shift_range = float(_opt(randomize, "shift_range", 30.0))
    if shift_mm is None:
        shift_mm = (float(rng.uniform(-shift_range, shift_range)), 0.0)
    sx, sy = float(shift_mm[0]), float(shift_mm[1])
    roll = np.deg2rad(float(_opt(randomize, "roll_deg", rng.normal(0.0, 2.0))))
    yaw = np.deg2rad(float(_opt(randomize, "yaw_deg", rng.normal(0.0, 1.5))))
    anchor_body = np.array([0.0, float(cy[0]), z_aim])
    placement = Placement.make(roll, float(np.tan(yaw)), anchor_body, np.array([sx, sy, 0.0]))
    pixel = prof.detector_mm / size
    geom = ConeBeamRadiograph(view, sod, sid, pixel, size, size)
    p = line_integrals(ph.components, (), geom, placement)
    # collimation: rectangular field (pixel limits), unexposed outside
    frac = float(_opt(randomize, "collimation", rng.uniform(0.72, 0.98)))
    fw = frac * size * float(rng.uniform(0.9, 1.0))
    fh = frac * size * float(rng.uniform(0.9, 1.05))
    cx = size / 2.0 + float(rng.uniform(-0.03, 0.03)) * size
    cyp = size / 2.0 + float(rng.uniform(-0.03, 0.03)) * size
    left = int(max(0, round(cx - fw / 2)))
    right = int(min(size, round(cx + fw / 2)))
    upper = int(max(0, round(cyp - fh / 2)))
    lower = int(min(size, round(cyp + fh / 2)))
    photometric = _photometric(rng, randomize, 512.0 / size * 0.0 + size / 512.0, "dx")
    inside = np.zeros((size, size), dtype=bool)
    inside[upper:lower, left:right] = True
    p_max = float(np.percentile(p[inside], 99.5)) + 2.5
    p = np.where(inside, p, p_max)
    p_proc = _process(p, photometric, np.random.default_rng([seed, 98]))
    max_value = (1 << prof.bits_stored) - 1
    stored = _to_stored(p_proc, prof.gain, prof.offset, max_value, photometric)
    if prof.photometric == "MONOCHROME1":
        stored = (max_value - stored).astype(np.uint16)
    labels = ("HEAD", "CHEST", "ABDOMEN", "PELVIS")
    field_limits = (float(left), float(upper), float(right), float(lower))
    regions = _regions_truth(ph, geom, placement, _subject_truth(ph, placement, labels, wed=False), field_limits,
                             None)
    field_mm2 = (right - left) * (lower - upper) * pixel * pixel
    kerma_det = prof.output_mgy_per_mas_1m * prof.mas * (1000.0 / sid) ** 2  # mGy at the detector
    dap = kerma_det * field_mm2 / 100.0 / 100.0  # mGy.cm2 -> dGy.cm2
    sod_est = sid - prof.nominal_object_to_detector - 0.0
    ermf = sid / sod_est if prof.write_sod else None
    geometry = {
        "modality": "DX",
        "profile": prof.name,
        "exam": exam,
        "view": view,
        "sid_mm": sid,
        "sod_true_mm": sod,
        "sod_written_mm": sod_est if prof.write_sod else None,
        "estimated_magnification_written": ermf,
        "magnification_true_object_plane": sid / sod,
        "imager_pixel_spacing_mm": pixel,
        "object_plane_pixel_spacing_mm": pixel * sod / sid,
        "collimator_px": {"left": left, "right": right, "upper": upper, "lower": lower},
        "field_area_detector_cm2": field_mm2 / 100.0,
        "dap_dgy_cm2": dap,
        "kerma_at_detector_mgy": kerma_det,
        "rows": size,
        "columns": size,
        "orientation": "columns -> patient left (+x), rows -> feet (-z); PatientOrientation L\\F",
        "magnification_model": "cone beam from a point source; m = SID / (distance from the source)",
        "value_model": {"stored": "offset + gain * P (MONOCHROME2 sense; MONOCHROME1 stores max - value)",
                        "gain": prof.gain, "offset": prof.offset, "mu_water_per_mm": MU_WATER},
        "placement": {"A": [list(r) for r in placement.a], "t": list(placement.t)},
    }
    iso_off = {"x": sx, "y": sy, "definition": "DX: trunk centre at the aimed level minus the central-ray point "
               "on the object plane (LPS mm)", "regions": {}}
    params = {
        "subject": dict(ph.subject.__dict__),
        "roll_deg": float(np.rad2deg(roll)),
        "yaw_deg": float(np.rad2deg(yaw)),
        "shift_mm": [sx, sy],
        "landmarks_body_mm": dict(ph.landmarks),
        **{k: (float(v) if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) else v)
           for k, v in photometric.items()},
    }
    truth = SimTruth("dx", f"{view}_DX", regions, iso_off, geometry, seed, params)
    ds = dicom_out.dx_image(stored, truth, prof, dicom_out.study_identity(seed, "dx"))
    return SimCase(ds, truth)
