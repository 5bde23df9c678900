"""Domain randomisation applied to training images before the engine's preprocessing.

Works on a 2-D float32 image of presentation values (MONOCHROME2 sense: brighter = more attenuation) in any range,
with boxes (N, 4) x1 y1 x2 y2 in its pixel frame (SCOORD corners) and, per box, the fraction of the whole region
that is visible. Geometric steps (crop = partial body coverage, padding, flips, small rotations) move the boxes and
lower the visible fractions; intensity steps (gamma, contrast, inversion, noise, blur, collimation, low resolution)
leave them alone. Every random draw comes from the ``numpy.random.Generator`` passed in (fixed seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges (image sizes in pixels of the image being augmented)."""

    p_crop: float = 0.45  # partial body coverage: keep a random sub-window
    p_patch: float = 0.0  # a small patch (15-40 % of each side): mostly limbs/background, regions absent
    crop_min: float = 0.45  # smallest kept fraction of each side
    p_pad: float = 0.2  # zoom out: pad with a background value
    pad_max: float = 0.35  # largest added fraction of each side
    p_bright_fill: float = 0.2  # padding / rotation corners filled bright instead of dark
    p_hflip: float = 0.5
    p_vflip: float = 0.08  # images stored head-down exist (see realdata dx_rentgenprom)
    p_rot90: float = 0.03
    p_rotate: float = 0.3
    max_rotate_deg: float = 8.0
    p_gamma: float = 0.6
    p_invert: float = 0.12  # wrong Photometric Interpretation
    p_noise: float = 0.6
    max_noise: float = 0.06  # std as a fraction of the value range
    p_blur: float = 0.35
    max_blur_sigma: float = 2.0
    p_collimate: float = 0.25  # constant borders outside a random rectangle
    p_lowres: float = 0.2  # down- then up-sample
    p_table: float = 0.1  # a bright horizontal/vertical band (table, positioning aids)


def visible_after_clip(boxes: np.ndarray, clipped: np.ndarray) -> np.ndarray:
    """Area ratio clipped / original per box (0 for empty originals)."""
    a0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    a1 = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(clipped[:, 3] - clipped[:, 1], 0, None)
    return np.where(a0 > 0, a1 / np.maximum(a0, 1e-9), 0.0)


def _crop(img: np.ndarray, boxes: np.ndarray, frac: np.ndarray, rng: np.random.Generator, min_side: float,
          max_side: float = 1.0):
    rows, cols = img.shape
    h = max(8, int(rows * rng.uniform(min_side, max_side)))
    w = max(8, int(cols * rng.uniform(min_side, max_side)))
    y0 = int(rng.integers(0, rows - h + 1))
    x0 = int(rng.integers(0, cols - w + 1))
    img = img[y0 : y0 + h, x0 : x0 + w]
    moved = boxes - np.array([x0, y0, x0, y0], dtype=np.float64)
    clipped = moved.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, w)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, h)
    return img, clipped, frac * visible_after_clip(moved, clipped)


