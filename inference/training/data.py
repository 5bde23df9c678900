"""Labelled datasets for training and evaluation: simulator output, YOLO txt, COCO JSON and ``labels.json``.

Every loader returns ``Sample`` records whose boxes are in ORIGINAL pixel coordinates of the image (SCOORD corners,
(0, 0) at the top-left corner of the first pixel, see ``inference.types``). Class names are upper-cased and must be
one of ``CLASSES``; boxes of other classes are skipped and counted in ``DatasetInfo.skipped``.

Formats:

* simulator output: a folder of ``<name>.dcm`` with a sidecar ``<name>.json`` holding the truth regions
  (``regions: [{label, box_px: [x_min, y_min, x_max, y_max], visible_fraction}]``);
* YOLO txt: ``images/**/<name>.<png|jpg|...>`` and ``labels/**/<name>.txt`` with lines ``class cx cy w h``
  normalised to [0, 1]; class names from ``data.yaml``/``dataset.yaml`` (``names`` list or dict),
  ``classes.txt`` or ``obj.names``;
* COCO JSON: ``images``/``annotations``/``categories``; ``bbox`` is ``[x, y, width, height]`` in pixels;
  ``iscrowd: 1`` or ``ignore: 1`` annotations are ignore regions;
* ``labels.json`` (as in ``../shared/realdata``): inclusive pixel-centre boxes; confidence ``low`` boxes are
  ignore regions.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from inference.training.metrics import GroundTruth
from inference.types import Box

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("HEAD", "SPINE", "CHEST", "ABDOMEN", "PELVIS")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# A simulated region counts as present when at least this fraction of it is in the field; between IGNORE_BELOW and
# this it is an ignore region (neither required nor penalised); below it the region is absent.
PRESENT_FRACTION = 0.4
IGNORE_BELOW = 0.15
# mix of simulated kinds (fractions); lateral localizers are rarer than frontal ones
SIM_KINDS: tuple[tuple[str, float], ...] = (("ct_frontal", 0.45), ("ct_lateral", 0.2), ("dx", 0.35))
VAL_SEED_OFFSET = 1_000_000  # held-out simulated cases use seeds from here on


class DatasetError(ValueError):
    """A dataset that cannot be read, with the file and the reason."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: a DICOM file or an image file, with its ground truth in original pixels."""

    key: str
    path: Path
    truths: tuple[GroundTruth, ...]
    rows: int
    columns: int
    view: str = "unknown"

    @property
    def is_dicom(self) -> bool:
        return self.path.suffix.lower() not in IMAGE_SUFFIXES


@dataclass
class DatasetInfo:
    """What a loader read: format name and counts of skipped boxes per unknown class."""

    format: str
    root: Path
    skipped: Counter = field(default_factory=Counter)


def _norm_label(name: str, info: DatasetInfo) -> str | None:
    up = str(name).strip().upper()
    if up in CLASSES:
        return up
    info.skipped[up] += 1
    return None


