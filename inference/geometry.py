"""Geometry of CT localizers and projection radiographs: what is known about an image's pixels in millimetres.

Conventions (see also docs/GEOMETRY.md and inference.types):

* Image coordinates are continuous SCOORD coordinates: (0, 0) is the top-left CORNER of the first pixel, x runs along
  columns, y along rows; the centre of pixel (row r, column c) is (c + 0.5, r + 0.5). Image Position (Patient) is
  the CENTRE of the first pixel, hence the ``- 0.5`` in the mappings below (the same correction highdicom's
  ``ImageToReferenceTransformer`` applies).
* Patient coordinates are DICOM LPS in mm.
* A CT localizer is a fan-beam projection: along the table axis (z) the scale is set by table motion and is exact;
  across the fan its Pixel Spacing holds only at the isocenter plane, the image plane (PS3.3: a CONSTANT_ANGLE CT
  image plane passes through the data collection centre, normal to the central ray). An object at distance ``d``
  (mm) from that plane TOWARDS the source is magnified by ``m = SOD / (SOD - d)`` relative to it, SOD = Distance
  Source to Patient (0018,1111) (source to isocenter).
* Isocenter precedence: Data Collection Center (Patient) (0018,9313); else Reconstruction Target Center (Patient)
  (0018,9318); else, for CT localizers, the image plane gives the coordinate along the view direction and the vendor
  convention (x = 0 / y = 0 of the patient frame) the coordinate across the fan; else the vendor convention x = 0,
  y = 0. Table Height (0018,1130) (table top below the isocenter, mm) is a cross-check, reported in the notes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from inference.types import GeometryLevel
from nodecore.config_schema import ScannerGeometry
from nodecore.scanners import first_match

Vec3 = tuple[float, float, float]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PROJECTION_MODALITIES = frozenset({"CR", "DX", "RG", "MG", "IO", "PX", "XA", "RF"})

# Unit vector from the isocenter to the source, LPS, for a View Position (beam enters at the named side).
_VIEW_POSITION_SOURCE: dict[str, Vec3] = {
    "AP": (0.0, -1.0, 0.0),  # source anterior
    "PA": (0.0, 1.0, 0.0),  # source posterior
    "LL": (-1.0, 0.0, 0.0),  # left side against the detector: source on the patient's right
    "RL": (1.0, 0.0, 0.0),
}
_FRONTAL_VIEW_POSITIONS = frozenset({"AP", "PA"})
_LATERAL_VIEW_POSITIONS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLAT", "RLAT"})

# Patient Position -> room "up" (away from the floor) in patient LPS (DICOM PS3.17 FFF.1.2.2 table: patient axes in
# table coordinates; +Yt points to the floor).
ROOM_UP_LPS: dict[str, Vec3] = {
    "HFS": (0.0, -1.0, 0.0),
    "FFS": (0.0, -1.0, 0.0),
    "HFP": (0.0, 1.0, 0.0),
    "FFP": (0.0, 1.0, 0.0),
    "HFDR": (1.0, 0.0, 0.0),  # lying on the right side: the patient's left is up
    "FFDR": (1.0, 0.0, 0.0),
    "HFDL": (-1.0, 0.0, 0.0),
    "FFDL": (-1.0, 0.0, 0.0),
}

ORIENTATION_LETTERS: dict[str, Vec3] = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}


class GeometryError(ValueError):
    """A mapping was asked for that the image's geometry cannot support (the message says what is missing)."""


@dataclass(frozen=True)
class ImageGeometry:
    """Everything known about one image's geometry; what is unknown is None and explained in ``notes``.

    ``spacing_x_mm`` / ``spacing_y_mm``: mm per pixel along image x (between columns) and y (between rows), at the
    plane that ``level`` states (CT localizer: isocenter plane). ``row_cosines`` is the LPS direction of increasing
    x (column index), ``column_cosines`` of increasing y (row index), as in Image Orientation (Patient).
    ``magnification``: detector-plane size over object-plane size (radiographs), when known.
    ``fan_axis``: image axis ("x" or "y") across the fan of a CT localizer; the other one follows the table.
    ``source_direction``: unit LPS vector from the isocenter towards the X-ray source.
    """

    sop_instance_uid: str
    modality: str
    kind: str  # "ct_localizer" | "ct_tomographic" | "radiograph" | "other"
    rows: int
    columns: int
    level: GeometryLevel
    view: str = "unknown"  # "frontal" | "lateral" | "unknown"
    view_source: str = ""
    view_position: str = ""
    patient_position: str = ""
    frame_of_reference_uid: str = ""
    image_position: Vec3 | None = None
    row_cosines: Vec3 | None = None
    column_cosines: Vec3 | None = None
    spacing_x_mm: float | None = None
    spacing_y_mm: float | None = None
    spacing_source: str = ""
    sod_mm: float | None = None
    sid_mm: float | None = None
    magnification: float | None = None
    magnification_source: str = ""
    fan_axis: str | None = None
    source_direction: Vec3 | None = None
    source_direction_source: str = ""
    isocenter: Vec3 | None = None
    isocenter_source: str = ""
    table_height_mm: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def has_patient_frame(self) -> bool:
        return self.level == GeometryLevel.PATIENT

    @property
    def normal(self) -> Vec3 | None:
        """Image plane normal (row x column cosines), LPS, or None without a patient frame."""
        if self.row_cosines is None or self.column_cosines is None:
            return None
        n = np.cross(self.row_cosines, self.column_cosines)
        return _vec3(n / np.linalg.norm(n))

    @property
    def fan_direction(self) -> Vec3 | None:
        """LPS unit vector of the image axis across the fan (CT localizers), or None."""
        if self.fan_axis == "x":
            return self.row_cosines
        if self.fan_axis == "y":
            return self.column_cosines
        return None

    @property
    def room_up(self) -> Vec3 | None:
        """LPS direction of room 'up' from Patient Position, or None when the position is unknown."""
        return ROOM_UP_LPS.get(self.patient_position)

    def describe(self) -> str:
        """One line for logs and the CLI (no PHI)."""
        spacing = (
            f"{self.spacing_x_mm:.4g} x {self.spacing_y_mm:.4g} mm ({self.spacing_source})"
            if self.spacing_x_mm is not None and self.spacing_y_mm is not None
            else "no spacing"
        )
        return f"{self.kind} {self.modality} {self.columns}x{self.rows}, level={self.level}, view={self.view}, {spacing}"


