"""`dicom-node measure FILE.dcm [--boxes JSON | --labels labels.json] [--config node.yaml] [--json]`.

Prints the image geometry (level, isocenter and its source, view, notes) and, for the given boxes, the per-region
measurements (sizes, centres, isocenter offsets with the table move, Dw, SSDE, DLP/DAP shares). Boxes JSON: a
list of ``{"label": "CHEST", "box": [x0, y0, x1, y1]}`` in SCOORD pixel coordinates (corner of the first pixel =
(0, 0)); ``--labels`` takes the real-data ``labels.json`` (inclusive pixel-centre boxes) and picks the entry of
FILE by name. No PHI is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from dicom_node.config import ConfigError, load_config
from inference.geometry import table_move_instruction
from inference.measure import MeasuredImage, measure_image
from inference.types import Box, CodedConcept, Detection, ModelIdentity, QuantityKind
from nodecore.config_schema import MeasurementSettings

_MANUAL = ModelIdentity(name="manual boxes", version="1")


def add_measure_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="DICOM file (CT localizer or radiograph)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--boxes", type=Path, help='JSON list of {"label", "box": [x0, y0, x1, y1]} in SCOORD pixels')
    src.add_argument("--labels", type=Path, help="labels.json with inclusive pixel-centre boxes (real-data format)")
    p.add_argument("--config", type=Path, help="node configuration: its measurement section (calibrations, options)")
    p.add_argument("--ctdivol", type=float, help="study CTDIvol in mGy (default: CTDIvol of the file, if any)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _detections_from_boxes(path: Path) -> list[Detection]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read boxes JSON {path}: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"boxes JSON {path} must be a list of {{label, box}} objects")
    out = []
    for i, item in enumerate(data):
        try:
            label = str(item["label"]).upper()
            x0, y0, x1, y1 = (float(v) for v in item["box"])
            score = float(item.get("score", 1.0))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"boxes JSON item {i}: expected {{'label': str, 'box': [x0, y0, x1, y1]}}") from None
        out.append(Detection(label, CodedConcept("", "", label), score, Box(x0, y0, x1, y1), _MANUAL))
    return out


def _detections_from_labels(path: Path, file: Path) -> list[Detection]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read labels {path}: {exc}") from None
    entry = next((im for im in data.get("images", []) if im.get("file") == file.name), None)
    if entry is None:
        raise ValueError(f"{path} has no entry for {file.name}")
    return [
        Detection(b["label"].upper(), CodedConcept("", "", b["label"]), 1.0, Box.from_inclusive_centres(*b["box"]),
                  ModelIdentity("labels.json", "1"))
        for b in entry.get("boxes", [])
    ]


def load_pixels(ds: pydicom.Dataset) -> tuple[np.ndarray | None, str]:
    """Modality-LUT-applied float32 pixels, or None and why (undecodable transfer syntax, ...)."""
    from pydicom.pixels import apply_modality_lut

    try:
        return apply_modality_lut(ds.pixel_array, ds).astype(np.float32), ""
    except Exception as exc:  # any decoder failure: measure without pixels
        return None, f"pixels not decoded ({type(exc).__name__}): water-equivalent quantities unavailable"


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def table_moves(m: MeasuredImage) -> dict[str, list[str]]:
    """Per region, the table moves that bring its centre to the isocenter (from the offsets that were computed)."""
    pos = m.geometry.patient_position if m.geometry else ""
    out: dict[str, list[str]] = {}
    for r in m.regions:
        moves = []
        lat = r.get(QuantityKind.ISO_OFFSET_LATERAL)
        ver = r.get(QuantityKind.ISO_OFFSET_VERTICAL)
        if lat is not None:
            moves.append(table_move_instruction(lat.value, (1.0, 0.0, 0.0), pos))
        if ver is not None:
            moves.append(table_move_instruction(ver.value, (0.0, 1.0, 0.0), pos) + (" (estimate)" if ver.estimated else ""))
        out[r.detection.label] = moves
    return out


def _fmt(q: Any) -> str:
    u = f" +- {q.uncertainty:.2g}" if q.uncertainty is not None else ""
    est = " [estimated]" if q.estimated else ""
    return f"{q.kind.value:28s} {q.value:10.2f} {q.unit:7s}{u}{est}  ({q.method})"


def run_measure(args: argparse.Namespace) -> int:
    try:
        ds = pydicom.dcmread(args.file)
    except Exception as exc:
        print(f"dicom-node measure: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    settings = MeasurementSettings()
    if args.config:
        try:
            settings = load_config(args.config).measurement
        except ConfigError as exc:
            print(f"dicom-node measure: {exc}", file=sys.stderr)
            return 2
    try:
        if args.boxes:
            dets = _detections_from_boxes(args.boxes)
        elif args.labels:
            dets = _detections_from_labels(args.labels, args.file)
        else:
            dets = []
    except ValueError as exc:
        print(f"dicom-node measure: {exc}", file=sys.stderr)
        return 2
    pixels, pixel_note = load_pixels(ds) if dets else (None, "")
    m = measure_image(ds, dets, pixels=pixels, settings=settings, ctdivol_mgy=args.ctdivol)
    notes = list(m.notes) + ([pixel_note] if pixel_note else [])
    moves = table_moves(m)
    if args.json:
        doc = _jsonable(m)
        doc["notes"] = notes
        doc["table_moves"] = moves
        print(json.dumps(doc, indent=1))
        return 0
    g = m.geometry
    assert g is not None
    print(f"file: {args.file.name}")
    print(f"geometry: {g.describe()}")
    print(f"  level: {m.geometry_level}   view: {m.view} ({g.view_source or 'undetermined'})")
    if g.sod_mm is not None or g.sid_mm is not None:
        print(f"  SOD: {g.sod_mm} mm   SID: {g.sid_mm} mm")
    if m.isocenter_lps_mm is not None:
        iso = ", ".join(f"{v:.1f}" for v in m.isocenter_lps_mm)
        print(f"  isocenter (LPS mm): ({iso})  from: {m.isocenter_source}")
    for n in notes:
        print(f"  note: {n}")
    for r in m.regions:
        b = r.detection.box
        print(f"\n{r.detection.label}  box [{b.x_min:.1f}, {b.y_min:.1f}, {b.x_max:.1f}, {b.y_max:.1f}] px")
        for q in r.quantities:
            print("  " + _fmt(q))
        for kind, why in r.unavailable:
            print(f"  {kind.value:28s} unavailable: {why}")
        for mv in moves.get(r.detection.label, []):
            print(f"  table: {mv}")
    for q in m.image_quantities:
        print("\nimage: " + _fmt(q))
    return 0
