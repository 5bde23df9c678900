"""Render line-integral images of a placed phantom and measure its exact silhouettes.

``line_integrals`` returns P = integral of mu along each pixel's ray (dimensionless) for a geometry
(``projection.py``). ``silhouette_box`` returns the projected extent of a set of components in continuous
SCOORD pixel coordinates, refined to 1/32 pixel at the edges (coarse mask at pixel centres, then 32 samples
across the edge pixel). Every component is culled to the image block covered by its projected bounding box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.simulator.projection import FanBeamLocalizer, Geometry, Placement
from inference.simulator.raycast import Component, Rays, Slab, SlabSet, apply_slabs, z_slab

Array = np.ndarray
_REFINE = 32


def _corners(lo: Array, hi: Array) -> Array:
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)


def component_block(
    comp: Component,
    geom: Geometry,
    placement: Placement | None,
    limits: tuple[int, int, int, int],
    z_clip: tuple[float, float] | None = None,
) -> tuple[int, int, int, int] | None:
    """Pixel block (r0, r1, c0, c1) that can contain the component, clipped to ``limits`` (same form)."""
    lo, hi = comp.aabb()
    if z_clip is not None:
        lo = lo.copy()
        hi = hi.copy()
        lo[2] = max(lo[2], z_clip[0])
        hi[2] = min(hi[2], z_clip[1])
        if lo[2] > hi[2]:
            return None
    if z_clip is None and placement is not None:  # the world corners of a component are cached per placement
        cache = comp.__dict__.setdefault("_world_corners", {})
        pts = cache.get(placement)
        if pts is None:
            pts = cache[placement] = placement.to_world(_corners(lo, hi))
    else:
        pts = _corners(lo, hi)
        if placement is not None:
            pts = placement.to_world(pts)
    x, y = geom.project(pts)
    r0, r1, c0, c1 = limits
    br0 = max(r0, int(np.floor(y.min())) - 1)
    br1 = min(r1, int(np.ceil(y.max())) + 1)
    bc0 = max(c0, int(np.floor(x.min())) - 1)
    bc1 = min(c1, int(np.ceil(x.max())) + 1)
    if br0 >= br1 or bc0 >= bc1:
        return None
    return br0, br1, bc0, bc1


def _shape_block(
    shape: object, geom: Geometry, placement: Placement | None, limits: tuple[int, int, int, int]
) -> tuple[int, int, int, int] | None:
    return component_block(Component("minus", shape, 0.0), geom, placement, limits)  # type: ignore[arg-type]


def _f32(rays: Rays) -> Rays:
    return Rays(
        tuple(np.asarray(a, np.float32) for a in rays.o),  # type: ignore[arg-type]
        tuple(np.asarray(a, np.float32) for a in rays.d),  # type: ignore[arg-type]
    )


def _z_invariant(comp: Component, geom: Geometry, placement: Placement | None) -> bool:
    """True when the chord does not depend on the image row: fan-beam rows differ only in z, and the world-frame
    component has no z dependence (the table)."""
    if placement is not None or not isinstance(geom, FanBeamLocalizer) or comp.minus:
        return False
    if not isinstance(comp.shape, SlabSet):
        return False
    return all(n[2] == 0 for n, _, _ in (*comp.shape.slabs, *comp.slabs))


def component_lengths(
    comp: Component, rays: Rays, blk: tuple[int, int, int, int], geom: Geometry, placement: Placement | None
) -> np.ndarray:
    """Chord lengths (units of |D|) of ``comp`` over pixel block ``blk`` of the full-image bundle ``rays``;
    subtracted shapes are evaluated only where their own projection overlaps the block."""
    r0, r1, c0, c1 = blk
    sub = rays.block(r0, r1, c0, c1)
    t0, t1 = comp.shape.interval(sub)
    if comp.slabs:
        t0, t1 = apply_slabs(sub, comp.slabs, t0, t1)
    t0 = np.broadcast_to(t0, (r1 - r0, c1 - c0))
    t1 = np.broadcast_to(t1, (r1 - r0, c1 - c0))
    out = np.maximum(t1 - t0, 0.0)
    for shape in comp.minus:
        mb = _shape_block(shape, geom, placement, blk)
        if mb is None:
            continue
        a0, a1, b0, b1 = mb
        s0, s1 = shape.interval(rays.block(a0, a1, b0, b1))
        i = (slice(a0 - r0, a1 - r0), slice(b0 - c0, b1 - c0))
        out[i] -= np.maximum(np.minimum(t1[i], s1) - np.maximum(t0[i], s0), 0.0)
    return np.maximum(out, 0.0)


def line_integrals(
    body: Sequence[Component], world: Sequence[Component], geom: Geometry, placement: Placement
) -> Array:
    """P image (rows, cols): sum over components of excess mu x chord length (mm)."""
    img = np.zeros((geom.rows, geom.cols), dtype=np.float32)
    wrays = _f32(geom.grid())
    brays = _f32(placement.to_body(wrays))
    limits = (0, geom.rows, 0, geom.cols)
    for comps, rays, plc in ((body, brays, placement), (world, wrays, None)):
        for comp in comps:
            blk = component_block(comp, geom, plc, limits)
            if blk is None:
                continue
            r0, r1, c0, c1 = blk
            if _z_invariant(comp, geom, plc):
                one = (r0, r0 + 1, c0, c1)
                ln = component_lengths(comp, rays, one, geom, plc) * wrays.block(*one).norm()
                img[r0:r1, c0:c1] += np.float32(comp.excess) * ln
                continue
            norm = wrays.block(r0, r1, c0, c1).norm()
            img[r0:r1, c0:c1] += np.float32(comp.excess) * component_lengths(comp, rays, blk, geom, plc) * norm
    return img.astype(float)


def _mask(comps: Sequence[Component], rays: Rays, slabs: Sequence[Slab]) -> Array:
    out = np.zeros(rays.shape, dtype=bool)
    for comp in comps:
        out |= comp.length(rays, slabs) > 1e-9
    return out


def silhouette_box(
    comps: Sequence[Component],
    geom: Geometry,
    placement: Placement | None,
    z_range: tuple[float, float],
    limits: tuple[float, float, float, float] | None = None,
) -> tuple[float, float, float, float] | None:
    """(x_min, y_min, x_max, y_max) of the projected silhouette of ``comps`` restricted to body z in ``z_range``,
    clipped to ``limits`` (continuous X0, Y0, X1, Y1; default: the image). None when nothing projects inside."""
    if limits is None:
        limits = (0.0, 0.0, float(geom.cols), float(geom.rows))
    lx0, ly0, lx1, ly1 = limits
    ilim = (int(np.floor(ly0)), int(np.ceil(ly1)), int(np.floor(lx0)), int(np.ceil(lx1)))
    pairs = [(c, component_block(c, geom, placement, ilim, z_range)) for c in comps]
    comps = [c for c, b in pairs if b is not None]
    blocks = [b for _, b in pairs if b is not None]
    if not blocks:
        return None
    r0 = min(b[0] for b in blocks)
    r1 = max(b[1] for b in blocks)
    c0 = min(b[2] for b in blocks)
    c1 = max(b[3] for b in blocks)
    slabs = (z_slab(*z_range),)

    def rays_at(x: Array, y: Array) -> Rays:
        r = geom.rays(x, y)
        return placement.to_body(r) if placement is not None else r

    xs = np.clip(np.arange(c0, c1, dtype=float) + 0.5, lx0, lx1)
    ys = np.clip(np.arange(r0, r1, dtype=float) + 0.5, ly0, ly1)
    grid = rays_at(xs[None, :], ys[:, None])
    m = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    masks = []
    for comp, (b0, b1, b2, b3) in zip(comps, blocks, strict=False):
        block = grid.block(b0 - r0, b1 - r0, b2 - c0, b3 - c0)
        cm = np.zeros_like(m)
        cm[b0 - r0:b1 - r0, b2 - c0:b3 - c0] = comp.length(block, slabs) > 1e-9
        masks.append(cm)
        m |= cm
    if not m.any():
        return None
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    k = (np.arange(_REFINE + 1, dtype=float) / _REFINE)[None, :]

    def edge(first_idx: Array, lines: Array, centres_other: Array, along_x: bool, lower: bool) -> float:
        """Refine the extreme edge along one axis. ``first_idx``: per line, the index of its extreme coarse hit.
        The edge of a line whose extreme hit is pixel i lies within half a pixel of i's centre, so only the
        lines reaching the extreme pixel, and the components hit there, can set the box edge."""
        best = first_idx.min() if lower else first_idx.max()
        sel = np.flatnonzero(first_idx == best)
        ln = lines[sel]
        if along_x:
            cand = [c for c, cm in zip(comps, masks, strict=True) if cm[ln, best].any()]
        else:
            cand = [c for c, cm in zip(comps, masks, strict=True) if cm[best, ln].any()]
        other = centres_other[sel][:, None]
        base = (c0 if along_x else r0) + float(best) + 0.5
        lim_lo, lim_hi = (lx0, lx1) if along_x else (ly0, ly1)
        pos = (base - 1.0 + k) if lower else (base + 1.0 - k)
        pos = np.clip(np.broadcast_to(pos, (len(sel), k.shape[1])), lim_lo, lim_hi)
        rays = rays_at(pos, other) if along_x else rays_at(other, pos)
        hit = _mask(cand, rays, slabs)
        hit[:, -1] = True  # the coarse sample itself is a hit
        j = hit.argmax(axis=1)
        step = 0.5 / _REFINE
        vals = np.take_along_axis(pos, j[:, None], axis=1)[:, 0]
        at_limit = j == 0
        if lower:
            vals = np.where(at_limit, vals, vals - step)
            return float(max(lim_lo, vals.min()))
        vals = np.where(at_limit, vals, vals + step)
        return float(min(lim_hi, vals.max()))

    sub = m[rows]
    left = sub.argmax(axis=1)
    right = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    ycent = ys[rows]
    x_min = edge(left, rows, ycent, True, True)
    x_max = edge(right, rows, ycent, True, False)
    subc = m[:, cols]
    top = subc.argmax(axis=0)
    bottom = subc.shape[0] - 1 - subc[::-1, :].argmax(axis=0)
    xcent = xs[cols]
    y_min = edge(top, cols, xcent, False, True)
    y_max = edge(bottom, cols, xcent, False, False)
    return x_min, y_min, x_max, y_max