# --------------------------------------------------------------------------------------------------------------
# header parsing (never raises for missing or malformed attributes)


def _vec3(v: Any) -> Vec3:
    return (float(v[0]), float(v[1]), float(v[2]))


def _numbers(ds: Dataset, keyword: str, count: int, notes: list[str], tag: str) -> tuple[float, ...] | None:
    """``count`` finite numbers from ``keyword`` or None (malformed values are noted, absent ones are not)."""
    if keyword not in ds:
        return None
    try:
        raw = ds.get(keyword)
    except Exception as exc:  # pydicom converts on access: a malformed value raises here
        notes.append(f"{keyword} {tag} cannot be read ({type(exc).__name__}): ignored")
        return None
    if raw is None or raw == "":
        return None
    try:
        values = tuple(float(v) for v in raw) if count > 1 or not _is_scalar(raw) else (float(raw),)
    except (TypeError, ValueError):
        notes.append(f"{keyword} {tag} is malformed ({str(raw)[:40]!r}): ignored")
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        notes.append(f"{keyword} {tag} has {len(values)} value(s), expected {count} finite: ignored")
        return None
    return values


def _is_scalar(raw: Any) -> bool:
    return isinstance(raw, str | bytes | int | float) or not hasattr(raw, "__len__")


def _positive(ds: Dataset, keyword: str, notes: list[str], tag: str) -> float | None:
    v = _numbers(ds, keyword, 1, notes, tag)
    if v is None:
        return None
    if v[0] <= 0:
        notes.append(f"{keyword} {tag} = {v[0]:g} is not positive: ignored")
        return None
    return v[0]


def _text(ds: Dataset, keyword: str) -> str:
    try:
        v = ds.get(keyword)
    except Exception:  # malformed value: treated as absent
        return ""
    if v is None:
        return ""
    if not isinstance(v, str) and hasattr(v, "__len__"):
        return "\\".join(str(x) for x in v).strip().upper()
    return str(v).strip().upper()


def _int(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword, 0) or 0)
    except Exception:  # malformed value: treated as absent
        return 0


def _image_type(ds: Dataset) -> tuple[str, ...]:
    try:
        v = ds.get("ImageType")
    except Exception:  # malformed value: treated as absent
        return ()
    if v is None:
        return ()
    if isinstance(v, str):
        return tuple(p.strip().upper() for p in v.split("\\"))
    return tuple(str(p).strip().upper() for p in v)


def _dominant_axis(v: Sequence[float] | np.ndarray) -> tuple[int, float]:
    a = np.abs(np.asarray(v, dtype=float))
    i = int(np.argmax(a))
    return i, float(a[i])


def _letters_direction(code: str) -> np.ndarray | None:
    """Patient Orientation code (e.g. 'L', 'FL') -> approximate unit LPS vector, or None."""
    if not code:
        return None
    v = np.zeros(3)
    for ch in code:
        if ch not in ORIENTATION_LETTERS:
            return None
        v += ORIENTATION_LETTERS[ch]
    n = np.linalg.norm(v)
    return v / n if n > 0 else None


def _view_from_normal(normal: Sequence[float] | np.ndarray) -> str:
    axis, size = _dominant_axis(normal)
    if size < 0.9:
        return "unknown"
    return {0: "lateral", 1: "frontal", 2: "unknown"}[axis]


def match_scanner(ds: Dataset, entries: Sequence[ScannerGeometry]) -> ScannerGeometry | None:
    """The first ``scanner_geometry`` entry whose ``match`` holds for ``ds`` (the one rule: ``nodecore.scanners``)."""
    return first_match(ds, entries)