def _clip_box(box: tuple[float, float, float, float], columns: int, rows: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    x0, x1 = sorted((min(max(x0, 0.0), columns), min(max(x1, 0.0), columns)))
    y0, y1 = sorted((min(max(y0, 0.0), rows), min(max(y1, 0.0), rows)))
    return (x0, y0, x1, y1)


def _image_size(path: Path) -> tuple[int, int]:
    """(rows, columns) of an image file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc


# ---------------------------------------------------------------------------------------------------- YOLO txt


def _yolo_class_names(root: Path) -> list[str]:
    for name in ("data.yaml", "dataset.yaml", "data.yml"):
        p = root / name
        if p.is_file():
            doc = yaml.safe_load(p.read_text()) or {}
            names = doc.get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=int)]
            if isinstance(names, list):
                return [str(n) for n in names]
            raise DatasetError(f"{p}: no 'names' list or mapping")
    for name in ("classes.txt", "obj.names"):
        p = root / name
        if p.is_file():
            return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    raise DatasetError(f"{root}: YOLO dataset without class names (data.yaml, classes.txt or obj.names)")


def load_yolo(root: Path) -> tuple[list[Sample], DatasetInfo]:
    """A YOLO txt dataset: ``root/images/**`` and ``root/labels/**`` (same relative paths, ``.txt``)."""
    root = Path(root)
    info = DatasetInfo("yolo", root)
    names = _yolo_class_names(root)
    img_dir = root / "images"
    lbl_dir = root / "labels"
    if not img_dir.is_dir() or not lbl_dir.is_dir():
        raise DatasetError(f"{root}: a YOLO dataset needs images/ and labels/ folders")
    samples: list[Sample] = []
    for img in sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rel = img.relative_to(img_dir).with_suffix(".txt")
        txt = lbl_dir / rel
        rows, cols = _image_size(img)
        truths: list[GroundTruth] = []
        if txt.is_file():  # no label file: an image without any region (a negative)
            for n, line in enumerate(txt.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 5:
                    raise DatasetError(f"{txt}:{n}: expected 'class cx cy w h', got {line!r}")
                try:
                    cls = int(parts[0])
                    cx, cy, w, h = (float(v) for v in parts[1:5])
                except ValueError as exc:
                    raise DatasetError(f"{txt}:{n}: not numbers: {line!r}") from exc
                if not 0 <= cls < len(names):
                    raise DatasetError(f"{txt}:{n}: class index {cls} outside the {len(names)} names")
                label = _norm_label(names[cls], info)
                if label is None:
                    continue
                box = ((cx - w / 2) * cols, (cy - h / 2) * rows, (cx + w / 2) * cols, (cy + h / 2) * rows)
                truths.append(GroundTruth(label, _clip_box(box, cols, rows)))
        samples.append(Sample(str(img.relative_to(root)), img, tuple(truths), rows, cols))
    if not samples:
        raise DatasetError(f"{img_dir}: no images")
    return samples, info


# ---------------------------------------------------------------------------------------------------- COCO JSON


def load_coco(json_path: Path, image_root: Path | None = None) -> tuple[list[Sample], DatasetInfo]:
    """A COCO JSON file; image ``file_name`` is relative to ``image_root`` (default: the JSON's folder, then its
    ``images/`` subfolder)."""
    json_path = Path(json_path)
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{json_path}: cannot read COCO JSON ({exc})") from exc
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise DatasetError(f"{json_path}: not COCO JSON (no '{key}')")
    info = DatasetInfo("coco", json_path)
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    by_image: dict[int, list[GroundTruth]] = {im["id"]: [] for im in doc["images"]}
    meta = {im["id"]: im for im in doc["images"]}
    for ann in doc["annotations"]:
        if ann["image_id"] not in meta:
            raise DatasetError(f"{json_path}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}")
        if ann["category_id"] not in cats:
            raise DatasetError(f"{json_path}: annotation {ann.get('id')} has unknown category {ann['category_id']}")
        label = _norm_label(cats[ann["category_id"]], info)
        if label is None:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        im = meta[ann["image_id"]]
        box = _clip_box((x, y, x + w, y + h), int(im["width"]), int(im["height"]))
        ignore = bool(ann.get("iscrowd", 0) or ann.get("ignore", 0))
        by_image[ann["image_id"]].append(GroundTruth(label, box, ignore))
    roots = [Path(image_root)] if image_root else [json_path.parent, json_path.parent / "images"]
    samples: list[Sample] = []
    for iid, im in meta.items():
        path = next((r / im["file_name"] for r in roots if (r / im["file_name"]).is_file()), None)
        if path is None:
            raise DatasetError(f"{json_path}: image {im['file_name']!r} not found under {', '.join(map(str, roots))}")
        samples.append(Sample(im["file_name"], path, tuple(by_image[iid]), int(im["height"]), int(im["width"])))
    return samples, info


# ---------------------------------------------------------------------------------------------------- labels.json


def load_labels_json(path: Path) -> tuple[list[Sample], DatasetInfo]:
    """A ``labels.json`` like ``../shared/realdata/labels.json`` (images in the same folder)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        images = doc["images"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a labels.json with an 'images' list ({exc})") from exc
    info = DatasetInfo("labels.json", path)
    samples = []
    for im in images:
        f = path.parent / im["file"]
        if not f.is_file():
            raise DatasetError(f"{path}: image file {im['file']!r} not found")
        truths = []
        for b in im.get("boxes", []):
            label = _norm_label(b["label"], info)
            if label is None:
                continue
            box = Box.from_inclusive_centres(*(int(v) for v in b["box"])).as_tuple()
            truths.append(GroundTruth(label, box, ignore=b.get("confidence") == "low"))
        samples.append(Sample(im["file"], f, tuple(truths), int(im["rows"]), int(im["columns"]),
                              str(im.get("view", "unknown"))))
    return samples, info


# ---------------------------------------------------------------------------------------------------- simulator


def truths_from_regions(regions: Sequence[dict], columns: int, rows: int) -> tuple[GroundTruth, ...]:
    """Ground truth from simulator regions (dicts with label, box_px, visible_fraction).

    Regions with ``visible_fraction >= PRESENT_FRACTION`` are required; between ``IGNORE_BELOW`` and that they are
    ignore regions; below they are absent (too little is in the field to call it).
    """
    out = []
    for r in regions:
        label = str(r["label"]).upper()
        if label not in CLASSES:
            continue
        frac = float(r.get("visible_fraction", 1.0))
        box = r.get("box_px")
        if box is None or frac < IGNORE_BELOW:
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        box = _clip_box((x0, y0, x1, y1), columns, rows)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue
        out.append(GroundTruth(label, box, ignore=frac < PRESENT_FRACTION))
    return tuple(out)


def load_simulated_dir(root: Path) -> tuple[list[Sample], DatasetInfo]:
    """A folder of simulated ``.dcm`` files with sidecar ``.json`` truth (``dicom-node simulate`` output)."""
    root = Path(root)
    info = DatasetInfo("simulated", root)
    samples = []
    for dcm in sorted(root.rglob("*.dcm")):
        side = dcm.with_suffix(".json")
        if not side.is_file():
            continue
        try:
            doc = json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{side}: invalid JSON ({exc})") from exc
        truth = doc.get("truth", doc)
        geom = truth.get("geometry") or {}
        rows = int(geom.get("rows") or truth.get("rows") or 0)
        cols = int(geom.get("columns") or truth.get("columns") or 0)
        if not rows or not cols:
            import pydicom

            ds = pydicom.dcmread(dcm, stop_before_pixels=True)
            rows, cols = int(ds.Rows), int(ds.Columns)
        regions = truth.get("regions")
        if regions is None:
            raise DatasetError(f"{side}: no 'regions' list")
        view = str(geom.get("view") or truth.get("kind") or "unknown")
        samples.append(Sample(str(dcm.relative_to(root)), dcm, truths_from_regions(regions, cols, rows), rows, cols,
                              view))
    if not samples:
        raise DatasetError(f"{root}: no .dcm files with sidecar .json truth")
    return samples, info


def sim_plan(n: int, seed0: int) -> list[tuple[int, str]]:
    """(seed, kind) of ``n`` simulated cases; kinds follow SIM_KINDS deterministically."""
    rng = np.random.default_rng(seed0 + 7)
    kinds = [k for k, _ in SIM_KINDS]
    p = np.array([w for _, w in SIM_KINDS])
    return [(seed0 + i, str(kinds[int(j)])) for i, j in enumerate(rng.choice(len(kinds), size=n, p=p / p.sum()))]


def sim_randomize(seed: int, kind: str) -> dict:
    """The simulator's domain-randomisation knobs for one training case (drawn from ``seed``)."""
    rng = np.random.default_rng([seed, 4242])
    r: dict = {
        "strength": float(rng.uniform(0.3, 1.0)),
        "table": bool(rng.random() < 0.85),
        "girth": float(np.clip(rng.lognormal(0.0, 0.4), 0.5, 2.5)),
        "roll_deg": float(rng.normal(0.0, 4.0)),
        "yaw_deg": float(rng.normal(0.0, 2.5)),
    }
    if kind == "dx":
        r["arms"] = str(rng.choice(["down", "up", "none"], p=[0.6, 0.25, 0.15]))
        r["exam"] = str(rng.choice(["chest", "abdomen", "pelvis"], p=[0.5, 0.2, 0.3]))
        r["collimation"] = float(rng.uniform(0.6, 1.0))
    else:
        r["arms"] = str(rng.choice(["up", "down", "none"], p=[0.6, 0.3, 0.1]))
        r["crop_mm"] = float(rng.uniform(20.0, 120.0))
    return r


def write_simulated_dataset(out_dir: Path, n: int, seed0: int = VAL_SEED_OFFSET, size: int = 320) -> list[Path]:
    """Write ``n`` simulated cases (``.dcm`` + sidecar ``.json``) with the training mix and randomisation."""
    from inference.simulator import simulate_case, write_case

    out = []
    for seed, kind in sim_plan(n, seed0):
        case = simulate_case(seed, kind=kind, randomize=sim_randomize(seed, kind), size=size or None)
        out.append(write_case(case, out_dir)[0])
    return out


def load_dataset(path: Path) -> tuple[list[Sample], DatasetInfo]:
    """Load any supported dataset, detecting the format from what is there."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: expected a COCO JSON or labels.json file ({exc})") from exc
        if isinstance(doc, dict) and "annotations" in doc:
            return load_coco(path)
        if isinstance(doc, dict) and "images" in doc:
            return load_labels_json(path)
        raise DatasetError(f"{path}: neither COCO JSON (annotations) nor labels.json (images)")
    if (path / "labels.json").is_file():
        return load_labels_json(path / "labels.json")
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return load_yolo(path)
    cocos = sorted(path.glob("*.json"))
    for c in cocos:
        try:
            doc = json.loads(c.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict) and "annotations" in doc and "categories" in doc:
            return load_coco(c)
    if any(path.rglob("*.dcm")):
        return load_simulated_dir(path)
    raise DatasetError(
        f"{path}: not a recognised dataset (simulated .dcm+.json, YOLO images/+labels/, COCO JSON, labels.json)"
    )


def read_image_file(path: Path) -> np.ndarray:
    """A non-DICOM image file as a 2-D float32 array (grayscale; colour images are converted with ITU-R 601-2)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I", "F"):
                return np.asarray(im, dtype=np.float32)
            return np.asarray(im.convert("L"), dtype=np.float32)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc
