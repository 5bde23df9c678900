"""Canonical in-plane orientation of projection images (CT localizers, radiographs) before detection.

Scanners store localizers and radiographs in any of the 8 in-plane orientations (4 rotations x mirror): a Toshiba
lateral scanogram with Image Orientation (Patient) rows [0, 0, -1], columns [0, 1, 0] has the head on the image's
left. The detector was trained on head-up images (the simulator's convention): rows towards the patient's LEFT and
columns towards the FEET on frontal views (Patient Orientation L\\F), rows towards POSTERIOR and columns towards the
FEET on lateral views (P\\F). ``canonical_orientation`` says which of the 8 dihedral operations brings a stored
image to that view, from (best first):

1. Image Orientation (Patient) (0020,0037): exact directions in the patient frame (CT localizers);
2. Patient Orientation (0020,0020): the row and column directions as letters (radiographs);
3. the route's ``radiograph_orientation`` setting: the Patient Orientation assumed for images whose header gives
   neither (e.g. ``L\\F``);
4. none of these: the image is taken as stored (noted).

Patient Position (0018,5100) is not needed: both orientation attributes are already in the patient's own axes, so
"head up" does not depend on how the patient lay on the table (a prone patient's frontal localizer is turned
exactly as a supine one's).

The operation is recorded in the preprocessing ``Transform`` (``Orientation.step``) and inverted like the resize
and letterbox steps, so boxes land on the STORED pixels and every patient coordinate is unchanged. Each of the 8
operations is: an optional transpose, then an optional left-right flip, then an optional up-down flip.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from inference.geometry import ORIENTATION_LETTERS

_LETTERS = ORIENTATION_LETTERS  # Patient Orientation letters as LPS unit vectors
_FEET = np.array([0.0, 0.0, -1.0])
# Preferred row direction: +x (patient's left) on frontal views, +y (posterior) on lateral ones. Their sum serves
# both: in a frontal plane the row candidates are +-x (the y term is 0) and in a lateral plane +-y.
_ROW_PREFERENCE = np.array([1.0, 1.0, 0.0])

_NAMES = {
    (False, False, False): "identity",
    (False, True, False): "flip left-right",
    (False, False, True): "flip up-down",
    (False, True, True): "rotate 180",
    (True, False, False): "transpose",
    (True, True, False): "rotate 90 clockwise",
    (True, False, True): "rotate 90 counter-clockwise",
    (True, True, True): "transverse",
}


@dataclass(frozen=True)
class Orientation:
    """One of the 8 in-plane operations: transpose, then flip left-right (``flip_x``), then flip up-down.

    ``source`` says which attribute or setting decided it; ``notes`` what was assumed or ignored.
    """

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False
    source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[bool, bool, bool]:
        return (self.transpose, self.flip_x, self.flip_y)

    @property
    def name(self) -> str:
        return _NAMES[self.key]

    @property
    def is_identity(self) -> bool:
        return not any(self.key)

    def apply(self, img: np.ndarray) -> np.ndarray:
        """The stored image (rows, columns[, ...]) turned to the canonical view (a view; exact, no resampling)."""
        out = np.swapaxes(img, 0, 1) if self.transpose else img
        if self.flip_x:
            out = out[:, ::-1]
        if self.flip_y:
            out = out[::-1, :]
        return out

    def output_size(self, rows: int, cols: int) -> tuple[int, int]:
        return (cols, rows) if self.transpose else (rows, cols)

    def directions(self, row_dir: np.ndarray, col_dir: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Directions of increasing column / row index of the turned image, from the stored image's ones."""
        r, c = (col_dir, row_dir) if self.transpose else (row_dir, col_dir)
        return (-r if self.flip_x else r), (-c if self.flip_y else c)

    def inverse(self) -> Orientation:
        """The operation that turns the canonical image back into the stored one."""
        if not self.transpose:
            return Orientation(False, self.flip_x, self.flip_y)
        # (T, fx, fy) maps (x, y) -> (fx(y), fy(x)): its inverse transposes and swaps the flips
        return Orientation(True, self.flip_y, self.flip_x)


IDENTITY = Orientation(source="as stored")
ALL_ORIENTATIONS: tuple[Orientation, ...] = tuple(
    Orientation(t, fx, fy) for t, fx, fy in itertools.product((False, True), repeat=3)
)