def geometry_from_dataset(ds: Dataset, *, scanner_geometry: Sequence[ScannerGeometry] = ()) -> ImageGeometry:
    """Everything the header says about the geometry of ``ds``; never raises for missing or malformed tags.

    ``scanner_geometry``: site configuration for scanners whose headers lack it (measurement option
    ``scanner_geometry``, validated by the configuration loader): SOD, SID and the localizers' tube side; used
    only where the header is silent, and every use is noted.
    """
    notes: list[str] = []
    modality = _text(ds, "Modality")
    sop_class = str(ds.get("SOPClassUID", "") or "")
    rows = _int(ds, "Rows")
    columns = _int(ds, "Columns")
    image_type = _image_type(ds)
    view_position = _text(ds, "ViewPosition")
    patient_position = _text(ds, "PatientPosition")
    common: dict[str, Any] = dict(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        modality=modality,
        rows=rows,
        columns=columns,
        view_position=view_position,
        patient_position=patient_position,
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
    )
    if rows <= 0 or columns <= 0:
        notes.append("Rows/Columns absent or zero: image size unknown")

    sid = _positive(ds, "DistanceSourceToDetector", notes, "(0018,1110)")
    sod = _positive(ds, "DistanceSourceToPatient", notes, "(0018,1111)")
    config = match_scanner(ds, scanner_geometry) if scanner_geometry else None
    if config is not None:
        if sod is None and config.sod_mm:
            sod = float(config.sod_mm)
            notes.append(f"SOD {sod:g} mm from the site configuration (scanner_geometry), not the header")
        if sid is None and config.sid_mm:
            sid = float(config.sid_mm)
            notes.append(f"SID {sid:g} mm from the site configuration (scanner_geometry), not the header")
        common_vp = {
            "frontal": config.frontal_view_position.upper(),
            "lateral": config.lateral_view_position.upper(),
        }
    else:
        common_vp = {}
    if sid is not None and sod is not None and sod > sid:
        notes.append(f"Distance Source to Patient {sod:g} mm exceeds Distance Source to Detector {sid:g} mm: both ignored")
        sid = sod = None
    table_height = _numbers(ds, "TableHeight", 1, notes, "(0018,1130)")
    th = table_height[0] if table_height else None

    is_ct = modality == "CT" or sop_class.startswith(CT_IMAGE_STORAGE)
    if is_ct:
        return _ct_geometry(ds, common, notes, image_type, sod, sid, th, common_vp)
    return _projection_geometry(ds, common, notes, modality, sod, sid, th)


def _ct_geometry(
    ds: Dataset,
    common: dict[str, Any],
    notes: list[str],
    image_type: tuple[str, ...],
    sod: float | None,
    sid: float | None,
    th: float | None,
    configured_vp: Mapping[str, str],
) -> ImageGeometry:
    localizer = "LOCALIZER" in image_type
    kind = "ct_localizer" if localizer else "ct_tomographic"
    if not localizer:
        notes.append("CT image without LOCALIZER in Image Type: treated as a tomographic image (no fan-beam model)")
    ipp = _numbers(ds, "ImagePositionPatient", 3, notes, "(0020,0032)")
    iop = _numbers(ds, "ImageOrientationPatient", 6, notes, "(0020,0037)")
    ps = _numbers(ds, "PixelSpacing", 2, notes, "(0028,0030)")
    if ps is not None and (ps[0] <= 0 or ps[1] <= 0):
        notes.append(f"Pixel Spacing (0028,0030) {ps} is not positive: ignored")
        ps = None
    row_cos = col_cos = None
    if iop is not None:
        r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
        nr, nc = np.linalg.norm(r), np.linalg.norm(c)
        if nr < 1e-6 or nc < 1e-6 or abs(float(np.dot(r / nr, c / nc))) > 1e-3:
            notes.append("Image Orientation (Patient) (0020,0037) is not two orthogonal directions: ignored")
        else:
            row_cos, col_cos = _vec3(r / nr), _vec3(c / nc)
    missing = [
        name
        for name, v in (
            ("Image Position (Patient) (0020,0032)", ipp),
            ("Image Orientation (Patient) (0020,0037)", row_cos),
            ("Pixel Spacing (0028,0030)", ps),
        )
        if v is None
    ]
    if missing:
        notes.append("no patient frame: " + ", ".join(missing) + " absent or invalid; measurements in pixels only")
        view, view_source = _view_from_header(ds, None, notes)
        return ImageGeometry(
            kind=kind,
            level=GeometryLevel.PIXELS,
            view=view,
            view_source=view_source,
            sod_mm=sod,
            sid_mm=sid,
            table_height_mm=th,
            notes=tuple(notes),
            **common,
        )
    assert ipp is not None and ps is not None and row_cos is not None and col_cos is not None
    normal = np.cross(row_cos, col_cos)
    view, view_source = _view_from_header(ds, normal, notes)

    fan_axis: str | None = None
    source: Vec3 | None = None
    source_from = ""
    if localizer:
        rz, cz = abs(row_cos[2]), abs(col_cos[2])
        if max(rz, cz) >= 0.9:
            fan_axis = "y" if rz >= 0.9 else "x"
        else:
            notes.append("neither image axis follows the table (z): fan axis unknown, no magnification model")
        vp = common["view_position"]
        if not vp and configured_vp.get(view):
            vp = configured_vp[view]
            notes.append(f"View Position {vp} for {view} localizers from the site configuration (scanner_geometry)")
        source, source_from = _source_direction(vp, common["patient_position"], normal, notes)
        if sod is None:
            notes.append(
                "Distance Source to Patient (0018,1111) absent: fan-beam magnification not modelled; sizes across"
                " the fan are at the isocenter plane"
            )
        if sid is None:
            notes.append("Distance Source to Detector (0018,1110) absent")
    magnification = sid / sod if (sid is not None and sod is not None) else None

    iso, iso_source = _isocenter(ds, ipp, row_cos, col_cos, ps, common, localizer, fan_axis, notes)
    if th is not None:
        _table_height_cross_check(th, iso, common["patient_position"], ipp, normal, view, localizer, notes)
    return ImageGeometry(
        kind=kind,
        level=GeometryLevel.PATIENT,
        view=view,
        view_source=view_source,
        image_position=_vec3(ipp),
        row_cosines=row_cos,
        column_cosines=col_cos,
        spacing_x_mm=ps[1],
        spacing_y_mm=ps[0],
        spacing_source="Pixel Spacing (0028,0030), isocenter plane" if localizer else "Pixel Spacing (0028,0030)",
        sod_mm=sod,
        sid_mm=sid,
        magnification=magnification,
        magnification_source="SID/SOD" if magnification is not None else "",
        fan_axis=fan_axis,
        source_direction=source,
        source_direction_source=source_from,
        isocenter=iso,
        isocenter_source=iso_source,
        table_height_mm=th,
        notes=tuple(notes),
        **common,
    )


