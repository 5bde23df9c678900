"""Ground-truth records of a simulated image (what the sidecar JSON holds).

Box conventions:

* ``box_px``: the projected SILHOUETTE extent of the region's defining structures (``phantom.py`` docstring)
  as rendered in this image, in continuous SCOORD pixel coordinates of the stored image (``inference.types``),
  clipped to the image (CT) or to the collimated field (DX). Edges are exact to 1/32 pixel.
* ``box_lps_mm``: the region's true 3-D extent (axis-aligned box of the same structures, same z-limits) in the
  world frame, LPS mm: the scanner's patient frame for CT; for DX (no patient frame in the header) a frame with
  its origin on the central ray at the object plane (the patient's mid-coronal plane at the aimed level).
* ``center_lps_mm``: centre of ``box_lps_mm``.
* Isocenter offsets (CT): region centre minus isocenter, LPS: +x = the centre lies to the patient's LEFT of the
  isocenter, +y = POSTERIOR of it (patient too low on a supine table).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pydicom

from inference.types import Box


@dataclass(frozen=True)
class RegionTruth:
    label: str  # HEAD SPINE CHEST ABDOMEN PELVIS
    box_px: Box
    box_lps_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    center_lps_mm: tuple[float, float, float]
    visible_fraction: float  # share of the region's z-extent inside the image/field (0..1]
    truncated: bool = False  # an edge of box_px is the image/field border, not an anatomical edge
    iso_offset_mm: tuple[float, float] | None = None  # (x, y) centre minus isocenter, LPS mm (CT only)
    wed_center_mm: float | None = None  # water-equivalent diameter of the slice at the region's centre z (mm)
    wed_mean_mm: float | None = None  # mean WED of the slices at 1/4, 1/2 and 3/4 of the z-range (mm)
    ap_mm: float | None = None  # trunk/head skin AP thickness at the centre z (arms excluded), mm
    lat_mm: float | None = None  # skin lateral width at the centre z (arms excluded), mm
    field_fraction: float | None = None  # DX: share of the collimated field area covered by box_px


@dataclass(frozen=True)
class SimTruth:
    kind: str  # 'ct_frontal' | 'ct_lateral' | 'dx'
    projection: str  # 'AP' | 'PA' | 'LAT_R' | 'LAT_L' | 'PA_DX' | 'AP_DX'
    regions: tuple[RegionTruth, ...]
    isocenter_offset_mm: dict[str, Any]  # {'x','y'}: trunk centre minus isocenter (LPS mm); 'regions': per label
    geometry: dict[str, Any]
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    def region(self, label: str) -> RegionTruth | None:
        return next((r for r in self.regions if r.label == label), None)

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for r, src in zip(d["regions"], self.regions, strict=True):
            r["box_px"] = list(src.box_px.as_tuple())
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> SimTruth:
        regions = []
        for r in d["regions"]:
            r = dict(r)
            r["box_px"] = Box(*r["box_px"])
            r["box_lps_mm"] = tuple(tuple(v) for v in r["box_lps_mm"])
            r["center_lps_mm"] = tuple(r["center_lps_mm"])
            if r.get("iso_offset_mm") is not None:
                r["iso_offset_mm"] = tuple(r["iso_offset_mm"])
            regions.append(RegionTruth(**r))
        return cls(d["kind"], d["projection"], tuple(regions), d["isocenter_offset_mm"], d["geometry"], d["seed"],
                   d.get("params", {}))


@dataclass(frozen=True)
class SimCase:
    dataset: pydicom.Dataset
    truth: SimTruth
