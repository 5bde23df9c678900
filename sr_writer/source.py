"""The part of a source image's header that our result objects copy or reference, checked and sanitised.

Result objects belong to the source's patient and study, so patient and study attributes are copied. Some real
sources carry values that are invalid for their VR (a 56-character Accession Number, a hash as Birth Date); copied
as they are, every result would fail validation. Such a value is left out (the attribute is kept empty, as Type 2
allows) and a PHI-free note says which attribute was dropped and why; no value is ever made up.

Geometry needed by highdicom's image library (Patient Orientation, Imager Pixel Spacing for CR/DX) is derived
only where the derivation is exact (orientation letters from Image Orientation (Patient); CR Pixel Spacing, which
PS3.3 defines at the detector for CR, as Imager Pixel Spacing); each derivation is recorded as a note.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydicom import config as pydicom_config
from pydicom.charset import python_encoding as _python_encoding
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

# Patient / study attributes copied into every result (Type 2 in the result IODs: empty when unusable).
PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# Further attributes that are copied only when present and valid.
OPTIONAL = ("IssuerOfPatientID", "StudyDescription", "PatientAge", "PatientWeight", "PatientSize")
# Image attributes the writers read (never copied into results as such).
IMAGE = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "FrameOfReferenceUID",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "PresentationLUTShape",
    "ImageType",
    "Laterality",
    "PatientPosition",
)


@dataclass(frozen=True)
class SourceHeader:
    """A sanitised header copy (``dataset``) plus what was dropped or derived (``notes``, PHI-free)."""

    dataset: Dataset
    notes: tuple[str, ...]
    patient_orientation: tuple[str, str] | None  # row, column direction letters; None when unknown
    derived: tuple[str, ...]  # attribute keywords whose value was derived, not copied

    @property
    def modality(self) -> str:
        return str(self.dataset.Modality)

    @property
    def is_projection(self) -> bool:
        return self.modality in ("CR", "DX", "RG", "RF", "XA", "MG", "IO", "PX")


_TEXT_VRS = ("PN", "LO", "SH", "ST", "LT", "UT", "UC")


def _valid(keyword: str, ds: Dataset, has_charset: bool | None = None) -> str | None:
    """None when the element's value is valid for its VR, else a PHI-free reason.

    ``has_charset``: whether the result carries a Specific Character Set (default: whether the source has one)."""
    elem = ds[keyword]
    values = elem.value if elem.VM > 1 else [elem.value]
    if has_charset is None:
        has_charset = bool(ds.get("SpecificCharacterSet"))
    for v in values:
        if v is None or v == "":
            continue
        if elem.VR in _TEXT_VRS and not has_charset and not str(v).isascii():
            return f"{keyword} not copied from the source: characters outside the default repertoire " \
                   "and no Specific Character Set"
        if elem.VR in ("US", "SS", "UL", "SL", "FL", "FD", "SQ", "OB", "OW", "UN"):
            continue
        try:
            validate_value(elem.VR, str(v) if elem.VR in ("DS", "IS") else v, pydicom_config.RAISE)
        except (ValueError, TypeError) as exc:  # the message may contain the value: do not keep it
            detail = "length" if "length" in str(exc).lower() else "characters or format"
            return f"{keyword} not copied from the source: value invalid for VR {elem.VR} ({detail})"
        if elem.VR == "DA" and not re.fullmatch(r"\d{8}", str(v)):
            return f"{keyword} not copied from the source: value invalid for VR DA (format)"
        if elem.VR == "TM" and not re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", str(v)):
            return f"{keyword} not copied from the source: value invalid for VR TM (format)"
    return None


_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # + direction of LPS x, y, z; then - direction


def orientation_letters(cosines: tuple[float, float, float]) -> str:
    """Patient orientation letters of an LPS direction (PS3.3 C.7.6.1.1.1), most significant axis first."""
    out = []
    for axis in sorted(range(3), key=lambda i: -abs(cosines[i])):
        c = cosines[axis]
        if abs(c) < 1e-3:
            continue
        plus, minus = _LETTERS[axis]
        out.append(plus if c > 0 else minus)
    return "".join(out)


def _character_set(source: Dataset, notes: list[str]) -> object | None:
    """The source's Specific Character Set when every value is a defined term; else None (the default repertoire,
    as pydicom read the source's text) and a note. Empty or unknown values are seen on real scanners (issue 19)."""
    if "SpecificCharacterSet" not in source:
        return None
    value = source.SpecificCharacterSet
    values = [str(v).strip() for v in (value if not isinstance(value, str) else [value])]
    if not values or not any(values):
        notes.append("Specific Character Set (0008,0005) present but empty: read as the default repertoire")
        return None
    unknown = [v for v in values if v and v not in _python_encoding]
    if unknown:
        notes.append(f"Specific Character Set (0008,0005) {unknown[0][:16]!r} is not a defined term: read as the"
                     " default repertoire")
        return None
    return value