def _view_from_header(ds: Dataset, normal: np.ndarray | None, notes: list[str]) -> tuple[str, str]:
    """frontal / lateral / unknown, from the orientation, else View Position, else Patient Orientation."""
    vp = _text(ds, "ViewPosition")
    by_vp = "frontal" if vp in _FRONTAL_VIEW_POSITIONS else "lateral" if vp in _LATERAL_VIEW_POSITIONS else ""
    if normal is not None:
        view = _view_from_normal(normal)
        if by_vp and view != "unknown" and by_vp != view:
            notes.append(f"View Position {vp} ({by_vp}) contradicts Image Orientation (Patient) ({view})")
        if view != "unknown":
            return view, "Image Orientation (Patient) (0020,0037)"
        notes.append("Image Orientation (Patient) is oblique: view not determined from it")
    if by_vp:
        return by_vp, f"View Position (0018,5101) = {vp}"
    po = ds.get("PatientOrientation")
    codes: list[str] = []
    if po is not None and po != "":
        codes = [str(p).strip().upper() for p in (po if not isinstance(po, str) else po.split("\\"))]
    if len(codes) == 2:
        d_row, d_col = _letters_direction(codes[0]), _letters_direction(codes[1])
        if d_row is not None and d_col is not None:
            n = np.cross(d_row, d_col)
            if np.linalg.norm(n) > 0.5:
                view = _view_from_normal(n / np.linalg.norm(n))
                if view != "unknown":
                    return view, f"Patient Orientation (0020,0020) = {codes[0]}\\{codes[1]}"
    notes.append("view (frontal/lateral) not determined: no usable orientation, View Position or Patient Orientation")
    return "unknown", ""


def _source_direction(
    view_position: str, patient_position: str, normal: np.ndarray, notes: list[str]
) -> tuple[Vec3 | None, str]:
    """Unit LPS vector isocenter -> source for a CT localizer, from View Position or the tube-above assumption."""
    if view_position in _VIEW_POSITION_SOURCE:
        s = _VIEW_POSITION_SOURCE[view_position]
        if abs(float(np.dot(s, normal))) > 0.9:
            return s, f"View Position (0018,5101) = {view_position}"
        notes.append(f"View Position {view_position} is not along the image normal: source side not taken from it")
    up = ROOM_UP_LPS.get(patient_position)
    if up is not None and abs(float(np.dot(up, normal))) > 0.9:
        notes.append(
            f"source side assumed: tube above the table (Patient Position {patient_position}); no View Position"
        )
        return up, "assumed: tube above the table"
    notes.append("source side unknown (no View Position; horizontal beam or no Patient Position)")
    return None, ""


def _isocenter(
    ds: Dataset,
    ipp: tuple[float, ...],
    row_cos: Vec3,
    col_cos: Vec3,
    ps: tuple[float, ...],
    common: dict[str, Any],
    localizer: bool,
    fan_axis: str | None,
    notes: list[str],
) -> tuple[Vec3, str]:
    for keyword, tag in (
        ("DataCollectionCenterPatient", "(0018,9313)"),
        ("ReconstructionTargetCenterPatient", "(0018,9318)"),
    ):
        v = _numbers(ds, keyword, 3, notes, tag)
        if v is not None:
            name = "Data Collection Center (Patient)" if "Data" in keyword else "Reconstruction Target Center (Patient)"
            return _vec3(v), f"{name} {tag}"
    rows, columns = common["rows"], common["columns"]
    ipp_a, r_a, c_a = np.asarray(ipp), np.asarray(row_cos), np.asarray(col_cos)
    centre = ipp_a + (columns / 2.0 - 0.5) * ps[1] * r_a + (rows / 2.0 - 0.5) * ps[0] * c_a
    iso = np.array([0.0, 0.0, centre[2]])
    normal = np.cross(row_cos, col_cos)
    axis, size = _dominant_axis(normal)
    if localizer and size >= 0.9 and axis in (0, 1):
        plane = float(np.dot(ipp, normal) / normal[axis])  # coordinate of the image plane along that axis
        iso[axis] = plane
        name, other = "xy"[axis], "xy"[1 - axis]
        source = (f"{name} = localizer image plane (PS3.3: a CONSTANT_ANGLE image plane passes through the data"
                  f" collection centre)")
        if fan_axis is not None:
            # central ray: the centre of pixel floor(N/2) across the fan, counted along +LPS (the real Philips
            # localizers put x = 0 exactly there: IPP x = -FOV/2 at the first pixel centre). Counted along +LPS,
            # not from the first stored pixel, so that the 8 in-plane orientations of one image agree (issue 19).
            n = columns if fan_axis == "x" else rows
            fan_vec = r_a if fan_axis == "x" else c_a
            step = ps[1] if fan_axis == "x" else ps[0]
            k = n // 2 if fan_vec[1 - axis] > 0 else n - 1 - n // 2
            ray = float((ipp_a + k * step * fan_vec)[1 - axis])
            if abs(ray) <= step:
                iso[1 - axis] = 0.0
                source += f", {other} = 0 (vendor convention, agrees with the central ray at {ray:+.2f} mm)"
            else:
                iso[1 - axis] = ray
                source += f", {other} = central ray (centre of pixel {n // 2} across the fan, counted along +{other})"
                notes.append(
                    f"isocenter {other} = {ray:.1f} mm from the fan centre: the vendor convention {other} = 0 is"
                    " contradicted by the image (table-based patient frame)"
                )
        else:
            source += f", {other} = 0 (vendor convention)"
        return _vec3(iso), source + ", z = image centre"
    return _vec3(iso), "vendor convention x = 0, y = 0; z = image centre"


