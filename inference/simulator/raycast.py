"""Analytic line integrals of attenuation through convex primitives (no voxels).

Every primitive answers one question for a bundle of rays ``p(t) = O + t * D``: the parameter interval
``[t_in, t_out]`` in which the ray is inside it (empty when ``t_out <= t_in``). The chord length in mm is
``(t_out - t_in) * |D|`` when positions are in mm. Rays are given in the BODY frame of the phantom (see
``phantom.py``): x to the patient's left, y posterior, z superior, mm.

Arrays of a ray bundle broadcast against each other: a fan-beam localizer has origins per row ``(nr, 1)`` and
directions per column ``(1, nc)``; a cone-beam radiograph one origin and a direction per pixel.

Primitives:

* ``Quadric``: an ellipsoid or an elliptical cylinder (axis = local z, ends at local z = +-1) with any rotation.
* ``Swept``: a z-aligned elliptical cross-section whose centre and semi-axes vary smoothly with z (the trunk, the
  rib-cage envelope). Exact for rays in transverse planes (fan-beam localizers); for oblique rays (cone beam) the
  cross-section is taken at the z where the ray crosses the plane ``y = y_ref``.
* ``SlabSet``: the intersection of slabs ``lo <= n . p <= hi`` only (e.g. the table).

A ``Component`` is a primitive clipped by extra slabs, minus the parts inside other primitives (shells, lungs
minus the diaphragm dome), with an attenuation *excess* over the tissue it sits in (1/mm).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

Array = np.ndarray
Slab = tuple[tuple[float, float, float], float, float]  # (normal n, lo, hi): lo <= n . p <= hi (p in mm)

_INF = np.inf


@dataclass(frozen=True)
class Rays:
    """A bundle of rays ``O + t D`` in the body frame, components broadcastable to ``shape``."""

    o: tuple[Array, Array, Array]
    d: tuple[Array, Array, Array]

    @property
    def shape(self) -> tuple[int, ...]:
        return np.broadcast_shapes(*(np.shape(a) for a in (*self.o, *self.d)))

    def norm(self) -> Array:
        dx, dy, dz = self.d
        return np.sqrt(dx * dx + dy * dy + dz * dz)

    def block(self, r0: int, r1: int, c0: int, c1: int) -> Rays:
        """The sub-bundle of rows r0:r1 and columns c0:c1 of a 2-D bundle."""

        def cut(a: Array) -> Array:
            a = np.asarray(a)
            if a.ndim < 2:
                return a
            rs = slice(r0, r1) if a.shape[0] > 1 else slice(None)
            cs = slice(c0, c1) if a.shape[1] > 1 else slice(None)
            return a[rs, cs]

        return Rays(tuple(cut(a) for a in self.o), tuple(cut(a) for a in self.d))  # type: ignore[arg-type]


def _empty_like(shape: tuple[int, ...]) -> tuple[Array, Array]:
    return np.full(shape, _INF), np.full(shape, -_INF)


def _slab_interval(g0: Array, gd: Array, lo: float, hi: float) -> tuple[Array, Array]:
    """Interval of t with lo <= g0 + t gd <= hi."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = (lo - g0) / gd
        tb = (hi - g0) / gd
    tmin = np.minimum(ta, tb)
    tmax = np.maximum(ta, tb)
    parallel = gd == 0
    if np.any(parallel):
        inside = (g0 >= lo) & (g0 <= hi)
        tmin = np.where(parallel, np.where(inside, -_INF, _INF), tmin)
        tmax = np.where(parallel, np.where(inside, _INF, -_INF), tmax)
    return tmin, tmax


def apply_slabs(rays: Rays, slabs: Sequence[Slab], t0: Array, t1: Array) -> tuple[Array, Array]:
    ox, oy, oz = rays.o
    dx, dy, dz = rays.d
    for n, lo, hi in slabs:
        nx, ny, nz = (float(v) for v in n)
        lo, hi = float(lo), float(hi)
        g0 = nx * ox + ny * oy + nz * oz
        gd = nx * dx + ny * dy + nz * dz
        a, b = _slab_interval(np.asarray(g0), np.asarray(gd), lo, hi)
        t0 = np.maximum(t0, a)
        t1 = np.minimum(t1, b)
    return t0, t1


