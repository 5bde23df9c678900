"""The conformance corpus: real localizers and radiographs of ../shared/realdata re-stored in every in-plane
orientation and with the header faults seen on real scanners and anonymisers (issue 19).

Built at test time (never copied into the repository). Each variant is a complete DICOM file:

* ``orientation``: the stored pixels turned by one of the 8 in-plane operations (``inference.orientation``), with
  Image Position / Orientation (Patient) and Pixel Spacing rewritten so that every physical point is unchanged (the
  new first pixel's centre is where that pixel's centre was; the new row and column directions are the old
  directions of the new pixel axes); radiographs get their Patient Orientation letters rewritten the same way.
  The original (identity) is re-stored too, so all 8 carry bit-identical pixel values;
* ``fault``: one header fault on the original orientation (``FAULTS``).

Every variant gets a new SOP Instance UID derived from the source's and the variant name (a result of one
variant never replaces another's).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from inference.orientation import ALL_ORIENTATIONS, Orientation, parse_patient_orientation
from inference.preprocessing import stored_pixels

# Real files the corpus is built from: the CT localizers, and the radiographs whose orientation is meaningful
# (Patient Orientation present, or a chest/pelvis the route setting can orient).
LOCALIZERS = ("loc_philips_MAROTECH_CT_JP2Lossy.dcm", "loc_philips_surview_fodicom_GH342.dcm")
RADIOGRAPHS = ("dx_canon_chest_PA_pydicom966_fixed.dcm",)

@dataclass(frozen=True)
class Variant:
    source: str  # real file name
    name: str  # e.g. "orient:rotate 90 clockwise" or "fault:no_frame_of_reference"
    path: Path
    orientation: Orientation | None  # the operation applied to the stored pixels (None for fault variants)


def _letters(v: np.ndarray) -> str:
    """Patient Orientation letters of an axis-aligned LPS direction (e.g. (0, 0, -1) -> 'F')."""
    out = ""
    for axis, (plus, minus) in enumerate(("LR", "PA", "HF")):
        if abs(v[axis]) > 0.5:
            out += plus if v[axis] > 0 else minus
    return out


def restore(ds: Dataset, op: Orientation, pixels: np.ndarray) -> Dataset:
    """A copy of ``ds`` whose stored pixels are ``op`` applied to ``pixels``, uncompressed, with consistent
    geometry (every physical point unchanged)."""
    out = Dataset()
    for elem in ds:
        if elem.tag.group == 0x7FE0 or elem.tag == 0x00280301:  # pixel data / burned-in: rewritten below
            continue
        out.add(copy.deepcopy(elem))
    turned = np.ascontiguousarray(op.apply(pixels))
    rows, cols = turned.shape[:2]
    out.Rows, out.Columns = rows, cols
    if "NumberOfFrames" in out:
        del out.NumberOfFrames
    bits = int(ds.BitsAllocated)
    dtype = np.dtype(f"{'i' if int(ds.PixelRepresentation) else 'u'}{bits // 8}").newbyteorder("<")
    out.PixelData = turned.astype(dtype).tobytes()
    out["PixelData"].VR = "OW" if bits > 8 else "OB"
    # which stored (row, column) index lands at new (0, 0), (0, 1), (1, 0)
    idx_r, idx_c = np.indices(pixels.shape[:2])
    src_r, src_c = op.apply(idx_r), op.apply(idx_c)

    def src(i: int, j: int) -> np.ndarray:
        return np.array([src_r[i, j], src_c[i, j]], dtype=float)

    d_row = src(0, 1) - src(0, 0)  # stored index change along the new row (increasing new column)
    d_col = src(1, 0) - src(0, 0)
    if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds and "PixelSpacing" in ds:
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = [float(v) for v in ds.ImageOrientationPatient]
        r, c = np.array(iop[:3]), np.array(iop[3:])
        dy, dx = (float(v) for v in ds.PixelSpacing)

        def point(rc: np.ndarray) -> np.ndarray:
            return ipp + rc[1] * dx * r + rc[0] * dy * c

        p0 = point(src(0, 0))
        vr, vc = point(src(0, 1)) - p0, point(src(1, 0)) - p0
        out.ImagePositionPatient = [_ds(v) for v in p0]
        new_r, new_c = vr / np.linalg.norm(vr), vc / np.linalg.norm(vc)
        out.ImageOrientationPatient = [_ds(v) for v in (*new_r, *new_c)]
        out.PixelSpacing = [_ds(np.linalg.norm(vc)), _ds(np.linalg.norm(vr))]
    elif "PixelSpacing" in ds and op.transpose:
        out.PixelSpacing = list(reversed(list(ds.PixelSpacing)))
    if op.transpose and "ImagerPixelSpacing" in ds:
        out.ImagerPixelSpacing = list(reversed(list(ds.ImagerPixelSpacing)))
    po = ds.get("PatientOrientation")
    if po is not None and po != "" and len(po) == 2:
        parsed = parse_patient_orientation(po)
        if parsed is not None:
            r, c = parsed
            # stored direction of +column = r, of +row = c; the new axes move by d_row / d_col stored indices
            new_r = d_row[1] * r + d_row[0] * c
            new_c = d_col[1] * r + d_col[0] * c
            out.PatientOrientation = [_letters(new_r), _letters(new_c)]
    return out


def _ds(v: float) -> str:
    text = f"{float(v):.10g}"
    return "0" if text in ("-0", "0") else text


def _set_raw(ds: Dataset, keyword: str, vr: str, raw: bytes) -> None:
    """Put a raw (unconverted) value in ``ds``, as a malformed file carries it."""
    tag = Tag(tag_for_keyword(keyword))
    if len(raw) % 2:
        raw += b" "
    ds._dict[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)


def _drop(*keywords: str) -> Callable[[Dataset], None]:
    def f(ds: Dataset) -> None:
        for k in keywords:
            if k in ds:
                delattr(ds, k)
    return f


def _raw(keyword: str, vr: str, raw: bytes) -> Callable[[Dataset], None]:
    return lambda ds: _set_raw(ds, keyword, vr, raw)


# fault name -> (what it does to the header, applies to localizers, applies to radiographs)
FAULTS: dict[str, tuple[Callable[[Dataset], None], bool, bool]] = {
    "no_frame_of_reference": (_drop("FrameOfReferenceUID"), True, False),
    "empty_character_set": (_raw("SpecificCharacterSet", "CS", b""), True, True),
    "unknown_character_set": (_raw("SpecificCharacterSet", "CS", b"ISO_IR 999"), True, True),
    "no_pixel_spacing": (_drop("PixelSpacing", "ImagerPixelSpacing"), True, True),
    "no_image_position": (_drop("ImagePositionPatient"), True, False),
    "no_image_orientation": (_drop("ImageOrientationPatient"), True, False),
    "no_patient_orientation": (_drop("PatientOrientation"), False, True),
    "malformed_pixel_spacing": (_raw("PixelSpacing", "DS", b"abc\\0.9"), True, True),
    "malformed_image_position": (_raw("ImagePositionPatient", "DS", b"1\\abc\\x "), True, False),
    "malformed_table_height": (_raw("TableHeight", "DS", b"abc "), True, False),
    "malformed_rescale": (_raw("RescaleSlope", "DS", b"abc "), True, False),
    "malformed_window": (_raw("WindowCenter", "DS", b"abc "), True, True),
    "malformed_distances": (_raw("DistanceSourceToDetector", "DS", b"1e999"), True, True),
    "anonymised": (_drop("FrameOfReferenceUID", "DistanceSourceToDetector",
                                   "DistanceSourceToPatient", "TableHeight", "PatientPosition"), True, False),
}


def _write(ds: Dataset, path: Path, source_uid: str, name: str) -> None:
    uid = generate_uid(entropy_srcs=[source_uid, name])
    ds.SOPInstanceUID = uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def lateral_from(ds: Dataset) -> Dataset:
    """The header of a frontal localizer rewritten as a lateral one (rows -> posterior, columns -> feet, the fan
    centred on y = 0 as Canon/Toshiba and GE write it), pixels unchanged: a lateral geometry derived from a real
    file (no real lateral localizer is in ../shared/realdata)."""
    out = copy.deepcopy(ds)
    n, step = int(ds.Columns), float(ds.PixelSpacing[1])
    out.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    out.ImagePositionPatient = [0, _ds(-(n // 2) * step), ds.ImagePositionPatient[2]]
    out.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), "lateral"])
    # its own frame: it must not be combined with the frontal it was derived from (same pixels, not a real pair)
    out.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(ds.FrameOfReferenceUID), "lateral"])
    return out


LATERAL_DERIVED = "lateral_from_surview"


def build_corpus(realdata: Path, out: Path) -> list[Variant]:
    """Every variant of every corpus file, written under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    variants: list[Variant] = []
    for name in LOCALIZERS + RADIOGRAPHS:
        ds = pydicom.dcmread(realdata / name)
        variants.extend(_variants_of(ds, name, out, radiograph=name in RADIOGRAPHS))
    lateral = lateral_from(pydicom.dcmread(realdata / LOCALIZERS[1]))
    variants.extend(_variants_of(lateral, LATERAL_DERIVED, out, radiograph=False, faults=False))
    return variants


def _variants_of(ds: Dataset, name: str, out: Path, *, radiograph: bool, faults: bool = True) -> Iterator[Variant]:
    pixels = stored_pixels(ds)
    stem = Path(name).stem
    for op in ALL_ORIENTATIONS:
        vname = f"orient:{op.name}"
        v = restore(ds, op, pixels)
        p = out / f"{stem}__{op.name.replace(' ', '_')}.dcm"
        _write(v, p, str(ds.SOPInstanceUID), vname)
        yield Variant(name, vname, p, op)
    base = restore(ds, Orientation(), pixels)
    for fault, (apply, for_loc, for_rad) in FAULTS.items():
        if not faults or not (for_rad if radiograph else for_loc):
            continue
        v = restore(base, Orientation(), pixels)
        apply(v)
        vname = f"fault:{fault}"
        p = out / f"{stem}__{fault}.dcm"
        _write(v, p, str(ds.SOPInstanceUID), vname)
        yield Variant(name, vname, p, None)