def _table_height_cross_check(
    th: float,
    iso: Vec3 | None,
    patient_position: str,
    ipp: tuple[float, ...],
    normal: np.ndarray,
    view: str,
    localizer: bool,
    notes: list[str],
) -> None:
    up = ROOM_UP_LPS.get(patient_position)
    if iso is None:
        return
    if up is None:
        notes.append(f"Table Height {th:g} mm; Patient Position unknown: table top not placed in the patient frame")
        return
    top = np.asarray(iso) - th * np.asarray(up)
    axis, _ = _dominant_axis(up)
    notes.append(
        f"Table Height {th:g} mm: table top {th:g} mm below the isocenter, at {'xyz'[axis]} = {top[axis]:.1f} mm"
    )
    if localizer and view == "frontal":
        plane_y = float(ipp[1])
        if abs(plane_y) > 1.0:
            notes.append(
                f"cross-check: the frontal localizer plane is at y = {plane_y:.1f} mm, not y = 0: this scanner's"
                f" patient frame is not centred vertically on the isocenter (plane y + Table Height ="
                f" {plane_y + th:.1f} mm); the vendor convention y = 0 would be wrong for its lateral views"
            )


def _projection_geometry(
    ds: Dataset,
    common: dict[str, Any],
    notes: list[str],
    modality: str,
    sod: float | None,
    sid: float | None,
    th: float | None,
) -> ImageGeometry:
    kind = "radiograph" if modality in PROJECTION_MODALITIES else "other"
    if kind == "other":
        notes.append(f"modality {modality or 'unknown'!r} is neither a CT localizer nor a projection radiograph")
    view, view_source = _view_from_header(ds, None, notes)
    ips = _numbers(ds, "ImagerPixelSpacing", 2, notes, "(0018,1164)")
    ps = _numbers(ds, "PixelSpacing", 2, notes, "(0028,0030)")
    for name, v in (("ImagerPixelSpacing", ips), ("PixelSpacing", ps)):
        if v is not None and (v[0] <= 0 or v[1] <= 0):
            notes.append(f"{name} {v} is not positive: ignored")
            if name == "ImagerPixelSpacing":
                ips = None
            else:
                ps = None
    cal_type = _text(ds, "PixelSpacingCalibrationType")
    ermf = _positive(ds, "EstimatedRadiographicMagnificationFactor", notes, "(0018,1114)")
    if ermf is not None and ermf < 1.0:
        notes.append(f"Estimated Radiographic Magnification Factor {ermf:g} < 1 is not physical: ignored")
        ermf = None
    geometric_m = sid / sod if (sid is not None and sod is not None) else None

    level = GeometryLevel.PIXELS
    sx = sy = None
    spacing_source = ""
    magnification: float | None = None
    m_source = ""
    if ps is not None and cal_type in ("GEOMETRY", "FIDUCIAL"):
        level, (sy, sx) = GeometryLevel.OBJECT_PLANE, ps
        spacing_source = f"Pixel Spacing (0028,0030), calibrated ({cal_type})"
        if ips is not None:
            magnification, m_source = ips[0] / ps[0], "Imager Pixel Spacing / Pixel Spacing"
    elif ips is not None and ermf is not None:
        level, sy, sx = GeometryLevel.OBJECT_PLANE, ips[0] / ermf, ips[1] / ermf
        magnification, m_source = ermf, "Estimated Radiographic Magnification Factor (0018,1114)"
        spacing_source = "Imager Pixel Spacing (0018,1164) / Estimated Radiographic Magnification Factor"
    elif ips is not None and geometric_m is not None:
        level, sy, sx = GeometryLevel.OBJECT_PLANE, ips[0] / geometric_m, ips[1] / geometric_m
        magnification, m_source = geometric_m, "SID/SOD (0018,1110)/(0018,1111)"
        spacing_source = "Imager Pixel Spacing (0018,1164) x SOD/SID"
    elif ips is not None:
        level, (sy, sx) = GeometryLevel.DETECTOR_PLANE, ips
        spacing_source = "Imager Pixel Spacing (0018,1164), detector plane"
        if ps is not None and not np.allclose(ps, ips, rtol=1e-4):
            notes.append(
                f"Pixel Spacing {ps} differs from Imager Pixel Spacing {ips} without a Pixel Spacing Calibration"
                " Type: its plane is undefined, detector plane used"
            )
    elif ps is not None:
        level, (sy, sx) = GeometryLevel.DETECTOR_PLANE, ps
        spacing_source = "Pixel Spacing (0028,0030) without Imager Pixel Spacing: taken as the detector (plate) plane"
    else:
        notes.append("no Pixel Spacing or Imager Pixel Spacing: measurements in pixels only")
    if level == GeometryLevel.DETECTOR_PLANE:
        missing = []
        if sid is None:
            missing.append("Distance Source to Detector (0018,1110)")
        if sod is None:
            missing.append("Distance Source to Patient (0018,1111)")
        notes.append(
            "magnification unknown (" + ", ".join(missing + ["Estimated Radiographic Magnification Factor (0018,1114)"])
            + " absent): sizes are at the detector plane, larger than the object by the unknown magnification"
        )
    if cal_type and cal_type not in ("GEOMETRY", "FIDUCIAL"):
        notes.append(f"Pixel Spacing Calibration Type {cal_type!r} not recognised")
    source = None
    source_from = ""
    if common["view_position"] in _VIEW_POSITION_SOURCE:
        source = _VIEW_POSITION_SOURCE[common["view_position"]]
        source_from = f"View Position (0018,5101) = {common['view_position']}"
    notes.append("no patient frame (projection radiograph): centres and isocenter offsets are not computed")
    return ImageGeometry(
        kind=kind,
        level=level,
        view=view,
        view_source=view_source,
        spacing_x_mm=sx,
        spacing_y_mm=sy,
        spacing_source=spacing_source,
        sod_mm=sod,
        sid_mm=sid,
        magnification=magnification,
        magnification_source=m_source,
        source_direction=source,
        source_direction_source=source_from,
        table_height_mm=th,
        notes=tuple(notes),
        **common,
    )


