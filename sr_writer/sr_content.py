"""The TID 1500 content tree of our SRs: its one description, encoded directly as Explicit VR Little Endian bytes.

Tree (docs/RESULTS.md explains each choice, with what OHIF, the cornerstone adapters and the validators need):

* Root (TID 1500): language, device observer (Device UID of the model), procedure reported, image library
  (TID 1600, one entry: the source image with its geometry), Imaging Measurements (empty when nothing was found), a
  Qualitative Evaluations container with TEXT notes (number of regions, geometry level, isocenter source, what could
  not be computed and why).
* Imaging Measurements: one TID 1501 measurement group per region, with nothing else in the container (viewers
  expect coordinates in every group there):
  - Tracking Identifier (cornerstone's RectangleROI identifier, then ours, e.g. "...:RectangleROI:CHEST region 1")
    and a deterministic Tracking UID; finding category, finding and finding site (the model card's concept);
    Algorithm Identification (TID 4019);
  - a Comment (DCM 121106) with the region's display name: what viewers label the region with;
  - the measurements (TID 300, UCUM units, Measurement Method Measured / Estimated), lateral and vertical
    isocenter offsets and area first, each INFERRED FROM one coordinate (TID 320): the first from the box as a
    closed SCOORD POLYLINE on the source image, the others, in a Comprehensive 3D SR with a patient frame, from
    the same box in the patient frame (closed SCOORD3D POLYLINE in the source's Frame of Reference), else from the
    2D box too;
  - image-level quantities (diaphragm level) in the CHEST group (else ABDOMEN, else the first), and TEXT notes.

Encoding: each item is packed with ``struct`` as it will sit in the file, with code-sequence items encoded once and
cached (the same tree built as highdicom template objects took ~150 ms to build and ~80 ms to encode for five
regions; this takes ~10 ms). The result becomes the document's Content Sequence as one raw element: pydicom
parses it only when someone reads it. tests/test_sr.py checks every document against highdicom's reading of it
(``from_dataset``) and the validators (dciodvfy, dsrdump, DicomSRValidator). SCOORD in pixel coordinates with
(0, 0) the top-left corner of the first pixel, SCOORD3D in LPS mm, quantities in their UCUM units.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from highdicom.spatial import are_points_coplanar
from pydicom.charset import convert_encodings, encode_string
from pydicom.sr.codedict import codes
from pydicom.valuerep import DS

from inference.types import Detection, GeometryLevel, ImageMeasurements, QuantityKind
from sr_writer import codes as C
from sr_writer.context import ResultContext
from sr_writer.regions import (
    checked_spec,
    closed_polyline,
    display_names,
    region_pairs,
    table_move_text,
    tracking,
)
from sr_writer.source import SourceHeader

TEXT_MAX = 1024  # UT would allow more; keep notes short

# Tracking Identifier prefix: the cornerstone adapters (OHIF's SR reader) turn a group whose identifier starts with
# it into an editable rectangle measurement; the rest of the identifier is ours ("CHEST region 1").
TRACKING_PREFIX = "Cornerstone3DTools@^0.1.0:RectangleROI:"

MODALITY_MEANING = {"CT": "Computed Tomography", "CR": "Computed Radiography", "DX": "Digital Radiography",
                    "RG": "Radiographic imaging", "RF": "Radio Fluoroscopy", "XA": "X-Ray Angiography",
                    "MG": "Mammography", "IO": "Intra-oral Radiography", "PX": "Panoramic X-Ray"}

# A concept as (code value, scheme designator, meaning, scheme version or None).
Key = tuple[str, str, str, str | None]

_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_ITEM = b"\xfe\xff\x00\xe0"
_PACK_SHORT = struct.Struct("<HH2sH").pack
_PACK_LONG = struct.Struct("<HH2sHI").pack
_PACK_UL = struct.Struct("<I").pack
_PACK_FD = struct.Struct("<d").pack

# Tags (group << 16 | element) of the attributes a content item may carry.
T_CODE_VALUE = 0x00080100
T_SCHEME = 0x00080102
T_SCHEME_VERSION = 0x00080103
T_MEANING = 0x00080104
T_LONG_CODE_VALUE = 0x00080119
T_URN_CODE_VALUE = 0x00080120
T_REF_SOP_CLASS = 0x00081150
T_REF_SOP_INSTANCE = 0x00081155
T_REF_SOP_SEQ = 0x00081199
T_UNITS_SEQ = 0x004008EA
T_RELATIONSHIP = 0x0040A010
T_VALUE_TYPE = 0x0040A040
T_CONCEPT_NAME = 0x0040A043
T_CONTINUITY = 0x0040A050
T_UID = 0x0040A124
T_TEXT = 0x0040A160
T_FLOAT = 0x0040A161
T_CONCEPT_CODE = 0x0040A168
T_MEASURED_VALUE_SEQ = 0x0040A300
T_NUMERIC = 0x0040A30A
T_TEMPLATE_SEQ = 0x0040A504
T_CONTENT_SEQ = 0x0040A730
T_MAPPING_RESOURCE = 0x00080105
T_TEMPLATE_ID = 0x0040DB00
T_GRAPHIC_DATA = 0x00700022
T_GRAPHIC_TYPE = 0x00700023
T_FRAME_OF_REFERENCE = 0x30060024


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One data element (Explicit VR Little Endian); ``value`` already padded to even length."""
    if vr in _LONG_VRS:
        return _PACK_LONG(tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return _PACK_SHORT(tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def item(parts: list[tuple[int, bytes]]) -> bytes:
    """A sequence item of encoded elements, sorted by tag as PS3.5 requires (defined length, like pydicom)."""
    parts.sort(key=_first)
    body = b"".join(p[1] for p in parts)
    return _ITEM + _PACK_UL(len(body)) + body


def _first(part: tuple[int, bytes]) -> int:
    return part[0]


def sequence(tag: int, items: Sequence[bytes]) -> bytes:
    """A sequence element (defined length) of encoded items."""
    body = b"".join(items)
    return _PACK_LONG(tag >> 16, tag & 0xFFFF, b"SQ", 0, len(body)) + body


def ascii_value(value: str, pad: bytes = b" ") -> bytes:
    """CS / DS / UI value bytes (default repertoire), padded to even length."""
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


class Encoder:
    """Text encoding of one document (its Specific Character Set applies to every content item)."""

    def __init__(self, specific_character_set: object) -> None:
        self.encodings = convert_encodings(specific_character_set or "ISO_IR 6")  # type: ignore[arg-type]

    def text(self, value: str) -> bytes:
        """SH / LO / UT value bytes, padded with a space to even length (as pydicom's ``write_text``)."""
        raw = value.encode("ascii") if value.isascii() else encode_string(value, self.encodings)
        return raw + b" " if len(raw) % 2 else raw


def key(concept: Any) -> Key:
    """(value, scheme, meaning, version) of a highdicom CodedConcept, pydicom Code or inference.types concept."""
    scheme = getattr(concept, "scheme_designator", None) or concept.scheme
    version = getattr(concept, "scheme_version", None)
    return str(concept.value), str(scheme), str(concept.meaning), None if version is None else str(version)


@lru_cache(maxsize=4096)
def _code_item(k: Key, charset: tuple[str, ...]) -> bytes:
    value, scheme, meaning, version = k
    if len(meaning) > 64:  # highdicom.sr.CodedConcept raises the same
        raise ValueError("Code meaning can have maximally 64 characters.")
    enc = Encoder(list(charset))
    parts = [(T_SCHEME, element(T_SCHEME, b"SH", enc.text(scheme))),
             (T_MEANING, element(T_MEANING, b"LO", enc.text(meaning)))]
    if len(value) > 16:
        if value.startswith("urn") or "://" in value:
            parts.append((T_URN_CODE_VALUE, element(T_URN_CODE_VALUE, b"UR", enc.text(value))))
        else:
            parts.append((T_LONG_CODE_VALUE, element(T_LONG_CODE_VALUE, b"UC", enc.text(value))))
    else:
        parts.append((T_CODE_VALUE, element(T_CODE_VALUE, b"SH", enc.text(value))))
    if version is not None:
        parts.append((T_SCHEME_VERSION, element(T_SCHEME_VERSION, b"SH", enc.text(version))))
    return item(parts)


@lru_cache(maxsize=4096)
def _code_sequence(tag: int, k: Key, charset: tuple[str, ...]) -> bytes:
    return sequence(tag, [_code_item(k, charset)])


# Concepts of the tree (taken from the highdicom / sr_writer.codes constants the reference builder uses).
N_LANGUAGE = key(codes.DCM.LanguageOfContentItemAndDescendants)
V_ENGLISH_US = ("en-US", "RFC5646", "English (United States)", None)
N_OBSERVER_TYPE = key(codes.DCM.ObserverType)
V_DEVICE = key(codes.DCM.Device)
N_DEVICE_UID = key(codes.DCM.DeviceObserverUID)
N_DEVICE_NAME = key(codes.DCM.DeviceObserverName)
N_DEVICE_MANUFACTURER = key(codes.DCM.DeviceObserverManufacturer)
N_DEVICE_MODEL = key(codes.DCM.DeviceObserverModelName)
N_PROCEDURE = key(codes.DCM.ProcedureReported)
N_REPORT = key(codes.cid7021.ImagingMeasurementReport)
N_IMAGING_MEASUREMENTS = key(codes.DCM.ImagingMeasurements)
N_MEASUREMENT_GROUP = ("125007", "DCM", "Measurement Group", None)
N_TRACKING_ID = ("112039", "DCM", "Tracking Identifier", None)
N_TRACKING_UID = ("112040", "DCM", "Tracking Unique Identifier", None)
N_FINDING_CATEGORY = ("276214006", "SCT", "Finding category", None)
N_FINDING = ("121071", "DCM", "Finding", None)
N_FINDING_SITE = ("363698007", "SCT", "Finding Site", None)
N_ALGORITHM_NAME = ("111001", "DCM", "Algorithm Name", None)
N_ALGORITHM_VERSION = ("111003", "DCM", "Algorithm Version", None)
N_ALGORITHM_PARAMETERS = ("111002", "DCM", "Algorithm Parameters", None)
N_ALGORITHM_FAMILY = ("111000", "DCM", "Algorithm Family", None)
N_MEASUREMENT_METHOD = ("370129005", "SCT", "Measurement Method", None)
N_COMMENT = ("121106", "DCM", "Comment", None)
N_SOURCE = ("260753009", "SCT", "Source", None)
N_IMAGE_LIBRARY = key(codes.DCM.ImageLibrary)
N_IMAGE_LIBRARY_GROUP = key(codes.DCM.ImageLibraryGroup)
N_MODALITY = key(codes.DCM.Modality)
N_FRAME_OF_REFERENCE = key(codes.DCM.FrameOfReferenceUID)
N_ROWS = key(codes.DCM.PixelDataRows)
N_COLUMNS = key(codes.DCM.PixelDataColumns)
N_ORIENTATION_ROW = key(codes.DCM.PatientOrientationRow)
N_ORIENTATION_COLUMN = key(codes.DCM.PatientOrientationColumn)
N_SPACING_H = key(codes.DCM.HorizontalPixelSpacing)
N_SPACING_V = key(codes.DCM.VerticalPixelSpacing)
N_SLICE_THICKNESS = key(codes.DCM.SliceThickness)
N_IPP = tuple(key(c) for c in (codes.DCM.ImagePositionPatientX, codes.DCM.ImagePositionPatientY,
                               codes.DCM.ImagePositionPatientZ))
N_IOP = tuple(key(c) for c in (codes.DCM.ImageOrientationPatientRowX, codes.DCM.ImageOrientationPatientRowY,
                               codes.DCM.ImageOrientationPatientRowZ, codes.DCM.ImageOrientationPatientColumnX,
                               codes.DCM.ImageOrientationPatientColumnY, codes.DCM.ImageOrientationPatientColumnZ))
U_DIRECTION_COSINE = ("{-1:1}", "UCUM", "{-1:1}", None)
V_ANATOMICAL_STRUCTURE = key(codes.SCT.AnatomicalStructure)
K_SPEC = {kind: (key(spec.name), spec.unit) for kind, spec in C.QUANTITY_SPECS.items()}
K_UNIT = {u: key(c) for u, c in C.UNITS.items()}
K_PIXEL_WIDTH, K_PIXEL_HEIGHT = key(C.PIXEL_WIDTH.name), key(C.PIXEL_HEIGHT.name)
K_MEASURED, K_ESTIMATED = key(C.MEASURED), key(C.ESTIMATED)
K_AI = key(C.ARTIFICIAL_INTELLIGENCE)
K_ORIGINAL_SOURCE = key(C.ORIGINAL_SOURCE)
K_QUALITATIVE = key(C.QUALITATIVE_EVALUATIONS)
K_REGION_COUNT = key(C.REGION_COUNT)
K_NOT_COMPUTED, K_NOTE, K_TABLE_MOVE = key(C.NOT_COMPUTED), key(C.NOTE), key(C.TABLE_MOVE)

_REL = {r: element(T_RELATIONSHIP, b"CS", ascii_value(r)) for r in (
    "CONTAINS", "HAS OBS CONTEXT", "HAS CONCEPT MOD", "HAS ACQ CONTEXT", "SELECTED FROM", "HAS PROPERTIES",
    "INFERRED FROM")}
_VT = {v: element(T_VALUE_TYPE, b"CS", ascii_value(v)) for v in (
    "CONTAINER", "TEXT", "CODE", "NUM", "UIDREF", "IMAGE", "SCOORD", "SCOORD3D")}
_CONTINUOUS = element(T_CONTINUITY, b"CS", ascii_value("CONTINUOUS"))


def _template(tid: str) -> bytes:
    return sequence(T_TEMPLATE_SEQ, [item([(T_MAPPING_RESOURCE, element(T_MAPPING_RESOURCE, b"CS", b"DCMR")),
                                           (T_TEMPLATE_ID, element(T_TEMPLATE_ID, b"CS", ascii_value(tid)))])])


_TEMPLATES = {tid: _template(tid) for tid in ("1500", "1501")}


class TreeWriter:
    """Content items of one document, encoded with its character set (see the module docstring)."""

    def __init__(self, specific_character_set: object) -> None:
        self.enc = Encoder(specific_character_set)
        self.charset = tuple(self.enc.encodings)

    def _head(self, relationship: str | None, value_type: str, name: Key | None) -> list[tuple[int, bytes]]:
        parts = [(T_VALUE_TYPE, _VT[value_type])]
        if name is not None:
            parts.append((T_CONCEPT_NAME, _code_sequence(T_CONCEPT_NAME, name, self.charset)))
        if relationship is not None:
            parts.append((T_RELATIONSHIP, _REL[relationship]))
        return parts

    def container(self, relationship: str | None, name: Key, children: Sequence[bytes],
                  template: str | None = None) -> bytes:
        parts = self._head(relationship, "CONTAINER", name)
        parts.append((T_CONTINUITY, _CONTINUOUS))
        if template is not None:
            parts.append((T_TEMPLATE_SEQ, _TEMPLATES[template]))
        if children:
            parts.append((T_CONTENT_SEQ, sequence(T_CONTENT_SEQ, children)))
        return item(parts)

    def text(self, relationship: str, name: Key, value: str) -> bytes:
        parts = self._head(relationship, "TEXT", name)
        parts.append((T_TEXT, element(T_TEXT, b"UT", self.enc.text(value))))
        return item(parts)

    def code(self, relationship: str, name: Key, value: Key) -> bytes:
        parts = self._head(relationship, "CODE", name)
        parts.append((T_CONCEPT_CODE, _code_sequence(T_CONCEPT_CODE, value, self.charset)))
        return item(parts)

    def uidref(self, relationship: str, name: Key, uid: str) -> bytes:
        parts = self._head(relationship, "UIDREF", name)
        parts.append((T_UID, element(T_UID, b"UI", ascii_value(str(uid), b"\x00"))))
        return item(parts)

    def num(self, relationship: str, name: Key, value: float, unit: Key,
            children: Sequence[bytes] = ()) -> bytes:
        """NUM item as highdicom writes it: NumericValue as DS (auto-formatted), FloatingPointValue only for a
        float value (an int gives none)."""
        if not isinstance(value, int | float):
            raise TypeError('Argument "value" must have type "int" or "float".')
        ds = DS(value, auto_format=True)
        text = getattr(ds, "original_string", None) or str(ds)
        mv = [(T_UNITS_SEQ, _code_sequence(T_UNITS_SEQ, unit, self.charset)),
              (T_NUMERIC, element(T_NUMERIC, b"DS", ascii_value(text)))]
        if isinstance(value, float):
            mv.append((T_FLOAT, element(T_FLOAT, b"FD", _PACK_FD(value))))
        parts = self._head(relationship, "NUM", name)
        parts.append((T_MEASURED_VALUE_SEQ, sequence(T_MEASURED_VALUE_SEQ, [item(mv)])))
        if children:
            parts.append((T_CONTENT_SEQ, sequence(T_CONTENT_SEQ, children)))
        return item(parts)

    def image(self, relationship: str, name: Key, sop_class_uid: str, sop_instance_uid: str,
              children: Sequence[bytes] = ()) -> bytes:
        ref = item([(T_REF_SOP_CLASS, element(T_REF_SOP_CLASS, b"UI", ascii_value(str(sop_class_uid), b"\x00"))),
                    (T_REF_SOP_INSTANCE, element(T_REF_SOP_INSTANCE, b"UI",
                                                 ascii_value(str(sop_instance_uid), b"\x00")))])
        parts = self._head(relationship, "IMAGE", name)
        parts.append((T_REF_SOP_SEQ, sequence(T_REF_SOP_SEQ, [ref])))
        if children:
            parts.append((T_CONTENT_SEQ, sequence(T_CONTENT_SEQ, children)))
        return item(parts)

    def scoord(self, relationship: str, graphic_type: str, points: np.ndarray, children: Sequence[bytes]) -> bytes:
        """SCOORD without a concept name (TID 320; pixel coordinates, (column, row) pairs), FL graphic data."""
        parts = self._head(relationship, "SCOORD", None)
        parts.append((T_GRAPHIC_DATA, element(T_GRAPHIC_DATA, b"FL", _float32(points))))
        parts.append((T_GRAPHIC_TYPE, element(T_GRAPHIC_TYPE, b"CS", ascii_value(graphic_type))))
        parts.append((T_CONTENT_SEQ, sequence(T_CONTENT_SEQ, children)))
        return item(parts)

    def scoord3d(self, relationship: str, graphic_type: str, points: np.ndarray,
                 frame_of_reference_uid: str) -> bytes:
        """SCOORD3D without a concept name (TID 320; LPS mm, (x, y, z) triplets) in ``frame_of_reference_uid``;
        a POLYGON must be planar (highdicom's check and message)."""
        if graphic_type == "POLYGON" and not are_points_coplanar(points):
            raise ValueError(f'Graphic data of a 3D scoord of type "{graphic_type}" must contain co-planar points.')
        parts = self._head(relationship, "SCOORD3D", None)
        parts.append((T_GRAPHIC_DATA, element(T_GRAPHIC_DATA, b"FL", _float32(points))))
        parts.append((T_GRAPHIC_TYPE, element(T_GRAPHIC_TYPE, b"CS", ascii_value(graphic_type))))
        parts.append((T_FRAME_OF_REFERENCE, element(T_FRAME_OF_REFERENCE, b"UI",
                                                    ascii_value(str(frame_of_reference_uid), b"\x00"))))
        return item(parts)


def _float32(points: np.ndarray) -> bytes:
    """FL values as pydicom packs them (float64 -> float32, round to nearest; too large raises)."""
    flat = np.asarray(points, dtype=np.float64).ravel()
    if not np.all(np.isfinite(flat)) or np.any(np.abs(flat) > np.finfo(np.float32).max):
        return struct.pack(f"<{flat.size}f", *flat.tolist())  # pydicom's own behaviour (error or inf/nan)
    return flat.astype("<f4").tobytes()


# ------------------------------------------------------------------------------------------------ the tree

# Order of a region's measurements: a viewer labels the region with its first few (OHIF shows five lines: the
# Comment, then these), so the centring figures and the area lead; the rest follow in this order.
DISPLAY_ORDER: tuple[QuantityKind, ...] = (
    QuantityKind.ISO_OFFSET_LATERAL, QuantityKind.ISO_OFFSET_VERTICAL, QuantityKind.ELLIPSE_AREA,
    QuantityKind.BOX_WIDTH, QuantityKind.BOX_HEIGHT, QuantityKind.WATER_EQUIVALENT_DIAMETER,
    QuantityKind.EFFECTIVE_DIAMETER, QuantityKind.SSDE_FACTOR, QuantityKind.SSDE, QuantityKind.DLP,
    QuantityKind.DAP_SHARE, QuantityKind.DAP_FRACTION, QuantityKind.CENTER_X, QuantityKind.CENTER_Y,
    QuantityKind.CENTER_Z, QuantityKind.DIAPHRAGM_Z, QuantityKind.CONFIDENCE,
)
_RANK = {k: i for i, k in enumerate(DISPLAY_ORDER)}


def _algorithm(w: TreeWriter, ctx: ResultContext) -> list[bytes]:
    """TID 4019: name, version, parameters (one TEXT each, weights hash last), family when AI."""
    items = [w.text("HAS CONCEPT MOD", N_ALGORITHM_NAME, ctx.model.name),
             w.text("HAS CONCEPT MOD", N_ALGORITHM_VERSION, ctx.model.version)]
    params = list(ctx.algorithm_parameters)
    if ctx.model.weights_sha256:
        params.append(f"weights_sha256={ctx.model.weights_sha256}")
    items += [w.text("HAS CONCEPT MOD", N_ALGORITHM_PARAMETERS, p) for p in params]
    if "intelligence" in ctx.model.family.lower():
        items.append(w.code("HAS CONCEPT MOD", N_ALGORITHM_FAMILY, K_AI))
    return items


def _library(w: TreeWriter, header: SourceHeader) -> bytes:
    """TID 1600 Image Library with one entry (TID 1601/1602 plus the TID 1603/1604 items the header supports),
    so that CR/DX without orientation or spacing still get a valid entry."""
    ds = header.dataset
    rel = "HAS ACQ CONTEXT"
    modality = str(ds.Modality)
    items = [w.code(rel, N_MODALITY, (modality, "DCM", MODALITY_MEANING.get(modality, modality), None))]
    if ds.get("FrameOfReferenceUID"):
        items.append(w.uidref(rel, N_FRAME_OF_REFERENCE, ds.FrameOfReferenceUID))
    px, mm = K_UNIT["{pixels}"], K_UNIT["mm"]
    items.append(w.num(rel, N_ROWS, int(ds.Rows), px))
    items.append(w.num(rel, N_COLUMNS, int(ds.Columns), px))
    if header.is_projection:
        if header.patient_orientation is not None:
            items.append(w.text(rel, N_ORIENTATION_ROW, header.patient_orientation[0]))
            items.append(w.text(rel, N_ORIENTATION_COLUMN, header.patient_orientation[1]))
        spacing = ds.get("ImagerPixelSpacing")
    else:
        spacing = ds.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2:
        items.append(w.num(rel, N_SPACING_H, float(spacing[1]), mm))
        items.append(w.num(rel, N_SPACING_V, float(spacing[0]), mm))
    if not header.is_projection:
        if "SliceThickness" in ds and ds.SliceThickness not in (None, ""):
            items.append(w.num(rel, N_SLICE_THICKNESS, float(ds.SliceThickness), mm))
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if ipp is not None and len(ipp) == 3:
            items += [w.num(rel, n, float(v), mm) for n, v in zip(N_IPP, ipp, strict=True)]
        if iop is not None and len(iop) == 6:
            items += [w.num(rel, n, float(v), U_DIRECTION_COSINE) for n, v in zip(N_IOP, iop, strict=True)]
    image = w.image("CONTAINS", N_SOURCE, ds.SOPClassUID, ds.SOPInstanceUID, items)
    group = w.container("CONTAINS", N_IMAGE_LIBRARY_GROUP, [image])
    return w.container("CONTAINS", N_IMAGE_LIBRARY, [group])


def no_mm_reason(measurements: ImageMeasurements | None) -> str:
    if measurements is None:
        return "no measurements supplied"
    if measurements.geometry_level == GeometryLevel.PIXELS:
        return "no pixel spacing in the source"
    return "not computed"


def image_quantity_host(detections: Sequence[Detection]) -> int | None:
    """Index of the region whose group carries the image-level quantities: CHEST, else ABDOMEN, else the first."""
    if not detections:
        return None
    labels = [d.label.upper() for d in detections]
    for wanted in ("CHEST", "ABDOMEN"):
        if wanted in labels:
            return labels.index(wanted)
    return 0


def _note(w: TreeWriter, name: Key, text: str) -> bytes:
    return w.text("CONTAINS", name, text[:TEXT_MAX])


def _groups(w: TreeWriter, header: SourceHeader, detections: Sequence[Detection],
            measurements: ImageMeasurements | None, ctx: ResultContext, *, with_3d: bool,
            scoord_image_name: Key) -> tuple[list[bytes], list[tuple[Key, str]]]:
    """One TID 1501 group per region (see the module docstring) and the image-level notes the groups add."""
    ds = header.dataset
    algo = _algorithm(w, ctx)
    source_uid = str(ds.SOPInstanceUID)
    sop_class = str(ds.SOPClassUID)
    regions = region_pairs(detections, measurements)
    names = display_names(detections)
    host = image_quantity_host(detections)
    image_quantities = list(measurements.image_quantities) if measurements is not None else []
    for_uid = str(ds.get("FrameOfReferenceUID") or "")
    extra_notes: list[tuple[Key, str]] = []
    if with_3d and not for_uid and any(r.polygon_lps_mm is not None for r in regions):
        extra_notes.append((K_NOT_COMPUTED, "region boxes in the patient frame (SCOORD3D): the source has no "
                                            "Frame of Reference UID; boxes are given in pixels only"))
    reason = no_mm_reason(measurements)
    position = str(ds.get("PatientPosition", "") or "")
    confidence_name, confidence_unit = K_SPEC[QuantityKind.CONFIDENCE]
    groups: list[bytes] = []
    for index, (region, name) in enumerate(zip(regions, names, strict=True), start=1):
        det = region.detection
        ident, uid = tracking(source_uid, ctx, index, det.label)
        site = key(det.concept)
        head = [w.text("HAS OBS CONTEXT", N_TRACKING_ID, TRACKING_PREFIX + ident),
                w.uidref("HAS OBS CONTEXT", N_TRACKING_UID, uid),
                w.code("CONTAINS", N_FINDING_CATEGORY, V_ANATOMICAL_STRUCTURE),
                w.code("CONTAINS", N_FINDING, site),
                w.code("HAS CONCEPT MOD", N_FINDING_SITE, site),
                *algo,
                w.text("CONTAINS", N_COMMENT, name)]
        quantities = list(region.quantities)
        if index - 1 == host:
            quantities += image_quantities
        kinds = {q.kind for q in quantities}
        # (name, unit, value, estimated) in display order
        values: list[tuple[Key, str, float, bool | None]] = [
            (K_SPEC[q.kind][0], checked_spec(q).unit, q.value, q.estimated)
            for q in sorted(quantities, key=lambda q: _RANK.get(q.kind, len(_RANK)))]
        if QuantityKind.CONFIDENCE not in kinds:
            values.append((confidence_name, confidence_unit, round(det.score * 100.0, 4), False))
        notes: list[bytes] = []
        if QuantityKind.BOX_WIDTH not in kinds:
            values.append((K_PIXEL_WIDTH, "{pixels}", det.box.width, False))
            values.append((K_PIXEL_HEIGHT, "{pixels}", det.box.height, False))
            notes.append(_note(w, K_NOT_COMPUTED, f"box size in mm: {reason}; size given in pixels"))
        for kind, why in region.unavailable:
            notes.append(_note(w, K_NOT_COMPUTED, f"{kind.value}: {why}"))
        for q in quantities:
            if q.method:
                notes.append(_note(w, K_NOTE, f"{q.kind.value}: {q.method}"))
        move = table_move_text(region, position)
        if move:
            notes.append(_note(w, K_TABLE_MOVE, move))

        image_ref = w.image("SELECTED FROM", scoord_image_name, sop_class, source_uid)
        box_2d = w.scoord("INFERRED FROM", "POLYLINE", closed_polyline(det.box), [image_ref])
        box_3d = None
        if with_3d and for_uid and region.polygon_lps_mm is not None:
            pts = np.asarray(region.polygon_lps_mm, dtype=float)
            if pts.shape != (4, 3):
                raise ValueError(f"polygon_lps_mm must have 4 (x, y, z) points, got shape {pts.shape}")
            box_3d = w.scoord3d("INFERRED FROM", "POLYLINE", np.vstack([pts, pts[:1]]), for_uid)
        nums = []
        for i, (name_key, unit, value, estimated) in enumerate(values):
            children = []
            if estimated is not None:
                children.append(w.code("HAS CONCEPT MOD", N_MEASUREMENT_METHOD,
                                       K_ESTIMATED if estimated else K_MEASURED))
            # one TID 320 coordinate each: the first measurement is inferred from the box on the image (viewers
            # take the region from it), the others from the same box in the patient frame when there is one
            children.append(box_3d if box_3d is not None and i > 0 else box_2d)
            nums.append(w.num("CONTAINS", name_key, float(value), K_UNIT[unit], children))
        groups.append(w.container("CONTAINS", N_MEASUREMENT_GROUP, [*head, *nums, *notes], template="1501"))
    return groups, extra_notes


def content_sequence(
    header: SourceHeader,
    detections: Sequence[Detection],
    measurements: ImageMeasurements | None,
    ctx: ResultContext,
    notes: Sequence[tuple[object, str]],
    *,
    with_3d: bool,
) -> bytes:
    """Value of the root's Content Sequence (0040,A730): the items of the TID 1500 report, encoded.

    ``with_3d``: Comprehensive 3D SR (SCOORD3D twins, SCOORD images named "Source"); False gives the plain
    Comprehensive SR form (no SCOORD3D, SCOORD images named "Original Source").
    """
    ds = header.dataset
    w = TreeWriter(ds.get("SpecificCharacterSet"))
    scoord_image_name = N_SOURCE if with_3d else K_ORIGINAL_SOURCE
    groups, group_notes = _groups(w, header, detections, measurements, ctx, with_3d=with_3d,
                                  scoord_image_name=scoord_image_name)
    count = len(detections)
    all_notes = [(K_REGION_COUNT, f"{count} region{'s' if count != 1 else ''} found by {ctx.model.name} "
                                  f"{ctx.model.version}"),
                 *[(key(name), text) for name, text in notes], *group_notes]
    items = [
        w.code("HAS CONCEPT MOD", N_LANGUAGE, V_ENGLISH_US),
        w.code("HAS OBS CONTEXT", N_OBSERVER_TYPE, V_DEVICE),
        w.uidref("HAS OBS CONTEXT", N_DEVICE_UID, ctx.device_uid),
        w.text("HAS OBS CONTEXT", N_DEVICE_NAME, ctx.model.name),
        w.text("HAS OBS CONTEXT", N_DEVICE_MANUFACTURER, ctx.manufacturer),
        w.text("HAS OBS CONTEXT", N_DEVICE_MODEL, ctx.manufacturer_model_name),
        w.code("HAS CONCEPT MOD", N_PROCEDURE, key(C.procedure_for(header.modality))),
        _library(w, header),
    ]
    # with no region the container stays, empty: readers look it up (the cornerstone adapters fail without it) and
    # viewers find no group without coordinates in it
    items.append(w.container("CONTAINS", N_IMAGING_MEASUREMENTS, groups))
    items.append(w.container("CONTAINS", K_QUALITATIVE,
                             [w.text("CONTAINS", k, text[:TEXT_MAX]) for k, text in all_notes]))
    return b"".join(items)
