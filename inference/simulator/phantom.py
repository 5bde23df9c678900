"""An analytic anthropomorphic phantom (MIRD / Cristy-Eckerman style) with per-subject variation.

Body frame (mm): x to the patient's LEFT, y POSTERIOR, z SUPERIOR; z = 0 at the vertex (top of the head), the
posterior skin of the trunk lies in the plane y = 0 (the patient lies on the back). The phantom is placed in the
scanner's LPS frame by ``projection.Placement`` (translation, small roll about z, small in-plane tilt as an
x-shear along z).

Tissues at about 70 keV (linear attenuation, 1/mm; NIST XCOM mass attenuation x ICRU-44 densities): water
0.0193, soft tissue 0.0204, adipose 0.0180, inflated lung 0.0052, cancellous bone ~0.028, cortical bone 0.039,
air 0. A component carries its EXCESS over the tissue it is embedded in, so nested parts add up.

Region definitions (they match `../shared/realdata/labels.json` conventions):

* HEAD: head and face soft tissue from the vertex to the chin (bottom of the jaw).
* SPINE: vertebral bodies and posterior elements (no transverse processes), C1 top to the coccyx tip.
* CHEST: rib-cage envelope width; top = max(lung apex, highest clavicle point within the rib-cage x-range);
  bottom = the lower costophrenic angle (lowest lung point).
* ABDOMEN: trunk skin width (arms excluded); top = the higher diaphragm dome, bottom = the higher iliac crest.
* PELVIS: bony pelvis and proximal femora (width at the greater trochanters); top = the higher iliac crest,
  bottom = the lower ischial tuberosity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import PchipInterpolator

from inference.simulator.raycast import (
    Component,
    Quadric,
    Rays,
    Shape,
    SlabSet,
    Swept,
    axis_rotation,
    rotation,
    segment_cylinder,
    z_slab,
)

MU_WATER = 0.0193
MU_SOFT = 0.0204
MU_FAT = 0.0180
MU_LUNG = 0.0052
MU_CANCELLOUS = 0.028
MU_CORTICAL = 0.039
MU_CARBON = 0.0075  # carbon-fibre table top
MU_FOAM = 0.0008

REGIONS = ("HEAD", "SPINE", "CHEST", "ABDOMEN", "PELVIS")


@dataclass(frozen=True)
class Subject:
    """Per-subject anatomy knobs (dimensionless factors unless stated)."""

    sex: str  # 'F' or 'M'
    height: float  # z scale of the skeleton (1 = 1.70 m adult)
    frame: float  # skeletal width scale
    girth: float  # soft-tissue margin scale (0.5 thin .. 2.5 obese)
    arms: str  # 'up', 'down' or 'none'
    scoliosis_mm: float  # lateral amplitude of the thoraco-lumbar curve
    dome_right_mm: float  # right dome above the left dome
    lung_scale: float
    breasts: float  # 0 = none
    gas_seed: int
    gas_count: int


def sample_subject(rng: np.random.Generator, *, arms: str | None = None, size: float | None = None) -> Subject:
    sex = "F" if rng.random() < 0.5 else "M"
    girth = float(size) if size is not None else float(np.clip(rng.lognormal(0.0, 0.35), 0.5, 2.5))
    return Subject(
        sex=sex,
        height=float(np.clip(rng.normal(1.0 if sex == "M" else 0.95, 0.04), 0.86, 1.12)),
        frame=float(np.clip(rng.normal(1.0 if sex == "M" else 0.93, 0.05), 0.82, 1.15)),
        girth=girth,
        arms=arms if arms is not None else ("up" if rng.random() < 0.7 else "down"),
        scoliosis_mm=float(abs(rng.normal(0.0, 5.0))) * (1 if rng.random() < 0.5 else -1),
        dome_right_mm=float(rng.uniform(5.0, 25.0)),
        lung_scale=float(rng.uniform(0.92, 1.08)),
        breasts=float(rng.uniform(0.5, 1.2)) if sex == "F" else 0.0,
        gas_seed=int(rng.integers(0, 2**31 - 1)),
        gas_count=int(rng.integers(4, 22)),
    )


# Trunk control table (z at height 1, a/b: skeletal frame half-width / half-depth, ma/mb: soft-tissue margins
# at girth 1). Half-width = frame * a + girth * ma; half-depth = frame * b + girth * mb.
_TRUNK = np.array(
    [
        # z      a     ma    b    mb
        [-205.0, 42.0, 12.0, 42.0, 12.0],
        [-250.0, 46.0, 12.0, 46.0, 12.0],
        [-266.0, 70.0, 16.0, 58.0, 14.0],
        [-288.0, 112.0, 22.0, 78.0, 12.0],
        [-315.0, 142.0, 22.0, 88.0, 12.0],
        [-345.0, 149.0, 18.0, 93.0, 14.0],
        [-420.0, 146.0, 18.0, 98.0, 16.0],
        [-520.0, 141.0, 22.0, 99.0, 20.0],
        [-600.0, 128.0, 30.0, 94.0, 34.0],
        [-660.0, 124.0, 34.0, 91.0, 40.0],
        [-705.0, 138.0, 34.0, 89.0, 36.0],
        [-780.0, 160.0, 26.0, 89.0, 30.0],
        [-840.0, 158.0, 26.0, 86.0, 28.0],
        [-875.0, 148.0, 26.0, 82.0, 26.0],
        [-905.0, 60.0, 10.0, 50.0, 10.0],
    ]
)
# Rib-cage envelope: z, half-width, half-depth (frame 1).
_CAGE = np.array(
    [
        [-292.0, 40.0, 40.0],
        [-320.0, 100.0, 70.0],
        [-370.0, 124.0, 82.0],
        [-450.0, 134.0, 88.0],
        [-540.0, 134.0, 88.0],
        [-600.0, 124.0, 82.0],
        [-640.0, 112.0, 76.0],
    ]
)


class _Profile:
    """Smooth, shape-preserving (PCHIP: monotone between control points, no overshoot) interpolation of control
    values ``vs`` at descending ``zs``; constant beyond the ends."""

    def __init__(self, zs: np.ndarray, vs: np.ndarray) -> None:
        self.za = np.asarray(zs, float)[::-1]
        self.f = PchipInterpolator(self.za, np.asarray(vs, float)[::-1], extrapolate=False)

    def __call__(self, zq: np.ndarray) -> np.ndarray:
        return np.asarray(self.f(np.clip(np.asarray(zq, float), self.za[0], self.za[-1])))


@dataclass
class Phantom:
    """Body-frame components, landmarks and region definitions of one subject."""

    subject: Subject
    components: list[Component] = field(default_factory=list)
    landmarks: dict[str, float] = field(default_factory=dict)
    # label -> (defining components, (z_lo, z_hi)) in the body frame
    regions: dict[str, tuple[list[Component], tuple[float, float]]] = field(default_factory=dict)
    trunk: Swept | None = None
    trunk_ref_body: tuple[float, float, float] = (0.0, 0.0, 0.0)  # centre of the trunk's x-y box
    trunk_params: Callable[[np.ndarray], tuple[np.ndarray, ...]] | None = None

    def add(self, name: str, shape: Shape, excess: float, **kw: object) -> Component:
        c = Component(name, shape, excess, **kw)  # type: ignore[arg-type]
        self.components.append(c)
        return c


def build_phantom(subject: Subject) -> Phantom:  # noqa: C901 - one anatomical recipe, read top to bottom
    s = subject
    h, f, g = s.height, s.frame, s.girth
    ph = Phantom(subject=s)
    rng = np.random.default_rng(s.gas_seed)

    def z(v: float) -> float:  # anatomical level at height 1 -> this subject
        return v * h

    # ---- trunk (skin) ------------------------------------------------------------------------------------
    tz = _TRUNK[:, 0] * h
    ta = _TRUNK[:, 1] * f + _TRUNK[:, 2] * g
    tb = _TRUNK[:, 3] * f + _TRUNK[:, 4] * g
    neck_lift = 18.0
    trunk_a, trunk_b = _Profile(tz, ta), _Profile(tz, tb)

    def trunk_params(zq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a = trunk_a(zq)
        b = trunk_b(zq)
        lift = neck_lift * np.clip((zq - z(-266.0)) / (z(-250.0) - z(-266.0)), 0.0, 1.0)
        cy = -b - lift
        return np.zeros_like(a), cy, a, b

    zt_top, zt_bot = float(tz[0]), float(tz[-1])
    amax, bmax = float(ta.max()), float(tb.max())
    trunk = Swept(trunk_params, (zt_bot, zt_top), (-amax, -2 * bmax - neck_lift, amax, 0.0), y_ref=-bmax)
    ph.trunk = trunk
    ph.trunk_params = trunk_params
    # trunk x-y box centre over chest..pelvis (neck excluded)
    zz = np.linspace(z(-300.0), zt_bot, 200)
    _, cyy, aa, bb = trunk_params(zz)
    ph.trunk_ref_body = (0.0, float((cyy - bb).min() / 2.0), float((z(-300.0) + zt_bot) / 2))

    # ---- head ---------------------------------------------------------------------------------------------
    hs = 0.5 * (f + 1.0)
    head_c = (0.0, -95.0 * hs - 15.0, -112.0 * h)
    head = Quadric("ellipsoid", head_c, (76.0 * hs, 96.0 * hs, 112.0 * h))
    jaw_c = (0.0, head_c[1] - 35.0 * hs, -188.0 * h)
    jaw = Quadric("ellipsoid", jaw_c, (52.0 * hs, 55.0 * hs, 40.0 * h))
    head_comp = ph.add("head", head, MU_SOFT)
    jaw_comp = ph.add("jaw", jaw, MU_SOFT, minus=(head,))
    trunk_comp = ph.add("trunk", trunk, MU_SOFT, minus=(head, jaw))
    # subcutaneous fat thickness (positions the skeleton under the skin)
    fat_in = 8.0 + 14.0 * g

    chin = jaw_c[2] - 40.0 * h
    ph.landmarks["vertex"] = 0.0
    ph.landmarks["chin"] = chin
    skull_o = Quadric("ellipsoid", (0.0, head_c[1], head_c[2] + 6.0), (70.0 * hs, 89.0 * hs, 104.0 * h))
    skull_i = Quadric("ellipsoid", (0.0, head_c[1], head_c[2] + 6.0), (64.0 * hs, 83.0 * hs, 98.0 * h))
    ph.add("skull", skull_o, MU_CORTICAL - MU_SOFT, slabs=(z_slab(head_c[2] - 45.0 * h, 1e4),), minus=(skull_i,))
    ph.add(
        "skull_base",
        Quadric("ellipsoid", (0.0, head_c[1] + 5.0, head_c[2] - 40.0 * h), (55.0 * hs, 30.0, 14.0)),
        0.012,
    )
    mand_o = Quadric("ellipsoid", (0.0, jaw_c[1] + 10.0, jaw_c[2] - 2.0), (47.0 * hs, 52.0 * hs, 36.0 * h))
    mand_i = Quadric("ellipsoid", (0.0, jaw_c[1] + 10.0, jaw_c[2] - 2.0), (41.0 * hs, 46.0 * hs, 30.0 * h))
    ph.add("mandible", mand_o, MU_CORTICAL - MU_SOFT, slabs=(((0, 1, 0), -1e4, jaw_c[1] + 20.0),), minus=(mand_i,))
    ph.add(
        "teeth",
        Quadric("ellipsoid", (0.0, jaw_c[1] - 5.0, jaw_c[2] + 14.0), (32.0 * hs, 40.0 * hs, 12.0)),
        0.03,
        slabs=(((0, 1, 0), -1e4, jaw_c[1] + 5.0),),
    )
    ph.add("sinus", Quadric("ellipsoid", (0.0, head_c[1] - 55.0, head_c[2] - 25.0), (30.0, 18.0, 16.0)), -MU_SOFT)
    ph.regions["HEAD"] = ([head_comp, jaw_comp], (chin, 0.0))

    # ---- spine ----------------------------------------------------------------------------------------------
    def spine_y(zq: float) -> float:
        _, cy, _, b = trunk_params(np.array([zq]))
        back = float(cy[0] + b[0])
        return back - (35.0 * f + 0.45 * fat_in + 18.0)

    levels: list[tuple[str, float, float, float, float]] = []  # name, z_top, height, half-width, half-depth
    ztop = z(-150.0)
    for i in range(7):
        hgt = 14.0 * h
        levels.append((f"C{i + 1}", ztop, hgt, 17.0 * f, 13.0 * f))
        ztop -= hgt + 4.0 * h
    for i in range(12):
        hgt = 20.0 * h
        levels.append((f"T{i + 1}", ztop, hgt, (19.0 + 0.6 * i) * f, (14.0 + 0.5 * i) * f))
        ztop -= hgt + 5.0 * h
    for i in range(5):
        hgt = 28.0 * h
        levels.append((f"L{i + 1}", ztop, hgt, (26.0 + 0.8 * i) * f, (19.0 + 0.3 * i) * f))
        ztop -= hgt + 8.0 * h
    s1_top = ztop
    spine_parts: list[Component] = []
    z_c1, z_l5 = levels[0][1], levels[-1][1] - levels[-1][2]
    for name, zt, hgt, hw, hd in levels:
        zc = zt - hgt / 2.0
        u = np.clip((z_c1 - zc) / (z_c1 - z_l5), 0.0, 1.0)
        xc = s.scoliosis_mm * np.sin(np.pi * u) ** 2 * (1.0 if u > 0.15 else u / 0.15)
        yc = spine_y(zc)
        body = Quadric("cylinder", (xc, yc, zc), (hw, hd, hgt / 2.0))
        spine_parts.append(ph.add(f"vertebra_{name}", body, MU_CANCELLOUS - MU_SOFT - 0.002))
        for px in (-0.62 * hw, 0.62 * hw):  # pedicles: the 'eyes' of the AP view
            ped = Quadric("ellipsoid", (xc + px, yc + hd + 4.0, zt - hgt * 0.35), (hw * 0.3, 10.0 * f, hgt * 0.3))
            spine_parts.append(ph.add(f"pedicle_{name}_{px:+.0f}", ped, 0.006))
        spin = Quadric("ellipsoid", (xc, yc + hd + 24.0 * f, zc - hgt * 0.2), (hw * 0.22, 14.0 * f, hgt * 0.45))
        spine_parts.append(ph.add(f"spinous_{name}", spin, 0.008))
        lam = Quadric("ellipsoid", (xc, yc + hd + 12.0 * f, zc), (hw * 0.9, 6.0 * f, hgt * 0.45))
        spine_parts.append(ph.add(f"lamina_{name}", lam, 0.006))
        if name.startswith("L"):
            ph.add(
                f"transverse_{name}",
                Quadric("ellipsoid", (xc, yc + hd + 6.0, zc), (hw + 22.0 * f, 6.0, 7.0)),
                0.008,
            )
    ph.landmarks["c1_top"] = z_c1
    # sacrum and coccyx (tilted back)
    y_s = spine_y(s1_top - 40.0 * h) + 12.0
    sac = Quadric(
        "ellipsoid",
        (0.0, y_s, s1_top - 48.0 * h),
        (48.0 * f, 16.0 * f, 50.0 * h),
        tuple(tuple(r) for r in rotation("x", -0.45)),
    )
    spine_parts.append(ph.add("sacrum", sac, MU_CANCELLOUS - MU_SOFT + 0.002))
    coccyx_tip = s1_top - 125.0 * h
    cocc = segment_cylinder((0.0, y_s + 16.0, s1_top - 95.0 * h), (0.0, y_s + 4.0, coccyx_tip + 5.0), 7.0, 5.0)
    spine_parts.append(ph.add("coccyx", cocc, MU_CANCELLOUS - MU_SOFT))
    ph.landmarks["coccyx_tip"] = coccyx_tip - 0.0
    ph.regions["SPINE"] = (spine_parts, (coccyx_tip - 7.0, z_c1))

    # ---- rib cage, lungs, heart, diaphragm -------------------------------------------------------------------
    cz = _CAGE[:, 0] * h
    ca = _CAGE[:, 1] * f
    cb = _CAGE[:, 2] * f
    cage_a, cage_b = _Profile(cz, ca), _Profile(cz, cb)

    def cage_params(zq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a = cage_a(zq)
        b = cage_b(zq)
        _, tcy, _, tb_ = trunk_params(zq)
        back = tcy + tb_
        cy = back - (12.0 + 0.6 * fat_in) - b
        return np.zeros_like(a), cy, a, b

    cmax_a = float(ca.max())
    cage = Swept(cage_params, (float(cz[-1]), float(cz[0])), (-cmax_a, -2 * bmax, cmax_a, 0.0), y_ref=-bmax)
    cage_comp = Component("rib_cage_envelope", cage, 0.0)

    def cage_inner(zq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cx, cy, a, b = cage_params(zq)
        return cx, cy, np.maximum(a - 9.0, 1.0), np.maximum(b - 9.0, 1.0)

    cage_in = Swept(cage_inner, cage.z_range, cage.xy_bounds, y_ref=-bmax)
    # 12 ribs per side: band between two tilted planes z - k*y (posterior ribs higher medially)
    rib_top = z(-300.0)
    k = 1.0
    for i in range(12):
        zr = rib_top - i * 24.0 * h
        thick = 10.0 + 0.25 * i
        _, cyr, _, _ = cage_params(np.array([zr]))
        ycen = float(cyr[0])
        for side in (-1.0, 1.0):
            ph.add(
                f"rib{i + 1}{'L' if side > 0 else 'R'}",
                cage,
                MU_CORTICAL - MU_SOFT + 0.004,
                slabs=(
                    ((0.0, -k, 1.0), zr - k * ycen - thick, zr - k * ycen),
                    ((side, 0.0, 0.0), 0.0, 1e4),
                    ((0.0, 1.0, 0.0), ycen - 60.0 * f + 4.0 * i, 1e4),
                ),
                minus=(cage_in,),
            )
    sternum = Quadric("cylinder", (0.0, float(cage_params(np.array([z(-400.0)]))[1][0]) - 84.0 * f, z(-400.0)),
                      (14.0, 6.0, 80.0 * h))
    ph.add("sternum", sternum, 0.010)

    ls = s.lung_scale
    apex = z(-305.0) + 6.0 * (ls - 1.0)
    cp_right = z(-548.0) * (0.98 + 0.02 * ls)
    cp_left = cp_right - rng.uniform(0.0, 14.0)
    dome_r = z(-478.0)
    dome_l = dome_r - s.dome_right_mm
    _, ycage, _, bcage = cage_params(np.array([z(-450.0)]))
    ylung = float(ycage[0]) + 6.0
    lung_c_z = apex - 200.0 * h
    heart = Quadric("ellipsoid", (22.0 * f, ylung - 38.0 * f, dome_l + 50.0 * h), (62.0 * f, 50.0 * f, 68.0 * h))
    lungs = []
    for side, cp, dome in ((-1.0, cp_right, dome_r), (1.0, cp_left, dome_l)):
        lung = Quadric("ellipsoid", (side * 70.0 * f, ylung, lung_c_z), (56.0 * f * ls, 82.0 * f, 200.0 * h))
        dome_shape = Quadric("ellipsoid", (side * 45.0 * f, ylung + 10.0, dome - 90.0 * h),
                             (68.0 * f, 105.0 * f, 90.0 * h))
        comp = ph.add(
            f"lung_{'L' if side > 0 else 'R'}",
            lung,
            MU_LUNG - MU_SOFT,
            # base rising toward the midline (k = 0.45), so the costophrenic angle is a lateral V
            slabs=(z_slab(cp, apex + 1.0),
                   ((side * 0.45, 0.0, 1.0), cp + 0.45 * (70.0 * f + 56.0 * f * ls), 1e5)),
            minus=(dome_shape, heart) if side > 0 else (dome_shape,),
        )
        lungs.append(comp)
        hilum = np.array([side * 35.0 * f, ylung, dome + 60.0 * h])
        _lung_vessels(ph, rng, side, hilum, lung, max(cp, dome - 20.0), 40)
    ph.add("trachea", Quadric("cylinder", (0.0, ylung - 25.0, z(-330.0)), (9.0, 9.0, 95.0 * h)), -MU_SOFT)
    # the costophrenic angles: the lowest z where each lung (minus dome and heart) is actually present
    cp_right = _lowest_z(lungs[0], cp_right, dome_r)
    cp_left = _lowest_z(lungs[1], cp_left, dome_l)
    ph.landmarks.update(lung_apex=apex, cp_right=cp_right, cp_left=cp_left, dome_right=dome_r, dome_left=dome_l)
    # stomach bubble under the left dome
    ph.add("stomach_gas", Quadric("ellipsoid", (60.0 * f, ylung - 30.0, dome_l - 45.0), (32.0, 22.0, 20.0)), -MU_SOFT)

    # clavicles: sternal end -> acromial end (raised with the arms up)
    lift = 28.0 if s.arms == "up" else 0.0
    clav_top = -1e9
    for side in (-1.0, 1.0):
        p0 = np.array([side * 22.0 * f, ylung - 70.0 * f, z(-305.0) + 2.0])
        p1 = np.array([side * 160.0 * f, ylung + 10.0, z(-292.0) + lift])
        ph.add(f"clavicle_{'L' if side > 0 else 'R'}", segment_cylinder(p0, p1, 8.0, 7.0), 0.02)
        tt = np.linspace(0.0, 1.0, 400)
        pts = p0[None, :] + tt[:, None] * (p1 - p0)[None, :]
        dxz = p1[[0, 2]] - p0[[0, 2]]
        top = pts[:, 2] + 8.0 / np.cos(np.arctan2(abs(dxz[1]), abs(dxz[0])))
        inside = np.abs(pts[:, 0]) <= cmax_a
        clav_top = max(clav_top, float(top[inside].max()))
        scap_c = (side * (112.0 * f + (18.0 if s.arms == "up" else 0.0)), -28.0, z(-385.0) + lift * 0.6)
        scap = Quadric("ellipsoid", scap_c, (48.0 * f, 7.0, 75.0 * h),
                       tuple(tuple(r) for r in rotation("z", side * 0.35)))
        ph.add(f"scapula_{'L' if side > 0 else 'R'}", scap, 0.012)
    chest_top = max(apex, clav_top)
    chest_bottom = min(cp_right, cp_left)
    ph.landmarks["clavicle_top_in_cage"] = clav_top
    ph.regions["CHEST"] = ([cage_comp], (chest_bottom, chest_top))
    if s.breasts > 0:
        _, tcy, _, tbb = trunk_params(np.array([z(-460.0)]))
        front = float(tcy[0] - tbb[0])
        for side in (-1.0, 1.0):
            br = Quadric("ellipsoid", (side * 80.0 * f, front + 8.0, z(-470.0)),
                         (56.0 * s.breasts, 26.0 * s.breasts, 46.0 * s.breasts))
            ph.add(f"breast_{side:+.0f}", br, MU_SOFT - 0.0008, minus=(trunk,))

    # ---- pelvis and hips -----------------------------------------------------------------------------------
    crest = z(-705.0) * (1.0 + 0.01 * (1.0 - f))
    wide = 1.06 if s.sex == "F" else 1.0
    y_hip = float(trunk_params(np.array([z(-800.0)]))[1][0]) + 8.0
    pelvis_parts: list[Component] = []
    crest_z = []
    for side in (-1.0, 1.0):
        dz_asym = rng.uniform(-4.0, 4.0)
        wing_c = (side * 88.0 * f * wide, y_hip + 6.0, crest - 52.0 * h + dz_asym)
        wing_rot = tuple(tuple(r) for r in rotation("z", side * 0.7))
        wing_o = Quadric("ellipsoid", wing_c, (66.0 * f * wide, 11.0, 52.0 * h), wing_rot)
        wing_i = Quadric("ellipsoid", wing_c, (62.0 * f * wide, 7.0, 48.0 * h), wing_rot)
        crest_z.append(wing_c[2] + 52.0 * h)
        pelvis_parts.append(ph.add(f"ilium_{side:+.0f}", wing_o, MU_CORTICAL - MU_SOFT + 0.012, minus=(wing_i,)))
        pelvis_parts.append(ph.add(f"ilium_core_{side:+.0f}", wing_i, MU_CANCELLOUS - MU_SOFT - 0.003))
        hip = np.array([side * 92.0 * f * wide, y_hip, z(-815.0)])
        ph.add(f"acetabulum_{side:+.0f}", Quadric("ellipsoid", tuple(hip + [0, 0, 8.0]), (34.0, 30.0, 30.0)), 0.004)
        fh = Quadric("ellipsoid", tuple(hip), (23.0 * f, 23.0 * f, 23.0 * f))
        pelvis_parts.append(ph.add(f"femoral_head_{side:+.0f}", fh, MU_CANCELLOUS - MU_SOFT + 0.004))
        troch = hip + np.array([side * 58.0 * f, 0.0, -14.0 * h])
        neck = segment_cylinder(hip, troch, 15.0 * f)
        pelvis_parts.append(ph.add(f"femoral_neck_{side:+.0f}", neck, MU_CANCELLOUS - MU_SOFT + 0.004))
        gt = Quadric("ellipsoid", tuple(troch + [side * 2.0, 0.0, 6.0]), (18.0 * f, 20.0 * f, 28.0 * h))
        pelvis_parts.append(ph.add(f"greater_trochanter_{side:+.0f}", gt, MU_CANCELLOUS - MU_SOFT + 0.004))
        knee = np.array([side * 88.0 * f, y_hip - 5.0, z(-1240.0)])
        shaft_top = troch + np.array([-side * 6.0, 0.0, -20.0 * h])
        shaft_o = segment_cylinder(shaft_top, knee, 14.0 * f)
        shaft_i = segment_cylinder(shaft_top, knee, 8.0 * f)
        pelvis_parts.append(ph.add(f"femur_{side:+.0f}", shaft_o, MU_CORTICAL - MU_SOFT, minus=(shaft_i,)))
        ph.add(f"femur_marrow_{side:+.0f}", shaft_i, MU_FAT - MU_SOFT + 0.002)
        ring_c = (side * 50.0 * f * wide, y_hip - 28.0, z(-845.0))
        ring_rot = axis_rotation((0.0, 1.0, 0.0))
        ring_o = Quadric("cylinder", ring_c, (33.0 * f * wide, 40.0 * h, 13.0), ring_rot)
        ring_i = Quadric("cylinder", ring_c, (23.0 * f * wide, 28.0 * h, 13.0), ring_rot)
        pelvis_parts.append(ph.add(f"pubis_ischium_{side:+.0f}", ring_o, MU_CANCELLOUS - MU_SOFT - 0.002,
                                   minus=(ring_i,)))
    # pelvic brim (arcuate lines): a thin oval ring in the inlet plane, tilted ~60 degrees from the transverse
    brim_c = (0.0, y_hip - 2.0, crest - 78.0 * h)
    brim_rot = tuple(tuple(r) for r in rotation("x", -1.05))
    brim_o = Quadric("cylinder", brim_c, (62.0 * f * wide, 52.0 * f, 5.0), brim_rot)
    brim_i = Quadric("cylinder", brim_c, (56.0 * f * wide, 46.0 * f, 5.0), brim_rot)
    pelvis_parts.append(ph.add("pelvic_brim", brim_o, MU_CORTICAL - MU_SOFT, minus=(brim_i,)))
    # the ring is a cylinder along y rotated: its z half-extent is the local y semi-axis (40 h)
    ischial = z(-845.0) - 40.0 * h
    crest_hi = max(crest_z)
    ph.landmarks.update(iliac_crest=crest_hi, ischial_tuberosity=ischial)
    ph.regions["PELVIS"] = (pelvis_parts, (ischial, crest_hi))
    ph.regions["ABDOMEN"] = ([trunk_comp], (crest_hi, max(dome_r, dome_l)))

    # bowel gas: a colon frame (ascending, transverse, descending) and small-bowel loops
    n_gas = s.gas_count
    for i in range(n_gas * 2):
        u = rng.random()
        if u < 0.45:  # colon frame
            t = rng.uniform(0.0, 3.0)
            if t < 1.0:
                zc, xr = z(-790.0) + t * (z(-585.0) - z(-790.0)), -0.62
            elif t < 2.0:
                zc, xr = z(-585.0) + rng.uniform(-15.0, 15.0), -0.62 + (t - 1.0) * 1.24
            else:
                zc, xr = z(-585.0) + (t - 2.0) * (z(-790.0) - z(-585.0)), 0.62
            size = rng.uniform(10.0, 22.0)
        else:  # small bowel
            zc, xr = rng.uniform(z(-780.0), z(-610.0)), rng.uniform(-0.45, 0.45)
            size = rng.uniform(4.0, 11.0)
        _, tcy, ta_, tb_ = trunk_params(np.array([zc]))
        xc = (xr + rng.uniform(-0.06, 0.06)) * float(ta_[0])
        yc = float(tcy[0]) + rng.uniform(-0.45, 0.1) * float(tb_[0])
        direction = rng.normal(size=3) * np.array([1.0, 0.3, 1.0])  # loops run mostly in the coronal plane
        rot = axis_rotation(direction)
        ph.add(f"gas{i}", Quadric("ellipsoid", (xc, yc, zc), (size * 0.6, size * 0.55, size * rng.uniform(1.0, 2.2)),
                                  rot), -MU_SOFT * 0.9)

    # ---- legs -----------------------------------------------------------------------------------------------
    for side in (-1.0, 1.0):
        lz = np.array([z(-790.0), z(-1000.0), z(-1240.0), z(-1500.0)])
        la = np.array([(ta[-2] / 2.0) * 0.9, 62.0 * f + 18.0 * g, 48.0 * f + 8.0 * g, 45.0 * f + 8.0 * g])
        lb = np.array([tb[-2] * 0.5, 62.0 * f + 20.0 * g, 50.0 * f + 8.0 * g, 45.0 * f + 8.0 * g])
        lx = np.array([side * ta[-2] / 2.0, side * 92.0 * f, side * 86.0 * f, side * 86.0 * f])

        thigh_lift = np.array([0.45 * tb[-2], 0.1 * tb[-2], 0.0, 0.0])  # the thigh top starts inside the trunk

        leg_a, leg_b, leg_x, leg_lift = (_Profile(lz, v) for v in (la, lb, lx, thigh_lift))

        def leg_params(zq: np.ndarray, leg_a: _Profile = leg_a, leg_b: _Profile = leg_b, leg_x: _Profile = leg_x,
                       leg_lift: _Profile = leg_lift) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            a = leg_a(zq)
            b = leg_b(zq)
            return leg_x(zq), -b - leg_lift(zq), a, b

        ext = float(np.max(np.abs(lx) + la))
        leg = Swept(leg_params, (float(lz[-1]), float(lz[0])), (-ext, -2 * float(lb.max()), ext, 0.0),
                    y_ref=-float(lb.max()))
        ph.add(f"leg_{side:+.0f}", leg, MU_SOFT, minus=(trunk,))

    # ---- arms -----------------------------------------------------------------------------------------------
    if s.arms in ("up", "down"):
        r_up = 36.0 * f + 12.0 * g
        r_lo = 28.0 * f + 8.0 * g
        for side in (-1.0, 1.0):
            shoulder_x = side * (float(trunk_params(np.array([z(-330.0)]))[2][0]) + 0.1 * r_up)
            sh = np.array([shoulder_x, -r_up - 20.0, z(-325.0)])
            if s.arms == "down":
                w_el = float(trunk_params(np.array([z(-580.0)]))[2][0])
                w_wr = float(trunk_params(np.array([z(-800.0)]))[2][0])
                el = np.array([side * (w_el + r_up + 12.0), -r_up, z(-590.0)])
                wr = np.array([side * (w_wr + r_lo + 10.0), -r_lo - 10.0, z(-840.0)])
                hand_c = wr + np.array([side * 2.0, -5.0, -50.0 * h])
            else:
                abduct = float(rng.uniform(40.0, 130.0))  # how far the elbows are out (mm)
                el = np.array([side * (float(abs(shoulder_x)) + abduct), -r_up - 30.0, z(-40.0)])
                wr = np.array([side * 60.0, -r_lo - 40.0, z(150.0)])
                hand_c = wr + np.array([-side * 30.0, 0.0, 40.0 * h])
            upper = _segment_ellipsoid(sh, el, r_up, r_up * 0.95, 25.0)
            lower = _segment_ellipsoid(el, wr, r_lo, r_lo * 0.9, 20.0)
            ph.add(f"upper_arm_{side:+.0f}", upper, MU_SOFT, minus=(trunk,))
            ph.add(f"forearm_{side:+.0f}", lower, MU_SOFT, minus=(upper,))
            ph.add(f"hand_{side:+.0f}", Quadric("ellipsoid", tuple(hand_c), (22.0, 14.0, 50.0 * h)), MU_SOFT)
            hum_o = segment_cylinder(sh + (el - sh) * 0.03, el, 11.0 * f)
            hum_i = segment_cylinder(sh + (el - sh) * 0.03, el, 6.0 * f)
            ph.add(f"humerus_{side:+.0f}", hum_o, MU_CORTICAL - MU_SOFT, minus=(hum_i,))
            ph.add(f"humeral_head_{side:+.0f}", Quadric("ellipsoid", tuple(sh), (22.0 * f,) * 3), 0.009)
            for off in (-8.0, 8.0):
                o3 = np.array([0.0, off, 0.0]) if s.arms == "up" else np.array([0.0, off, 0.0])
                ph.add(f"forearm_bone_{side:+.0f}_{off:+.0f}", segment_cylinder(el + o3, wr + o3, 6.0 * f),
                       MU_CORTICAL - MU_SOFT - 0.008)
    ph.landmarks["crotch"] = zt_bot
    return ph


def _lowest_z(comp: Component, z_from: float, z_to: float) -> float:
    """Lowest z in [z_from, z_to] at which ``comp`` has any material (parallel rays along y, 0.5 mm apart in x),
    to 0.1 mm: a 2 mm scan, then a 0.1 mm scan of the step that found it."""
    lo, hi = comp.aabb()
    xs = np.arange(lo[0] - 1.0, hi[0] + 1.0, 0.5)[None, :]
    one = np.ones((1, 1))

    def first(zs: np.ndarray) -> int | None:
        zz = zs[:, None]
        rays = Rays((xs + 0 * zz, np.full((1, 1), -5000.0), zz + 0 * xs), (0 * one, one, 0 * one))
        present = (comp.length(rays) > 1e-9).any(axis=1)
        return int(np.argmax(present)) if present.any() else None

    coarse = np.arange(z_from, z_to + 2.0, 2.0)
    i = first(coarse)
    if i is None:
        raise ValueError(f"{comp.name} has no material between z={z_from:.1f} and z={z_to:.1f}")
    if i == 0:
        return float(coarse[0])
    fine = np.arange(coarse[i - 1], coarse[i] + 0.1, 0.1)
    j = first(fine)
    return float(fine[j if j is not None else -1])


def _segment_ellipsoid(p0: np.ndarray, p1: np.ndarray, ra: float, rb: float, overhang: float) -> Quadric:
    """Ellipsoid along the segment p0 -> p1 (a limb with rounded ends), ``overhang`` mm past each end."""
    half = float(np.linalg.norm(p1 - p0)) / 2.0 + overhang
    centre = tuple(float(v) for v in (p0 + p1) / 2.0)
    return Quadric("ellipsoid", centre, (ra, rb, half), axis_rotation(p1 - p0))  # type: ignore[arg-type]


def _lung_vessels(ph: Phantom, rng: np.random.Generator, side: float, hilum: np.ndarray, lung: Quadric,
                  z_lo: float, count: int) -> None:
    """Small soft-tissue cylinders radiating from the hilum inside one lung (vascular markings)."""
    c = np.asarray(lung.center)
    sa = np.asarray(lung.semi)
    for i in range(count):
        for _ in range(20):
            u = rng.uniform(-0.8, 0.8, 3)
            p = c + u * sa
            if np.sum(u**2) < 0.6 and p[2] > z_lo + 15.0 and side * p[0] > 25.0:
                break
        else:
            continue
        d = p - hilum
        dist = float(np.linalg.norm(d))
        if dist < 20.0:
            continue
        a = hilum + d * rng.uniform(0.45, 0.8) + rng.normal(0.0, 6.0, 3)
        r = float(np.clip(4.0 - dist / 40.0, 1.0, 3.0))
        ph.add(f"vessel_{side:+.0f}_{i}", segment_cylinder(a, p, r), MU_SOFT - MU_LUNG, tags=frozenset({"vessel"}))


def table_components(y_top: float, half_width: float = 235.0, pad: float = 40.0) -> list[Component]:
    """World-frame table: carbon shell with a foam core and denser side rails, plus a foam mattress above
    ``y_top`` (the table-top surface, LPS y, mm; the patient lies on the mattress)."""
    big = 1e5

    def box(x0: float, x1: float, y0: float, y1: float) -> SlabSet:
        return SlabSet((((1.0, 0.0, 0.0), x0, x1), ((0.0, 1.0, 0.0), y0, y1)), ((x0, y0, -big), (x1, y1, big)))

    w = half_width
    return [
        Component("table_top", box(-w, w, y_top, y_top + 3.0), MU_CARBON),
        Component("table_bottom", box(-w * 0.93, w * 0.93, y_top + 45.0, y_top + 48.0), MU_CARBON),
        Component("table_core", box(-w, w, y_top + 3.0, y_top + 45.0), MU_FOAM * 3),
        Component("rail_left", box(w - 14.0, w, y_top, y_top + 40.0), MU_CARBON * 1.6),
        Component("rail_right", box(-w, -w + 14.0, y_top, y_top + 40.0), MU_CARBON * 1.6),
        Component("mattress", box(-w + 15.0, w - 15.0, y_top - pad, y_top), MU_FOAM),
    ]
