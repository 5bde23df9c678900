"""Display rendering for the secondary capture: windowing, and boxes, labels, isocenter and legend burned in.

Pixel coordinates follow the project convention (SCOORD: (0, 0) is the top-left corner of the first pixel), so a
box (x0, y0, x1, y1) covers columns x0 .. x1 - 1; it is drawn on the pixels it encloses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from inference.types import Box

# Readable on grey images, distinct from each other (RGB).
LABEL_COLOURS = {
    "HEAD": (255, 200, 0),
    "SPINE": (0, 220, 255),
    "CHEST": (255, 80, 80),
    "ABDOMEN": (80, 255, 80),
    "PELVIS": (255, 100, 255),
}
DEFAULT_COLOUR = (255, 255, 255)
ISOCENTER_COLOUR = (255, 255, 0)


def colour_for(label: str) -> tuple[int, int, int]:
    return LABEL_COLOURS.get(label.upper(), DEFAULT_COLOUR)


@dataclass(frozen=True)
class Window:
    """VOI window in modality (rescaled) units; ``source`` says where it came from."""

    center: float
    width: float
    source: str  # "header" or "percentile 1-99"


def modality_values(pixels: np.ndarray, header: Dataset) -> np.ndarray:
    """Apply Rescale Slope/Intercept (float32)."""
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    out = pixels.astype(np.float32, copy=False)
    if slope != 1.0 or intercept != 0.0:
        out = out * np.float32(slope) + np.float32(intercept)
    return out


def choose_window(values: np.ndarray, header: Dataset) -> Window:
    """The header's first window if it covers the data (>= 5 % of pixels inside), else the 1-99 percentiles."""
    wc, ww = header.get("WindowCenter"), header.get("WindowWidth")
    if wc is not None and ww is not None:
        c = float(wc[0] if isinstance(wc, Sequence) and not isinstance(wc, str) else wc)
        w = float(ww[0] if isinstance(ww, Sequence) and not isinstance(ww, str) else ww)
        if w > 1:
            sample = values[:: max(1, values.shape[0] // 256), :: max(1, values.shape[1] // 256)]
            inside = np.mean((sample > c - w / 2) & (sample < c + w / 2))
            if inside >= 0.05:
                return Window(c, w, "header")
    sample = values[:: max(1, values.shape[0] // 512), :: max(1, values.shape[1] // 512)]
    lo, hi = np.percentile(sample, [1.0, 99.0])
    if hi <= lo:
        hi = lo + 1.0
    return Window(float((lo + hi) / 2), float(hi - lo), "percentile 1-99")


def to_display(pixels: np.ndarray, header: Dataset) -> tuple[np.ndarray, Window]:
    """8-bit display grey levels (MONOCHROME1 inverted so that bright = dense, as a viewer shows it)."""
    if pixels.ndim != 2:
        raise ValueError(f"expected one grayscale frame (rows, columns), got shape {pixels.shape}")
    values = modality_values(pixels, header)
    win = choose_window(values, header)
    lo = win.center - win.width / 2
    grey = np.clip((values - np.float32(lo)) * np.float32(255.0 / win.width), 0, 255).astype(np.uint8)
    if str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 255 - grey
    return grey, win


@dataclass(frozen=True)
class DrawRegion:
    label: str
    box: Box
    caption: str  # short text drawn at the box, e.g. "CHEST 93%"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` shortened with "..." so that it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 4 and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def render_annotated(
    grey: np.ndarray,
    regions: Sequence[DrawRegion],
    legend: Sequence[str],
    isocenter_px: tuple[float, float] | None = None,
    isocenter_axis: tuple[float, float] | None = None,
) -> np.ndarray:
    """RGB uint8 image: ``grey`` with boxes, captions, an isocenter marker (point + line along ``isocenter_axis``,
    a unit direction in pixel space) and a legend box in the bottom-left corner."""
    rows, cols = grey.shape
    img = Image.fromarray(grey, mode="L").convert("RGB")
    draw = ImageDraw.Draw(img, "RGBA")
    scale = max(rows, cols)
    line = max(1, round(scale / 400))
    font = _font(max(11, round(scale / 45)))
    small = _font(max(10, round(scale / 60)))
    for r in regions:
        colour = colour_for(r.label)
        x0, y0, x1, y1 = r.box.as_tuple()
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=line)
        tx, ty = x0 + 2 * line, y0 + 2 * line
        bbox = draw.textbbox((tx, ty), r.caption, font=font)
        draw.rectangle(bbox, fill=(0, 0, 0, 160))
        draw.text((tx, ty), r.caption, fill=colour, font=font)
    if isocenter_px is not None:
        cx, cy = isocenter_px
        if isocenter_axis is not None:
            ax, ay = isocenter_axis
            reach = 2.0 * scale
            draw.line([cx - ax * reach, cy - ay * reach, cx + ax * reach, cy + ay * reach],
                      fill=ISOCENTER_COLOUR + (170,), width=line)
        arm = max(6, scale // 60)
        draw.line([cx - arm, cy, cx + arm, cy], fill=ISOCENTER_COLOUR, width=line + 1)
        draw.line([cx, cy - arm, cx, cy + arm], fill=ISOCENTER_COLOUR, width=line + 1)
        draw.text((cx + arm + 2, cy + 2), "isocenter", fill=ISOCENTER_COLOUR, font=small)
    if legend:  # bottom-left corner: the top usually holds the first region's caption
        pad = 3 * line
        legend = [_fit(draw, t, small, cols - 2 * pad) for t in legend]
        heights = [draw.textbbox((0, 0), t, font=small)[3] + line for t in legend]
        width = max(draw.textbbox((0, 0), t, font=small)[2] for t in legend)
        top = max(0, rows - sum(heights) - 2 * pad)
        draw.rectangle([0, top, min(cols - 1, width + 2 * pad), rows - 1], fill=(0, 0, 0, 170))
        y = top + pad
        for text, hgt in zip(legend, heights, strict=True):
            draw.text((pad, y), text, fill=colour_for(text.split(" ", 1)[0]), font=small)
            y += hgt
    return np.asarray(img, dtype=np.uint8)