def _background(img: np.ndarray, rng: np.random.Generator, p_bright: float) -> float:
    lo, hi = np.percentile(img[:: max(1, img.shape[0] // 64), :: max(1, img.shape[1] // 64)], [1, 99])
    return float(hi if rng.random() < p_bright else lo)


def _pad(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, pad_max: float, p_bright: float):
    rows, cols = img.shape
    top, bottom = (int(rows * rng.uniform(0, pad_max / 2)) for _ in range(2))
    left, right = (int(cols * rng.uniform(0, pad_max / 2)) for _ in range(2))
    out = np.full((rows + top + bottom, cols + left + right), _background(img, rng, p_bright), dtype=np.float32)
    out[top : top + rows, left : left + cols] = img
    return out, boxes + np.array([left, top, left, top], dtype=np.float64)


def _rotate(img: np.ndarray, boxes: np.ndarray, frac: np.ndarray, deg: float, rng: np.random.Generator, p_bright: float):
    """Rotate about the centre keeping the size; a box becomes the enclosure of its rotated corners, shrunk so
    its area matches the original (the anatomy does not grow when the image turns)."""
    rows, cols = img.shape
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    out = np.asarray(pil.rotate(deg, resample=Image.Resampling.BILINEAR, fillcolor=_background(img, rng, p_bright)))
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    cx, cy = cols / 2.0, rows / 2.0
    new = boxes.copy()
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        xs = np.array([x0, x1, x1, x0]) - cx
        ys = np.array([y0, y0, y1, y1]) - cy
        # PIL rotates counter-clockwise on screen (y down): x' = c x + s y, y' = -s x + c y
        rx = c * xs + s * ys + cx
        ry = -s * xs + c * ys + cy
        bw, bh = x1 - x0, y1 - y0
        ew, eh = rx.max() - rx.min(), ry.max() - ry.min()
        mx, my = (rx.max() + rx.min()) / 2, (ry.max() + ry.min()) / 2
        # midway between the enclosure and the original size
        w, h = (ew + bw) / 2, (eh + bh) / 2
        new[i] = (mx - w / 2, my - h / 2, mx + w / 2, my + h / 2)
    clipped = new.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, cols)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, rows)
    return out.astype(np.float32), clipped, frac * visible_after_clip(new, clipped)


def augment(
    img: np.ndarray, boxes: np.ndarray, frac: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random augmentation of ``img`` with its boxes (N, 4) and visible fractions (N,).

    Returns new (image float32, boxes, visible fractions); boxes stay in the returned image's pixel frame.
    """
    img = np.asarray(img, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    frac = np.asarray(frac, dtype=np.float64).reshape(-1).copy()
    # -- geometry
    if cfg.p_patch > 0 and rng.random() < cfg.p_patch and min(img.shape) >= 64:
        img, boxes, frac = _crop(img, boxes, frac, rng, 0.15, 0.4)
    elif rng.random() < cfg.p_crop:
        img, boxes, frac = _crop(img, boxes, frac, rng, cfg.crop_min)
    if rng.random() < cfg.p_pad:
        img, boxes = _pad(img, boxes, rng, cfg.pad_max, cfg.p_bright_fill)
    if rng.random() < cfg.p_rotate:
        deg = rng.uniform(-cfg.max_rotate_deg, cfg.max_rotate_deg)
        img, boxes, frac = _rotate(img, boxes, frac, deg, rng, cfg.p_bright_fill)
    rows, cols = img.shape
    if rng.random() < cfg.p_hflip:
        img = img[:, ::-1]
        boxes[:, [0, 2]] = cols - boxes[:, [2, 0]]
    if rng.random() < cfg.p_vflip:
        img = img[::-1, :]
        boxes[:, [1, 3]] = rows - boxes[:, [3, 1]]
    if rng.random() < cfg.p_rot90:  # 90 degrees clockwise: (x, y) -> (rows - y, x)
        img = np.rot90(img, k=-1)
        boxes = np.stack([rows - boxes[:, 3], boxes[:, 0], rows - boxes[:, 1], boxes[:, 2]], axis=1)
    img = np.ascontiguousarray(img, dtype=np.float32)
    rows, cols = img.shape
    # -- intensity (on a [0, 1] copy of the range, mapped back at the end)
    sub = img[:: max(1, rows // 128), :: max(1, cols // 128)]
    lo, hi = (float(v) for v in np.percentile(sub, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    x = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    if rng.random() < cfg.p_table:
        t = int(rng.integers(2, max(3, rows // 25)))
        if rng.random() < 0.5:
            y = int(rng.integers(0, rows - t))
            x[y : y + t, :] = np.maximum(x[y : y + t, :], rng.uniform(0.3, 0.9))
        else:
            xx = int(rng.integers(0, cols - t))
            x[:, xx : xx + t] = np.maximum(x[:, xx : xx + t], rng.uniform(0.3, 0.9))
    if rng.random() < cfg.p_collimate:
        y0, y1 = int(rows * rng.uniform(0, 0.15)), int(rows * rng.uniform(0.85, 1.0))
        x0, x1 = int(cols * rng.uniform(0, 0.15)), int(cols * rng.uniform(0.85, 1.0))
        value = float(rng.choice([0.0, 1.0, rng.uniform(0.2, 0.8)]))
        mask = np.ones_like(x, dtype=bool)
        mask[y0:y1, x0:x1] = False
        x[mask] = value
        clipped = boxes.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], x0, x1)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], y0, y1)
        frac = frac * visible_after_clip(boxes, clipped)
        boxes = clipped
    if rng.random() < cfg.p_gamma:
        x = x ** float(np.exp(rng.uniform(-0.7, 0.7)))
    if rng.random() < cfg.p_lowres and min(rows, cols) > 64:
        f = rng.uniform(0.25, 0.6)
        small = Image.fromarray(x.astype(np.float32), mode="F").resize(
            (max(8, int(cols * f)), max(8, int(rows * f))), Image.Resampling.BILINEAR
        )
        x = np.asarray(small.resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float32)
    if rng.random() < cfg.p_blur:
        x = ndimage.gaussian_filter(x, rng.uniform(0.5, cfg.max_blur_sigma))
    if rng.random() < cfg.p_noise:
        x = x + rng.normal(0.0, rng.uniform(0.005, cfg.max_noise), x.shape).astype(np.float32)
    if rng.random() < cfg.p_invert:
        x = 1.0 - x
    out = (x * (hi - lo) + lo).astype(np.float32)
    return out, boxes, frac
