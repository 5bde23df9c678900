"""The comparison picture of docs/SIMULATOR.md: ``python -m inference.simulator.figure OUT.png [--no-boxes]``.

Real localizers / radiographs from the shared real-data folder (read only, rescaled, 1-99 percentile window,
MONOCHROME1 inverted) beside simulated ones with their truth boxes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw

from inference.simulator import SimCase, simulate_case, simulate_pair

REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"
COLOURS = {"HEAD": "red", "SPINE": "yellow", "CHEST": "dodgerblue", "ABDOMEN": "lime", "PELVIS": "magenta"}


def _to_image(a: np.ndarray, mono1: bool, height: int) -> tuple[Image.Image, float]:
    a = a.astype(float)
    lo, hi = np.percentile(a, [1, 99])
    im = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
    if mono1:
        im = 1 - im
    img = Image.fromarray((im * 255).astype(np.uint8)).convert("RGB")
    scale = height / a.shape[0]
    return img.resize((int(round(img.width * scale)), height), Image.Resampling.LANCZOS), scale


def real_image(name: str, height: int = 420) -> Image.Image:
    ds = pydicom.dcmread(REALDATA / name)
    return _to_image(ds.pixel_array, ds.PhotometricInterpretation == "MONOCHROME1", height)[0]


def sim_image(case: SimCase, boxes: bool = True, height: int = 420) -> Image.Image:
    ds = case.dataset
    img, s = _to_image(ds.pixel_array, ds.PhotometricInterpretation == "MONOCHROME1", height)
    if boxes:
        d = ImageDraw.Draw(img)
        for r in case.truth.regions:
            b = r.box_px
            d.rectangle([b.x_min * s, b.y_min * s, b.x_max * s - 1, b.y_max * s - 1], outline=COLOURS[r.label],
                        width=2)
    return img


def _row(items: list[tuple[Image.Image, str]], title_h: int = 20) -> Image.Image:
    width = sum(i.width for i, _ in items) + 8 * (len(items) - 1)
    out = Image.new("RGB", (width, max(i.height for i, _ in items) + title_h), "white")
    d = ImageDraw.Draw(out)
    x = 0
    for im, title in items:
        out.paste(im, (x, title_h))
        d.text((x + 4, 4), title, fill="black")
        x += im.width + 8
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--no-boxes", action="store_true")
    args = ap.parse_args(argv)
    boxes = not args.no_boxes
    look = {"latitude": 0.35}  # the dynamic-range compression of the training mix (default 0: calibrated rows)
    c1 = simulate_case(1, profile="philips", randomize={"protocol": "chest_abdomen_pelvis", "arms": "up", **look})
    c2 = simulate_case(2, profile="philips", randomize={"protocol": "abdomen_pelvis", "arms": "up", **look})
    fr, la = simulate_pair(5, profile="siemens",
                           randomize={"protocol": "chest_abdomen_pelvis", "arms": "down", **look})
    dx = simulate_case(3, kind="dx", profile="canon_dx", randomize={"exam": "chest", **look})
    top = _row([
        (real_image("loc_philips_MAROTECH_CT_JP2Lossy.dcm"), "REAL Philips localizer (CAP, arms up)"),
        (sim_image(c1, boxes), "SIM philips-like CAP, arms up"),
        (real_image("loc_philips_surview_fodicom_GH342.dcm"), "REAL Philips surview (abdomen/pelvis)"),
        (sim_image(c2, boxes), "SIM abdomen/pelvis"),
    ])
    bottom = _row([
        (sim_image(fr, boxes), "SIM siemens-like AP, arms down"),
        (sim_image(la, boxes), "SIM lateral, same subject"),
        (real_image("dx_canon_chest_PA_pydicom966_fixed.dcm"), "REAL Canon DX chest PA"),
        (sim_image(dx, boxes), "SIM DX chest PA (MONOCHROME1)"),
    ])
    out = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height + 10), "white")
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height + 10))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
