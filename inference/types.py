"""Small typed records passed along one direction through the pipeline.

received object -> route -> detections -> measurements -> result objects -> outbound queue

Coordinate conventions (used everywhere in the project):

* Image (pixel) coordinates are continuous, in ORIGINAL stored pixels of the source image, with (0, 0) at the
  top-left CORNER of the first (top-left) pixel, x along columns (to the right) and y along rows (downwards).
  This is the DICOM SCOORD convention; the centre of pixel (row r, column c) is (c + 0.5, r + 0.5).
* Patient coordinates are DICOM LPS in millimetres (x to the patient's Left, y to Posterior, z to Superior).
* Units are UCUM strings: ``mm``, ``cm2``, ``cm``, ``mGy``, ``mGy.cm``, ``dGy.cm2``, ``%``, ``1`` (dimensionless).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


@dataclass(frozen=True)
class CodedConcept:
    """A coded concept (code value, coding scheme designator, code meaning), e.g. ('816094009', 'SCT', 'Chest')."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in ORIGINAL pixel coordinates (SCOORD convention, see module docstring).

    ``x_min <= x_max`` and ``y_min <= y_max``; a box covering exactly pixel (r, c) is (c, r, c + 1, r + 1).
    """

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def __post_init__(self) -> None:
        if not (self.x_min <= self.x_max and self.y_min <= self.y_max):
            raise ValueError(f"degenerate box: {self}")

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x_min + self.x_max) / 2.0, (self.y_min + self.y_max) / 2.0)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)

    @classmethod
    def from_inclusive_centres(cls, x_min: int, y_min: int, x_max: int, y_max: int) -> Box:
        """Convert an inclusive box of pixel-centre indices (as in ``labels.json``) to SCOORD corners."""
        return cls(float(x_min), float(y_min), float(x_max) + 1.0, float(y_max) + 1.0)


@dataclass(frozen=True)
class ModelIdentity:
    """Who produced a detection: enough for TID 4019 Algorithm Identification and a Device UID."""

    name: str
    version: str
    family: str = "Artificial Intelligence"
    weights_sha256: str = ""


@dataclass(frozen=True)
class Detection:
    """One detected region. ``box`` is ALWAYS in original pixel coordinates of the source image."""

    label: str  # class name from the model card, e.g. "CHEST"
    concept: CodedConcept  # finding site / type, e.g. SCT 816094009 Chest
    score: float  # confidence in [0, 1]
    box: Box
    model: ModelIdentity


class QuantityKind(StrEnum):
    """Vocabulary of per-region quantities; the SR writer maps each one to a coded concept and UCUM unit."""

    BOX_WIDTH = "box_width"  # mm, width of the box in the head-up view (across the body) at the stated plane
    BOX_HEIGHT = "box_height"  # mm, height in the head-up view (along the body); see inference.orientation
    ELLIPSE_AREA = "ellipse_area"  # cm2, pi/4 * w * h
    CENTER_X = "center_x"  # mm, patient LPS x of the box centre
    CENTER_Y = "center_y"  # mm, patient LPS y of the box centre
    CENTER_Z = "center_z"  # mm, patient LPS z of the box centre
    ISO_OFFSET_LATERAL = "iso_offset_lateral"  # mm, +: centre is to the patient's left of the isocenter
    ISO_OFFSET_VERTICAL = "iso_offset_vertical"  # mm, +: centre is posterior of the isocenter
    EFFECTIVE_DIAMETER = "effective_diameter"  # cm, sqrt(AP x LAT)
    WATER_EQUIVALENT_DIAMETER = "water_equivalent_diameter"  # cm, AAPM Report 220
    SSDE_FACTOR = "ssde_factor"  # 1, AAPM Report 204
    SSDE = "ssde"  # mGy
    DLP = "dlp"  # mGy.cm, region share
    DAP_SHARE = "dap_share"  # dGy.cm2, region share of the dose-area product
    DAP_FRACTION = "dap_fraction"  # %, region share as a fraction of the total
    DIAPHRAGM_Z = "diaphragm_z"  # mm, patient z of the diaphragm level (chest/abdomen overlap)
    CONFIDENCE = "confidence"  # %, detection score x 100


@dataclass(frozen=True)
class Quantity:
    """One numeric result. ``estimated`` is True when derived from a model/assumption rather than measured."""

    kind: QuantityKind
    value: float
    unit: str  # UCUM
    estimated: bool = False
    uncertainty: float | None = None  # one standard uncertainty, same unit, when known
    method: str = ""  # short human-readable note: how it was derived / which plane / which phantom


@dataclass(frozen=True)
class RegionMeasurement:
    """Measurements of one detected region.

    ``unavailable`` maps a quantity kind to the reason it could not be computed; such quantities are absent from
    ``quantities`` (never invented).
    """

    detection: Detection
    quantities: tuple[Quantity, ...] = ()
    unavailable: tuple[tuple[QuantityKind, str], ...] = ()
    # Box corners in patient LPS mm (closed polygon: 4 distinct points; the writer closes it), only for images with
    # a patient frame (CT localizers). Order: (x_min,y_min), (x_max,y_min), (x_max,y_max), (x_min,y_max) in pixels.
    polygon_lps_mm: tuple[tuple[float, float, float], ...] | None = None

    def get(self, kind: QuantityKind) -> Quantity | None:
        for q in self.quantities:
            if q.kind == kind:
                return q
        return None


class GeometryLevel(StrEnum):
    """How far pixel measurements could be turned into physical ones, best first."""

    PATIENT = "patient"  # full patient frame (LPS mm), e.g. CT localizer with position/orientation/spacing
    OBJECT_PLANE = "object_plane"  # mm at the object (isocenter) plane, magnification corrected
    DETECTOR_PLANE = "detector_plane"  # mm at the detector plane (imager pixel spacing, no magnification)
    PIXELS = "pixels"  # no spacing known: pixel units only


@dataclass(frozen=True)
class ImageMeasurements:
    """Everything measured on one source image."""

    sop_instance_uid: str
    geometry_level: GeometryLevel
    regions: tuple[RegionMeasurement, ...] = ()
    view: str = "unknown"  # "frontal", "lateral" or "unknown"
    isocenter_lps_mm: tuple[float, float, float] | None = None
    isocenter_source: str = ""  # which attribute/convention gave the isocenter (precedence is documented)
    notes: tuple[str, ...] = ()  # what could not be computed and why, assumptions made
    image_quantities: tuple[Quantity, ...] = field(default_factory=tuple)  # whole-image results (diaphragm, ...)