# --------------------------------------------------------------------------------------------------------------
# mappings


def _require_frame(geom: ImageGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    if not geom.has_patient_frame:
        raise GeometryError(
            f"image has no patient frame (geometry level {geom.level}); pixel <-> patient mapping needs Image"
            " Position/Orientation (Patient) and Pixel Spacing"
        )
    assert geom.image_position is not None and geom.row_cosines is not None and geom.column_cosines is not None
    assert geom.spacing_x_mm is not None and geom.spacing_y_mm is not None
    return (
        np.asarray(geom.image_position, dtype=float),
        np.asarray(geom.row_cosines, dtype=float),
        np.asarray(geom.column_cosines, dtype=float),
        float(geom.spacing_x_mm),
        float(geom.spacing_y_mm),
    )


def _as_points(a: np.ndarray, width: int, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.ndim == 1 and arr.shape[0] == width:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}), got {np.shape(a)}")
    return arr


def magnification_at_depth(geom: ImageGeometry, depth_mm: float | np.ndarray) -> np.ndarray:
    """Fan-beam magnification ``SOD / (SOD - d)`` of an object ``d`` mm from the isocenter plane towards the source.

    Relative to the isocenter plane (where the localizer's Pixel Spacing holds). Raises GeometryError without SOD
    or for depths at or beyond the source.
    """
    if geom.sod_mm is None:
        raise GeometryError("Distance Source to Patient (0018,1111) unknown: fan-beam magnification cannot be modelled")
    d = np.asarray(depth_mm, dtype=float)
    if np.any(d >= geom.sod_mm):
        raise GeometryError(f"depth {np.max(d):g} mm is at or beyond the source (SOD {geom.sod_mm:g} mm)")
    return geom.sod_mm / (geom.sod_mm - d)


def pixel_to_patient(
    geom: ImageGeometry, xy: np.ndarray, depth_mm: float | np.ndarray | None = None
) -> np.ndarray:
    """(N, 2) SCOORD pixel coordinates -> (N, 3) LPS mm.

    Without ``depth_mm`` the points lie in the image plane (the isocenter plane of a CT localizer): the plain affine
    map of Image Position/Orientation (Patient) and Pixel Spacing. With ``depth_mm`` (scalar or (N,), distance from
    the isocenter plane towards the source) the fan-beam ray through each pixel is followed to that depth: the
    coordinate across the fan, relative to the central ray through the isocenter, shrinks by (SOD - d)/SOD.
    """
    ipp, r, c, sx, sy = _require_frame(geom)
    pts = _as_points(xy, 2, "xy")
    lps = ipp + np.outer(pts[:, 0] - 0.5, r * sx) + np.outer(pts[:, 1] - 0.5, c * sy)
    if depth_mm is None:
        return lps
    d = np.broadcast_to(np.asarray(depth_mm, dtype=float), (pts.shape[0],))
    if not np.any(d):
        return lps
    f, s, iso = _fan_frame(geom)
    m = magnification_at_depth(geom, d)
    u = (lps - iso) @ f  # across-fan distance from the central ray at the isocenter plane
    return lps + np.outer(u / m - u, f) + np.outer(d, s)