def read_source_header(source: Dataset) -> SourceHeader:
    """Build the sanitised header of ``source`` (pixels are not touched)."""
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows",
               "Columns"):
        if kw not in source or source[kw].value in (None, ""):
            raise ValueError(f"source image lacks {kw}: cannot reference it in a result object")
    ds = Dataset()
    notes: list[str] = []
    derived: list[str] = []
    charset = _character_set(source, notes)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    for kw in PATIENT_STUDY + OPTIONAL + IMAGE:
        if kw not in source:
            if kw in PATIENT_STUDY:
                setattr(ds, kw, "")
            continue
        reason = _valid(kw, source, charset is not None)
        if reason:
            if kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
                raise ValueError(f"source image has an invalid {kw} (VR UI): cannot reference it")
            notes.append(reason)
            if kw in PATIENT_STUDY:
                setattr(ds, kw, "")
            continue
        ds.add(source[kw])
    if "SamplesPerPixel" not in ds:
        ds.SamplesPerPixel = 1
    rescale = [kw for kw in ("RescaleSlope", "RescaleIntercept") if kw in ds]
    if len(rescale) == 1:  # the other one was malformed and left out: the pair goes together (issue 19)
        del ds[rescale[0]]
        notes.append(f"{rescale[0]} not copied either: Rescale Slope and Intercept go together")

    orientation: tuple[str, str] | None = None
    iop = ds.get("ImageOrientationPatient")  # the copy: a malformed source value was left out above
    if iop is not None and len(iop) == 6:
        row = tuple(float(v) for v in iop[:3])
        col = tuple(float(v) for v in iop[3:])
        if all(math.isfinite(v) for v in row + col) and abs(math.hypot(*row) - 1) < 1e-2:
            orientation = (orientation_letters(row), orientation_letters(col))  # type: ignore[arg-type]
            if source.get("PatientOrientation") in (None, "", []):
                derived.append("PatientOrientation")
                notes.append("PatientOrientation derived from ImageOrientationPatient")
    if orientation is None:
        po = source.get("PatientOrientation")
        if po is not None and len(po) == 2 and all(re.fullmatch(r"[APLRHF]{1,3}", str(v)) for v in po):
            orientation = (str(po[0]), str(po[1]))
        elif source.Modality != "CT":
            notes.append("PatientOrientation unknown (absent or empty in the source): not reported")
    if orientation is not None:
        ds.PatientOrientation = list(orientation)

    if ds.Modality in ("CR", "DX", "RG", "RF", "XA", "MG", "IO", "PX") and "ImagerPixelSpacing" not in ds:
        if ds.Modality == "CR" and "PixelSpacing" in ds:
            ds.ImagerPixelSpacing = ds.PixelSpacing
            derived.append("ImagerPixelSpacing")
            notes.append("ImagerPixelSpacing taken from the CR PixelSpacing (spacing at the imaging plate)")
        else:
            notes.append("Imager pixel spacing unknown: sizes in pixels only")
    return SourceHeader(ds, tuple(notes), orientation, tuple(derived))
