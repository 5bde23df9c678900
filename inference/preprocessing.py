"""Stored pixels -> model input tensor, recording every geometric step so boxes map back EXACTLY.

First, the stored image is turned to the canonical head-up view (``inference.orientation``: from Image
Orientation (Patient), Patient Orientation or the route's ``radiograph_orientation``), recorded as an ``orient``
step (one of the 8 in-plane rotations/flips; exact, no resampling). Then the steps of the model card
(``ModelCard.preprocessing``) in order. Intensity steps: ``modality_lut`` (Rescale
Slope/Intercept or Modality LUT -> modality values, e.g. HU), ``voi`` (window from the header, percentiles, min/max
or fixed -> [0, 1]), ``invert_monochrome1``/``invert``, ``equalize_histogram``, ``normalize`` (last). Geometric
steps (``crop_to_content``, ``flip``, ``resize``, ``letterbox``) each append an axis-aligned affine map to the
``Transform``.

Coordinates are continuous pixel coordinates with (0, 0) at the top-left CORNER of the first pixel (see
inference.types). A resampler that aligns pixel centres (Pillow, as used here) maps x_out = x_in * out/in in these
coordinates, so every step is ``x' = sx * x + tx``, ``y' = sy * y + ty`` (after swapping x and y for a transposing ``orient``
step) and inverts exactly in float64.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from inference.decoders import decode_pixels
from inference.modelcard import ModelCard, PreprocessStep
from inference.orientation import IDENTITY, Orientation, canonical_orientation

log = logging.getLogger(__name__)

_PIL_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
}
_PERCENTILE_SAMPLE = 1 << 18  # percentiles use a regular subsample of at most ~this many pixels


class PreprocessingError(ValueError):
    """The image cannot be turned into a model input (message says why; no PHI)."""


@dataclass(frozen=True)
class GeometricStep:
    """One axis-aligned affine step: ``x' = sx * x + tx``, ``y' = sy * y + ty`` (pixel corner coordinates).

    ``swap``: x and y are exchanged first (a transposing ``orient`` step: ``x' = sx * y + tx``,
    ``y' = sy * x + ty``). ``size_in``/``size_out`` are (rows, columns) before and after the step.
    """

    op: str  # orient | crop | flip | resize | letterbox
    size_in: tuple[int, int]
    size_out: tuple[int, int]
    sx: float
    tx: float
    sy: float
    ty: float
    swap: bool = False

    def forward(self, xy: np.ndarray) -> np.ndarray:
        x, y = (xy[:, 1], xy[:, 0]) if self.swap else (xy[:, 0], xy[:, 1])
        return np.stack([x * self.sx + self.tx, y * self.sy + self.ty], axis=1)

    def backward(self, xy: np.ndarray) -> np.ndarray:
        x, y = (xy[:, 0] - self.tx) / self.sx, (xy[:, 1] - self.ty) / self.sy
        return np.stack([y, x] if self.swap else [x, y], axis=1)


@dataclass(frozen=True)
class Transform:
    """The geometric steps from the ORIGINAL image (``original_size`` rows, columns) to the model input."""

    original_size: tuple[int, int]
    steps: tuple[GeometricStep, ...] = ()

    @property
    def model_size(self) -> tuple[int, int]:
        return self.steps[-1].size_out if self.steps else self.original_size

    def then(self, step: GeometricStep) -> Transform:
        if step.size_in != self.model_size:
            raise ValueError(f"step {step.op} expects size {step.size_in}, chain is at {self.model_size}")
        return Transform(self.original_size, self.steps + (step,))

    @property
    def swaps_axes(self) -> bool:
        """True when the chain exchanges x and y (an odd number of transposing steps)."""
        return sum(s.swap for s in self.steps) % 2 == 1

    def affine(self) -> tuple[float, float, float, float]:
        """The whole chain as one map (sx, tx, sy, ty): model = s * original + t (after swapping x and y first
        when ``swaps_axes``)."""
        sx, tx, sy, ty = 1.0, 0.0, 1.0, 0.0
        for s in self.steps:
            if s.swap:
                sx, tx, sy, ty = sy, ty, sx, tx
            sx, tx = s.sx * sx, s.sx * tx + s.tx
            sy, ty = s.sy * sy, s.sy * ty + s.ty
        return sx, tx, sy, ty

    def points_to_model(self, xy: np.ndarray) -> np.ndarray:
        out = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        for s in self.steps:
            out = s.forward(out)
        return out

    def points_to_original(self, xy: np.ndarray) -> np.ndarray:
        out = np.asarray(xy, dtype=np.float64).reshape(-1, 2).copy()
        for s in reversed(self.steps):  # step by step: exact inverse of each
            out = s.backward(out)
        return out

    def boxes_to_model(self, boxes: np.ndarray) -> np.ndarray:
        return _boxes_via(np.asarray(boxes, dtype=np.float64), self.points_to_model)

    def boxes_to_original(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        out = _boxes_via(np.asarray(boxes, dtype=np.float64), self.points_to_original)
        if clip:
            rows, cols = self.original_size
            out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0.0, cols)
            out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0.0, rows)
        return out


def _boxes_via(boxes: np.ndarray, fn: Any) -> np.ndarray:
    """Map (N, 4) x1 y1 x2 y2 boxes through a point map; re-sorts corners (flips swap them)."""
    boxes = boxes.reshape(-1, 4)
    p1 = fn(boxes[:, 0:2])
    p2 = fn(boxes[:, 2:4])
    return np.concatenate([np.minimum(p1, p2), np.maximum(p1, p2)], axis=1)


def boxes_to_original(boxes_model: np.ndarray, transform: Transform, clip: bool = True) -> np.ndarray:
    """(N, 4) x1 y1 x2 y2 boxes in model-input pixels -> ORIGINAL pixels (clipped to the image when ``clip``)."""
    return transform.boxes_to_original(boxes_model, clip=clip)


@dataclass(frozen=True)
class PreparedImage:
    """A model-ready image: ``tensor`` (C, H, W) float32 (or uint8), its ``transform`` and what was assumed."""

    tensor: np.ndarray
    transform: Transform
    notes: tuple[str, ...] = ()

    @property
    def original_size(self) -> tuple[int, int]:
        return self.transform.original_size


def stored_pixels(ds: Dataset) -> np.ndarray:
    """Stored pixel values of a dataset (first frame), via ``inference.decoders`` (every decoder in turn)."""
    try:
        decoded = decode_pixels(ds)
    except Exception as exc:  # UndecodableImage lists every decoder's reason
        raise PreprocessingError(f"pixel data could not be decoded: {exc}") from None
    return np.asarray(decoded.pixels)


def modality_pixels(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """Stored values -> modality values (float32; Rescale Slope/Intercept or Modality LUT), e.g. HU for CT."""
    arr = np.asarray(pixels)
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    slope, intercept, problem = rescale(ds)
    if problem:
        raise PreprocessingError(problem + ": modality values unknown")
    return (arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def rescale(ds: Dataset) -> tuple[float, float, str]:
    """(Rescale Slope, Rescale Intercept, problem): 1 and 0 when absent; a malformed value gives 1 / 0 and the
    problem (PHI-free) instead of raising."""
    out, problems = [], []
    for keyword, tag, default in (("RescaleSlope", "(0028,1053)", 1.0), ("RescaleIntercept", "(0028,1052)", 0.0)):
        try:
            raw = ds.get(keyword, default)
            value = default if raw in (None, "") else float(raw)
            if not math.isfinite(value) or (keyword == "RescaleSlope" and value == 0.0):
                raise ValueError("not finite / zero")
        except (TypeError, ValueError):
            problems.append(f"{keyword} {tag} is malformed")
            value = default
        out.append(value)
    return out[0], out[1], "; ".join(problems)


class _State:
    def __init__(self, img: np.ndarray, transform: Transform) -> None:
        self.img = img
        self.transform = transform
        self.unit = False  # values in [0, 1] (after VOI)
        self.notes: list[str] = []


def _voi(st: _State, ds: Dataset | None, p: dict[str, Any]) -> None:
    img = st.img
    mode = p.get("mode", "header")
    low, high = float(p.get("low", 1.0)), float(p.get("high", 99.0))
    if mode == "header":
        center = width = None
        if ds is not None and "WindowCenter" in ds and "WindowWidth" in ds:
            try:
                c, w = ds.WindowCenter, ds.WindowWidth
                center = float(c[0] if hasattr(c, "__len__") and not isinstance(c, str) else c)
                width = float(w[0] if hasattr(w, "__len__") and not isinstance(w, str) else w)
            except (TypeError, ValueError, IndexError):
                st.notes.append("Window Center/Width (0028,1050/1051) malformed: ignored")
                center = width = None
        if center is not None and width is not None and width >= 1.0:
            func = str(ds.get("VOILUTFunction", "LINEAR")).upper() if ds is not None else "LINEAR"
            if func == "SIGMOID":
                st.img = 1.0 / (1.0 + np.exp(-4.0 * (img - center) / width))
            elif func == "LINEAR_EXACT":
                st.img = np.clip((img - center) / width + 0.5, 0.0, 1.0)
            else:  # DICOM PS3.3 C.11.2.1.2.1 linear window
                st.img = (
                    np.clip((img - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
                    if width > 1
                    else ((img > center - 0.5).astype(np.float32))
                )
            st.img = st.img.astype(np.float32)
            st.unit = True
            return
        st.notes.append(f"no usable window in the header: VOI from the {low:g}-{high:g} percentiles")
        mode = "percentile"
    if mode == "fixed":
        center, width = float(p["center"]), float(p["width"])
        lo_v, hi_v = center - width / 2.0, center + width / 2.0
    elif mode == "minmax":
        lo_v, hi_v = float(img.min()), float(img.max())
    else:
        sample = img
        if img.size > _PERCENTILE_SAMPLE:
            step = math.ceil(math.sqrt(img.size / _PERCENTILE_SAMPLE))
            sample = img[::step, ::step]
        lo_v, hi_v = (float(v) for v in np.percentile(sample, [low, high]))
    if hi_v <= lo_v:
        st.notes.append("VOI range is empty (constant image): output is all zeros")
        st.img = np.zeros_like(img, dtype=np.float32)
    else:
        st.img = np.clip((img - lo_v) / (hi_v - lo_v), 0.0, 1.0).astype(np.float32)
    st.unit = True


def _invert(st: _State) -> None:
    if st.unit:
        st.img = (1.0 - st.img).astype(np.float32)
    else:
        st.img = (float(st.img.min()) + float(st.img.max()) - st.img).astype(np.float32)


def _equalize(st: _State, bins: int) -> None:
    if not st.unit:
        raise PreprocessingError("equalize_histogram needs values in [0, 1]: put a voi step before it")
    scaled = st.img * np.float32(bins - 1)
    scaled += np.float32(0.5)  # values are in [0, 1] after VOI: truncation of x + 0.5 rounds to the nearest bin
    idx = np.clip(scaled, 0, bins - 1, out=scaled).astype(np.intp)
    hist = np.bincount(idx.ravel(), minlength=bins)
    cdf = np.cumsum(hist).astype(np.float64)
    cdf_min = cdf[np.nonzero(hist)[0][0]]
    denom = cdf[-1] - cdf_min
    if denom <= 0:
        st.notes.append("histogram equalisation skipped: constant image")
        return
    lut = np.clip((cdf - cdf_min) / denom, 0.0, 1.0).astype(np.float32)
    st.img = lut[idx]


def _resize(img: np.ndarray, rows: int, cols: int, interpolation: str) -> np.ndarray:
    if img.shape == (rows, cols):
        return img.astype(np.float32, copy=False)
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((cols, rows), resample=_PIL_RESAMPLE[interpolation]), dtype=np.float32)


def _padding_to_air(st: _State, ds: Dataset, notes: list[str]) -> None:
    """CT: stored pixels equal to Pixel Padding Value (0028,0120) (up to Pixel Padding Range Limit (0028,0121))
    lie outside the exposed field; vendors pad with -1024, -2048 or 0 HU. They are set to the lowest exposed
    value (air), so the model sees the same image whatever the vendor's padding. Only when the header declares the
    padding (an undeclared 0 HU cannot be told from tissue); radiographs are left as they are."""
    if "PixelPaddingValue" not in ds or str(ds.get("Modality", "")).upper() != "CT":
        return
    try:
        lo = float(_first(ds.PixelPaddingValue))
        hi = float(_first(ds.PixelPaddingRangeLimit)) if "PixelPaddingRangeLimit" in ds else lo
    except (TypeError, ValueError, IndexError):
        notes.append("Pixel Padding Value (0028,0120) malformed: ignored")
        return
    lo, hi = min(lo, hi), max(lo, hi)
    mask = (st.img >= lo) & (st.img <= hi)
    if not mask.any() or mask.all():
        return
    st.img = np.where(mask, np.float32(st.img[~mask].min()), st.img).astype(np.float32)
    notes.append(f"{100.0 * mask.mean():.1f} % of the pixels are padding (Pixel Padding Value): set to air"
                 " (the lowest exposed value) before detection")


def _first(v: Any) -> Any:
    return v[0] if hasattr(v, "__len__") and not isinstance(v, str | bytes) else v


def orient_step(orientation: Orientation, rows: int, cols: int) -> GeometricStep:
    """The ``orient`` step of ``orientation`` on a rows x cols image (exact in float64)."""
    out_r, out_c = orientation.output_size(rows, cols)
    return GeometricStep(
        "orient", (rows, cols), (out_r, out_c),
        -1.0 if orientation.flip_x else 1.0, float(out_c) if orientation.flip_x else 0.0,
        -1.0 if orientation.flip_y else 1.0, float(out_r) if orientation.flip_y else 0.0,
        orientation.transpose,
    )  # fmt: skip


def _orient(st: _State, orientation: Orientation) -> None:
    rows, cols = st.img.shape
    st.img = np.ascontiguousarray(orientation.apply(st.img))
    st.transform = st.transform.then(orient_step(orientation, rows, cols))


def _geometric(st: _State, step: PreprocessStep, card: ModelCard) -> None:
    p = dict(step.params)
    rows, cols = st.img.shape
    H, W = card.input.height, card.input.width
    if step.op == "crop_to_content":
        thr, margin = float(p.get("threshold", 0.0)), int(p.get("margin", 0))
        mask = st.img > thr
        if not mask.any():
            st.notes.append("crop_to_content: no pixel above the threshold, not cropped")
            return
        r_any, c_any = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        r0, r1 = max(0, int(r_any[0]) - margin), min(rows, int(r_any[-1]) + 1 + margin)
        c0, c1 = max(0, int(c_any[0]) - margin), min(cols, int(c_any[-1]) + 1 + margin)
        st.img = st.img[r0:r1, c0:c1]
        st.transform = st.transform.then(
            GeometricStep("crop", (rows, cols), (r1 - r0, c1 - c0), 1.0, -c0, 1.0, -r0)
        )
    elif step.op == "flip":
        h, v = bool(p.get("horizontal", False)), bool(p.get("vertical", False))
        if h:
            st.img = st.img[:, ::-1]
        if v:
            st.img = st.img[::-1, :]
        st.img = np.ascontiguousarray(st.img)
        st.transform = st.transform.then(
            GeometricStep(
                "flip",
                (rows, cols),
                (rows, cols),
                -1.0 if h else 1.0,
                cols if h else 0.0,
                -1.0 if v else 1.0,
                rows if v else 0.0,
            )  # fmt: skip
        )
    elif step.op == "resize":
        st.img = _resize(st.img, H, W, p.get("interpolation", "bilinear"))
        st.transform = st.transform.then(
            GeometricStep("resize", (rows, cols), (H, W), W / cols, 0.0, H / rows, 0.0)
        )
    elif step.op == "letterbox":
        s = min(H / rows, W / cols)
        new_r, new_c = max(1, min(H, round(rows * s))), max(1, min(W, round(cols * s)))
        resized = _resize(st.img, new_r, new_c, p.get("interpolation", "bilinear"))
        top, left = ((H - new_r) // 2, (W - new_c) // 2) if p.get("align", "center") == "center" else (0, 0)
        canvas = np.full((H, W), float(p.get("pad_value", 0.0)), dtype=np.float32)
        canvas[top : top + new_r, left : left + new_c] = resized
        st.img = canvas
        st.transform = st.transform.then(
            GeometricStep(
                "letterbox", (rows, cols), (H, W), new_c / cols, float(left), new_r / rows, float(top)
            )
        )


def preprocess(
    ds_or_pixels: Dataset | np.ndarray, card: ModelCard, *, pixels: np.ndarray | None = None,
    orientation: Orientation | None = None,
) -> PreparedImage:
    """Turn a dataset (or a bare 2-D array of stored values) into the card's model input.

    ``pixels``: the dataset's STORED pixel values when already decoded (saves a second decode). ``orientation``:
    the in-plane operation to the canonical head-up view; default: from the dataset's header
    (``inference.orientation.canonical_orientation``), none for a bare array. Returns the tensor as (C, H, W) - the
    engine transposes for NHWC models - plus the transform back to ORIGINAL pixels.
    """
    ds = ds_or_pixels if isinstance(ds_or_pixels, Dataset) else None
    if ds is None:
        arr = np.asarray(ds_or_pixels)
    else:
        arr = np.asarray(pixels) if pixels is not None else stored_pixels(ds)
    notes: list[str] = []
    samples = (
        int(ds.get("SamplesPerPixel", 1))
        if ds is not None
        else (arr.shape[-1] if arr.ndim == 3 and arr.shape[-1] in (3, 4) else 1)
    )
    if samples > 1 and arr.ndim == 4 or samples == 1 and arr.ndim == 3:
        arr = arr[0]
        notes.append("multi-frame image: first frame used")
    if arr.ndim == 3:  # colour (rows, cols, samples): luminance
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        notes.append("colour image converted to luminance")
    if arr.ndim != 2 or arr.size == 0:
        raise PreprocessingError(f"expected a 2-D image, got an array of shape {arr.shape}")
    rows, cols = arr.shape
    st = _State(arr.astype(np.float32), Transform((rows, cols)))
    if orientation is None:
        orientation = canonical_orientation(ds) if ds is not None else IDENTITY
    notes.extend(orientation.notes)
    if not orientation.is_identity:
        _orient(st, orientation)
        notes.append(f"turned to the head-up view ({orientation.name}, from {orientation.source})")
    if ds is not None:
        _padding_to_air(st, ds, notes)
    st.notes = notes
    normalize: PreprocessStep | None = None
    for step in card.preprocessing:
        p = dict(step.params)
        if step.op == "modality_lut":
            if ds is not None and "ModalityLUTSequence" in ds:
                from pydicom.pixels import apply_modality_lut

                st.img = np.asarray(
                    apply_modality_lut(np.rint(st.img).astype(np.int64), ds), dtype=np.float32
                )
            elif ds is not None and ("RescaleSlope" in ds or "RescaleIntercept" in ds):
                slope, intercept, problem = rescale(ds)
                if problem:
                    st.notes.append(f"{problem}: slope 1 / intercept 0 used for detection")
                st.img = (st.img * np.float32(slope) + np.float32(intercept)).astype(np.float32)
            elif ds is None:
                st.notes.append("no header: modality LUT not applied")
        elif step.op == "voi":
            _voi(st, ds, p)
        elif step.op == "invert_monochrome1":
            if ds is not None and str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
                _invert(st)
        elif step.op == "invert":
            _invert(st)
        elif step.op == "equalize_histogram":
            _equalize(st, int(p.get("bins", 256)))
        elif step.op == "normalize":
            normalize = step
        else:
            _geometric(st, step, card)

    img = st.img
    H, W = card.input.height, card.input.width
    if img.shape != (H, W):
        raise PreprocessingError(
            f"image is {img.shape[0]}x{img.shape[1]} after preprocessing but the model takes {H}x{W}: "
            "add a resize or letterbox step to the card"
        )
    tensor = np.repeat(img[None], card.input.channels, axis=0) if card.input.channels > 1 else img[None]
    tensor = tensor.astype(np.float32, copy=False)
    if normalize is not None:
        p = dict(normalize.params)
        scale = float(p.get("scale", 1.0))
        mean = np.asarray(p.get("mean", [0.0]), dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(p.get("std", [1.0]), dtype=np.float32).reshape(-1, 1, 1)
        if mean.shape[0] not in (1, tensor.shape[0]) or std.shape[0] not in (1, tensor.shape[0]):
            raise PreprocessingError(
                f"normalize has {mean.shape[0]} means / {std.shape[0]} stds for {tensor.shape[0]} channels"
            )
        tensor = (tensor * scale - mean) / std
    if card.input.dtype == "uint8":
        tensor = np.clip(np.rint(tensor), 0, 255).astype(np.uint8)
    return PreparedImage(np.ascontiguousarray(tensor), st.transform, tuple(st.notes))