def _fan_frame(geom: ImageGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = geom.fan_direction
    if f is None:
        raise GeometryError("fan axis unknown (not a CT localizer, or no image axis along the table)")
    if geom.source_direction is None:
        raise GeometryError("source side unknown: depth along the beam cannot be placed (no View Position)")
    if geom.isocenter is None:
        raise GeometryError("isocenter unknown")
    return np.asarray(f, dtype=float), np.asarray(geom.source_direction, dtype=float), np.asarray(geom.isocenter)


def patient_to_pixel(geom: ImageGeometry, lps: np.ndarray, *, perspective: bool = True) -> np.ndarray:
    """(N, 3) LPS mm -> (N, 2) SCOORD pixel coordinates; the inverse of ``pixel_to_patient``.

    With ``perspective`` and a known fan-beam model (CT localizer with SOD and source side), points are projected
    from the source onto the isocenter plane, as the scanner images them; otherwise orthogonally.
    """
    ipp, r, c, sx, sy = _require_frame(geom)
    pts = _as_points(lps, 3, "lps")
    if perspective and geom.sod_mm is not None and geom.fan_direction is not None and geom.source_direction is not None:
        f, s, iso = _fan_frame(geom)
        d = (pts - ipp) @ s  # distance from the image (isocenter) plane towards the source
        m = magnification_at_depth(geom, d)
        u = (pts - iso) @ f
        pts = pts - np.outer(d, s) + np.outer(u * m - u, f)
    rel = pts - ipp
    return np.column_stack([rel @ r / sx + 0.5, rel @ c / sy + 0.5])


def table_move_instruction(offset_mm: float, direction_lps: Sequence[float], patient_position: str) -> str:
    """Words for the table move that brings a point offset by ``offset_mm`` along ``direction_lps`` to the isocenter.

    ``offset_mm`` is the point's position minus the isocenter's along ``direction_lps`` (e.g. iso_offset_vertical
    along +y, posterior). Vertical moves are in room terms (up/down, from Patient Position); lateral ones in the
    patient's terms ("towards the patient's left"), which do not depend on where the operator stands.
    """
    d = np.asarray(direction_lps, dtype=float)
    up = ROOM_UP_LPS.get(patient_position)
    n = abs(offset_mm)
    if up is not None and abs(float(np.dot(d, up))) > 0.9:
        # point is above the isocenter when offset * (d . up) > 0: the table must go down
        above = offset_mm * float(np.dot(d, up)) > 0
        return f"move table {'down' if above else 'up'} by {n:.1f} mm"
    axis, size = _dominant_axis(d)
    if size > 0.9 and axis == 0:
        towards_left = offset_mm * d[0] > 0  # the point is to the patient's left: table moves to the patient's right
        return f"move table towards the patient's {'right' if towards_left else 'left'} by {n:.1f} mm"
    if size > 0.9 and axis == 1:
        posterior = offset_mm * d[1] > 0
        return f"move table towards the patient's {'anterior' if posterior else 'posterior'} by {n:.1f} mm"
    return f"offset {offset_mm:+.1f} mm along {tuple(round(float(v), 3) for v in d)} (room direction unknown)"


# --------------------------------------------------------------------------------------------------------------
# fan-beam silhouette of an elliptical cross-section (what a localizer shows of a body region)


def silhouette_extents(
    center_u: float, center_d: float, half_u: float, half_d: float, sod_mm: float
) -> tuple[float, float]:
    """Isocenter-plane extents (u_lo, u_hi) of the fan-beam shadow of an ellipse.

    The ellipse (a transverse cross-section of a region) has centre ``center_u`` across the fan and ``center_d``
    towards the source (both mm from the isocenter) and semi-axes ``half_u``, ``half_d``; the shadow edges are the
    rays from the source tangent to it. With k = SOD - center_d:
    u = SOD (center_u k +- sqrt(half_u^2 (k^2 - half_d^2) + half_d^2 center_u^2)) / (k^2 - half_d^2).
    """
    k = sod_mm - center_d
    den = k * k - half_d * half_d
    if den <= 0:
        raise GeometryError(f"the source ({sod_mm:g} mm) lies within the cross-section (depth {center_d:g} mm)")
    root = math.sqrt(half_u * half_u * den + half_d * half_d * center_u * center_u)
    return sod_mm * (center_u * k - root) / den, sod_mm * (center_u * k + root) / den


def invert_silhouette(
    u_lo: float, u_hi: float, center_d: float, half_d: float, sod_mm: float
) -> tuple[float, float]:
    """(centre_u, half_u) of the ellipse whose fan-beam shadow spans [u_lo, u_hi] at the isocenter plane.

    The inverse of ``silhouette_extents`` given the cross-section's depth centre and depth semi-axis (mm).
    """
    k = sod_mm - center_d
    den = k * k - half_d * half_d
    if den <= 0:
        raise GeometryError(f"the source ({sod_mm:g} mm) lies within the cross-section (depth {center_d:g} mm)")
    mid, half = (u_lo + u_hi) / 2.0, (u_hi - u_lo) / 2.0
    center_u = mid * den / (sod_mm * k)
    a2 = ((half * den / sod_mm) ** 2 - half_d * half_d * center_u * center_u) / den
    return center_u, math.sqrt(max(a2, 0.0))


# --------------------------------------------------------------------------------------------------------------
# per-edge shadow model of a region's axis-aligned 3-D extent, solved from a frontal and a lateral view


@dataclass(frozen=True)
class EdgeModel:
    """What casts one shadow edge of a region: an elliptical cap at that side of the region's 3-D extent.

    Fractions of the extent's half sizes: ``across`` = cap semi-axis across the fan / half extent across (the cap's
    outer edge is the box edge); ``depth`` = cap semi-axis along the beam / half extent along the beam; the cap
    centre lies ``offset_lps`` half extents from the box centre along +LPS of the beam axis; ``offset_pair`` > 0:
    a symmetric pair of such caps, ``offset_pair`` half extents either side of that centre along the beam (e.g. the
    left and right iliac wing tips in a lateral view); the edge is the more extreme of their two shadows (the one
    nearer the source when the edge lies outside the central ray, the farther one otherwise). across = depth = 1,
    offsets 0: the whole elliptical cross-section (the default, exact for ellipses); depth = 0: a point (a sharp
    feature, e.g. a bony tip); across = depth = 0, offset_pair = 1: the corners of a box (exact for a box).
    """

    across: float = 1.0
    depth: float = 1.0
    offset_lps: float = 0.0
    offset_pair: float = 0.0


ELLIPSE_EDGE = EdgeModel()


@dataclass(frozen=True)
class SilhouetteModel:
    """Edge models of a region per view; lo/hi = the edge at the smaller/larger LPS coordinate across the fan
    (frontal: right/left, x; lateral: anterior/posterior, y)."""

    frontal_lo: EdgeModel = ELLIPSE_EDGE
    frontal_hi: EdgeModel = ELLIPSE_EDGE
    lateral_lo: EdgeModel = ELLIPSE_EDGE
    lateral_hi: EdgeModel = ELLIPSE_EDGE
    name: str = "elliptical cross-section"


def extent_shadow(
    across: tuple[float, float], beam: tuple[float, float], sod_mm: float | None, source_sign: float,
    lo_model: EdgeModel = ELLIPSE_EDGE, hi_model: EdgeModel = ELLIPSE_EDGE,
) -> tuple[float, float]:
    """Isocenter-plane shadow (lo, hi) of a region's extent in one view, mm along +LPS across the fan.

    ``across`` / ``beam``: the extent (lo, hi) across the fan and along the beam, LPS mm minus the isocenter;
    ``source_sign``: +1 when the source lies on the +LPS side of the beam axis. Without SOD the shadow is the
    extent itself (orthographic).
    """
    if sod_mm is None:
        return across
    h, big_h = (across[1] - across[0]) / 2.0, (beam[1] - beam[0]) / 2.0
    cb = (beam[0] + beam[1]) / 2.0
    out = []
    for i, m in enumerate((lo_model, hi_model)):
        a = m.across * h
        u = across[0] + a if i == 0 else across[1] - a
        d = source_sign * (cb + m.offset_lps * big_h)
        edges = [silhouette_extents(u, d + s * m.offset_pair * big_h, a, m.depth * big_h, sod_mm)[i]
                 for s in ((1.0, -1.0) if m.offset_pair else (0.0,))]
        out.append(min(edges) if i == 0 else max(edges))
    return out[0], out[1]


def solve_extent(
    frontal: tuple[float, float], lateral: tuple[float, float], *,
    frontal_sod_mm: float | None, frontal_source_sign: float,
    lateral_sod_mm: float | None, lateral_source_sign: float,
    model: SilhouetteModel = SilhouetteModel(), max_iterations: int = 50,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The axis-aligned extent ((x_lo, x_hi), (y_lo, y_hi)), LPS mm minus the isocenter, whose shadows match a
    frontal shadow (x, right..left) and a lateral shadow (y, anterior..posterior) at the isocenter planes.

    Newton iteration on the four edges (the shadows of ``extent_shadow`` under ``model``) from the orthographic
    start; converges in a few steps (the coupling between the views is of order extent / SOD). Raises
    GeometryError when it does not converge or the source falls inside the region.
    """
    target = np.array([frontal[0], frontal[1], lateral[0], lateral[1]], dtype=float)

    def forward(v: np.ndarray) -> np.ndarray:
        fx = extent_shadow((v[0], v[1]), (v[2], v[3]), frontal_sod_mm, frontal_source_sign,
                           model.frontal_lo, model.frontal_hi)
        ly = extent_shadow((v[2], v[3]), (v[0], v[1]), lateral_sod_mm, lateral_source_sign,
                           model.lateral_lo, model.lateral_hi)
        return np.array([*fx, *ly])

    v = target.copy()
    for _ in range(max_iterations):
        r = forward(v) - target
        if np.max(np.abs(r)) < 1e-9:
            return (float(v[0]), float(v[1])), (float(v[2]), float(v[3]))
        jac = np.empty((4, 4))
        for j in range(4):
            dv = np.zeros(4)
            dv[j] = 1e-4
            jac[:, j] = (forward(v + dv) - forward(v - dv)) / 2e-4
        try:
            v = v - np.linalg.solve(jac, r)
        except np.linalg.LinAlgError as exc:
            raise GeometryError(f"the frontal and lateral shadows cannot be solved together ({exc})") from exc
    raise GeometryError(f"the frontal and lateral shadows did not converge in {max_iterations} iterations")