class Shape:
    """A convex region of the body frame."""

    def interval(self, rays: Rays) -> tuple[Array, Array]:
        raise NotImplementedError

    def aabb(self) -> tuple[Array, Array]:
        """A conservative axis-aligned bounding box (min corner, max corner), body frame, mm."""
        raise NotImplementedError


@dataclass(frozen=True)
class Quadric(Shape):
    """Ellipsoid (``kind='ellipsoid'``) or elliptical cylinder (``kind='cylinder'``, axis local z, |z'| <= 1).

    ``center`` mm; ``semi`` semi-axes (a, b, c) mm (for a cylinder c is the half-length); ``rot`` 3x3 whose
    columns are the local axes expressed in the body frame; ``slabs`` extra local-frame clips on the normalised
    local coordinates, e.g. ``((0, 0, 1), 0, 1)`` keeps the upper half of an ellipsoid.
    """

    kind: str
    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    rot: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    local_slabs: tuple[Slab, ...] = ()

    def _minv(self) -> Array:
        r = np.asarray(self.rot, float)
        return (r.T) / np.asarray(self.semi, float)[:, None]  # S^-1 R^T

    def interval(self, rays: Rays) -> tuple[Array, Array]:
        m = self._minv().tolist()
        c = [float(v) for v in self.center]
        ox, oy, oz = (rays.o[i] - c[i] for i in range(3))
        dx, dy, dz = rays.d
        p = [m[i][0] * ox + m[i][1] * oy + m[i][2] * oz for i in range(3)]
        d = [m[i][0] * dx + m[i][1] * dy + m[i][2] * dz for i in range(3)]
        k = 3 if self.kind == "ellipsoid" else 2
        a = sum(d[i] * d[i] for i in range(k))
        b = 2.0 * sum(p[i] * d[i] for i in range(k))
        cc = sum(p[i] * p[i] for i in range(k)) - 1.0
        shape = np.broadcast_shapes(np.shape(a), np.shape(b), np.shape(cc))
        a, b, cc = (np.broadcast_to(v, shape) for v in (a, b, cc))
        disc = b * b - 4.0 * a * cc
        ok = (disc > 0) & (a > 0)
        sq = np.sqrt(np.where(ok, disc, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            t0 = np.where(ok, (-b - sq) / (2.0 * a), _INF)
            t1 = np.where(ok, (-b + sq) / (2.0 * a), -_INF)
        local = Rays((p[0], p[1], p[2]), (d[0], d[1], d[2]))
        slabs = list(self.local_slabs)
        if self.kind == "cylinder":
            slabs.append(((0.0, 0.0, 1.0), -1.0, 1.0))
        if slabs:
            t0, t1 = apply_slabs(local, slabs, t0, t1)
        return t0, t1

    def world_aabb(self, a: Array, t: Array) -> tuple[Array, Array]:
        """Exact axis-aligned box of the (unclipped) quadric after ``world = a @ body + t``."""
        m = np.asarray(a, float) @ (np.asarray(self.rot, float) * np.asarray(self.semi, float)[None, :])
        if self.kind == "cylinder":
            half = np.sqrt((m[:, 0:2] ** 2).sum(axis=1)) + np.abs(m[:, 2])
        else:
            half = np.sqrt((m**2).sum(axis=1))
        c = np.asarray(a, float) @ np.asarray(self.center, float) + np.asarray(t, float)
        return c - half, c + half

    def aabb(self) -> tuple[Array, Array]:
        r = np.asarray(self.rot, float) * np.asarray(self.semi, float)[None, :]
        if self.kind == "cylinder":
            half = np.sqrt((r[:, 0:2] ** 2).sum(axis=1)) + np.abs(r[:, 2])
        else:
            half = np.sqrt((r**2).sum(axis=1))
        c = np.asarray(self.center, float)
        return c - half, c + half


@dataclass(frozen=True)
class Swept(Shape):
    """Elliptical cross-sections along body z: ``params(z) -> (cx, cy, a, b)`` (mm; a = 0 where absent).

    ``z_range`` (lo, hi) mm; ``xy_bounds`` conservative (x_min, y_min, x_max, y_max) of every cross-section;
    ``y_ref`` mm: for oblique rays the cross-section is taken where the ray crosses y = y_ref.
    """

    params: Callable[[Array], tuple[Array, Array, Array, Array]]
    z_range: tuple[float, float]
    xy_bounds: tuple[float, float, float, float]
    y_ref: float = 0.0
    table_step: float = 0.25  # mm: params are tabulated once and interpolated linearly (error << 0.01 mm)

    @cached_property
    def _table(self) -> tuple[float, np.ndarray]:
        z0, z1 = self.z_range
        n = int(np.ceil((z1 - z0) / self.table_step)) + 2
        zs = z0 + np.arange(n) * self.table_step
        cx, cy, a, b = self.params(zs)
        return z0, np.stack([np.broadcast_to(v, zs.shape) for v in (cx, cy, a, b)]).astype(np.float32)

    def lookup(self, z: Array) -> tuple[Array, Array, Array, Array]:
        """(cx, cy, a, b) at z from the table (a = 0 outside the z-range)."""
        z0, tab = self._table
        u = (np.asarray(z, np.float32) - np.float32(z0)) / np.float32(self.table_step)
        i = np.clip(np.floor(u), 0, tab.shape[1] - 2).astype(np.intp)
        f = np.clip(u - i, 0.0, 1.0).astype(np.float32)
        out = [tab[k, i] * (1 - f) + tab[k, i + 1] * f for k in range(4)]
        return out[0], out[1], out[2], out[3]

    def interval(self, rays: Rays) -> tuple[Array, Array]:
        ox, oy, oz = rays.o
        dx, dy, dz = rays.d
        if np.all(np.asarray(dz) == 0):
            z = np.asarray(oz, float)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                tr = np.where(np.asarray(dy) != 0, (self.y_ref - oy) / dy, 0.0)
            z = oz + tr * dz
        dt = np.result_type(np.asarray(ox).dtype, np.asarray(dx).dtype)
        cx, cy, a, b = (np.asarray(v, dt) for v in self.lookup(z))
        present = (a > 0) & (z >= self.z_range[0]) & (z <= self.z_range[1])
        a = np.where(present, a, 1.0)
        b = np.where(present, b, 1.0)
        px = (ox - cx) / a
        py = (oy - cy) / b
        ux = dx / a
        uy = dy / b
        qa = ux * ux + uy * uy
        qb = 2.0 * (px * ux + py * uy)
        qc = px * px + py * py - 1.0
        shape = np.broadcast_shapes(np.shape(qa), np.shape(qb), np.shape(qc), np.shape(present))
        qa, qb, qc, present = (np.broadcast_to(v, shape) for v in (qa, qb, qc, present))
        disc = qb * qb - 4.0 * qa * qc
        ok = present & (disc > 0) & (qa > 0)
        sq = np.sqrt(np.where(ok, disc, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            t0 = np.where(ok, (-qb - sq) / (2.0 * qa), _INF)
            t1 = np.where(ok, (-qb + sq) / (2.0 * qa), -_INF)
        return t0, t1

    def aabb(self) -> tuple[Array, Array]:
        x0, y0, x1, y1 = self.xy_bounds
        return np.array([x0, y0, self.z_range[0]]), np.array([x1, y1, self.z_range[1]])


@dataclass(frozen=True)
class SlabSet(Shape):
    """Intersection of body-frame slabs (a box when three axis-aligned slabs are given)."""

    slabs: tuple[Slab, ...]
    bounds: tuple[tuple[float, float, float], tuple[float, float, float]]

    def interval(self, rays: Rays) -> tuple[Array, Array]:
        t0, t1 = _empty_like(rays.shape)
        t0[...] = -_INF
        t1[...] = _INF
        return apply_slabs(rays, self.slabs, t0, t1)

    def aabb(self) -> tuple[Array, Array]:
        return np.asarray(self.bounds[0], float), np.asarray(self.bounds[1], float)


@dataclass(frozen=True)
class Component:
    """Tissue ``excess`` (1/mm, attenuation minus that of the surrounding tissue) inside ``shape`` and ``slabs``
    (body-frame clips), outside every shape in ``minus`` (assumed disjoint from each other)."""

    name: str
    shape: Shape
    excess: float
    slabs: tuple[Slab, ...] = ()
    minus: tuple[Shape, ...] = ()
    tags: frozenset[str] = field(default_factory=frozenset)

    def length(self, rays: Rays, extra_slabs: Sequence[Slab] = ()) -> Array:
        """Chord length in units of |D| (multiply by |D| for mm)."""
        t0, t1 = self.shape.interval(rays)
        slabs = (*self.slabs, *extra_slabs)
        if slabs:
            t0, t1 = apply_slabs(rays, slabs, t0, t1)
        out = np.maximum(t1 - t0, 0.0)
        for sub in self.minus:
            s0, s1 = sub.interval(rays)
            out = out - np.maximum(np.minimum(t1, s1) - np.maximum(t0, s0), 0.0)
        return np.maximum(out, 0.0)

    def aabb(self) -> tuple[Array, Array]:
        return self._aabb

    @cached_property
    def _aabb(self) -> tuple[Array, Array]:
        lo, hi = self.shape.aabb()
        lo, hi = lo.astype(float), hi.astype(float)
        for _ in range(2):  # interval arithmetic on every clip slab (two passes tighten coupled slabs)
            for normal, a, b in self.slabs:
                n = np.asarray(normal, float)
                for i in np.flatnonzero(n):
                    others = [j for j in range(3) if j != i and n[j] != 0]
                    smin = sum(min(n[j] * lo[j], n[j] * hi[j]) for j in others)
                    smax = sum(max(n[j] * lo[j], n[j] * hi[j]) for j in others)
                    v0, v1 = (a - smax) / n[i], (b - smin) / n[i]
                    v0, v1 = min(v0, v1), max(v0, v1)
                    lo[i] = max(lo[i], v0)
                    hi[i] = min(hi[i], v1)
        return lo, hi


def z_slab(z_lo: float, z_hi: float) -> Slab:
    return ((0.0, 0.0, 1.0), z_lo, z_hi)


def rotation(axis: str, angle_rad: float) -> Array:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def axis_rotation(direction: Sequence[float]) -> tuple[tuple[float, float, float], ...]:
    """A rotation whose local z axis points along ``direction`` (for cylinders along a segment)."""
    w = np.asarray(direction, float)
    w = w / np.linalg.norm(w)
    helper = np.array([1.0, 0.0, 0.0]) if abs(w[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(helper, w)
    u /= np.linalg.norm(u)
    v = np.cross(w, u)
    m = np.stack([u, v, w], axis=1)
    return tuple((float(row[0]), float(row[1]), float(row[2])) for row in m)


def segment_cylinder(p0: Sequence[float] | Array, p1: Sequence[float] | Array, ra: float, rb: float | None = None) -> Quadric:
    """Elliptical cylinder from point p0 to p1 (mm) with cross-section semi-axes ra, rb."""
    p0a, p1a = np.asarray(p0, float), np.asarray(p1, float)
    half = float(np.linalg.norm(p1a - p0a)) / 2.0
    rot = axis_rotation(p1a - p0a)
    centre = tuple(float(v) for v in (p0a + p1a) / 2.0)
    return Quadric("cylinder", centre, (ra, rb if rb is not None else ra, half), rot)  # type: ignore[arg-type]