def orientation_for(row_dir: Any, col_dir: Any, source: str, notes: tuple[str, ...] = ()) -> Orientation:
    """The operation that brings an image whose rows run along ``row_dir`` and columns along ``col_dir`` (LPS) to
    the canonical head-up view."""
    r, c = np.asarray(row_dir, dtype=float), np.asarray(col_dir, dtype=float)
    best, best_score = ALL_ORIENTATIONS[0], -np.inf
    for o in ALL_ORIENTATIONS:
        rr, cc = o.directions(r, c)
        score = 4.0 * float(cc @ _FEET) + float(rr @ _ROW_PREFERENCE)
        if score > best_score + 1e-9:
            best, best_score = o, score
    return Orientation(*best.key, source=source, notes=notes)


def parse_patient_orientation(value: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Patient Orientation (e.g. ``['L', 'F']``, ``'H\\\\L'``, ``'L,F'``) -> (row, column) unit LPS vectors, or None
    when it is not two valid, non-parallel directions."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(",", "\\").replace("/", "\\").split("\\")]
    else:
        try:
            parts = [str(p) for p in value]
        except TypeError:
            return None
    parts = [p.strip().upper() for p in parts]
    if len(parts) != 2 or not all(parts):
        return None
    vecs = []
    for code in parts:
        if any(ch not in _LETTERS for ch in code):
            return None
        v = np.sum([_LETTERS[ch] for ch in code], axis=0)
        n = float(np.linalg.norm(v))
        if n == 0:
            return None
        vecs.append(v / n)
    if float(np.linalg.norm(np.cross(vecs[0], vecs[1]))) < 0.5:
        return None
    return vecs[0], vecs[1]


def _iop(ds: Dataset) -> tuple[np.ndarray, np.ndarray] | None | str:
    """(row, column) cosines; None when absent; a reason string when present but unusable."""
    if "ImageOrientationPatient" not in ds:
        return None
    try:
        raw = ds.get("ImageOrientationPatient")
        vals = [float(v) for v in raw] if raw not in (None, "") else []
    except Exception as exc:  # pydicom converts DS on access: a malformed value raises here
        return f"Image Orientation (Patient) (0020,0037) cannot be read ({type(exc).__name__})"
    if not vals:
        return None
    if len(vals) != 6 or not all(np.isfinite(vals)):
        return f"Image Orientation (Patient) (0020,0037) has {len(vals)} value(s), expected 6"
    r, c = np.asarray(vals[:3]), np.asarray(vals[3:])
    nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
    if nr < 1e-6 or nc < 1e-6 or abs(float(r @ c)) / (nr * nc) > 1e-3:
        return "Image Orientation (Patient) (0020,0037) is not two orthogonal directions"
    return r / nr, c / nc


def canonical_orientation(ds: Dataset | None, assumed: str | None = None) -> Orientation:
    """Which operation turns ``ds``'s stored pixels to the canonical head-up view (see the module docstring).

    ``assumed``: the route's ``radiograph_orientation`` (a Patient Orientation such as ``L\\F``), used when the
    header gives no orientation. Never raises for missing or malformed attributes (they are noted).
    """
    if ds is None:
        return IDENTITY
    notes: list[str] = []
    iop = _iop(ds)
    if isinstance(iop, tuple):
        return orientation_for(*iop, source="Image Orientation (Patient) (0020,0037)")
    if isinstance(iop, str):
        notes.append(iop + ": not used for the orientation")
    try:
        po_raw = ds.get("PatientOrientation")
    except Exception:  # malformed value: treated as absent
        po_raw = None
    po = parse_patient_orientation(po_raw)
    if po is not None:
        text = "\\".join(str(p) for p in po_raw) if not isinstance(po_raw, str) else po_raw
        return orientation_for(*po, source=f"Patient Orientation (0020,0020) = {text}", notes=tuple(notes))
    if po_raw not in (None, "") and po_raw != []:
        notes.append(f"Patient Orientation (0020,0020) {str(po_raw)[:20]!r} not usable")
    if assumed:
        parsed = parse_patient_orientation(assumed)
        if parsed is not None:
            notes.append(f"orientation not in the header: the route's radiograph_orientation {assumed} is assumed")
            return orientation_for(*parsed, source=f"route setting radiograph_orientation = {assumed}",
                                   notes=tuple(notes))
        notes.append(f"route setting radiograph_orientation {assumed!r} is not a Patient Orientation: ignored")
    notes.append("orientation not in the header (no Image Orientation (Patient) or Patient Orientation): image"
                 " taken as stored (head up assumed)")
    return Orientation(source="as stored (orientation unknown)", notes=tuple(notes))
