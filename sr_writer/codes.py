"""Coded concepts and UCUM units used in our result objects.

Standard codes (DCM, SCT, LN, UCUM) are used where DICOM PS3.16 has one (looked up in pydicom's concept
dictionary). Where it has none (isocenter offsets, box centre coordinates, SSDE conversion factor, dose shares) the
private coding scheme ``99DCMNODE`` is used; every object that uses it carries a Coding Scheme Identification
Sequence item describing it (see ``coding_scheme_identification``).
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from inference.types import CodedConcept as TypesConcept
from inference.types import QuantityKind

PRIVATE_SCHEME = "99DCMNODE"
PRIVATE_SCHEME_NAME = "dicom-node private concepts"
PRIVATE_SCHEME_ORGANIZATION = "dicom-node project"


def private(value: str, meaning: str) -> CodedConcept:
    """A concept of our private scheme (code value <= 16 characters)."""
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def coding_scheme_identification() -> Dataset:
    """Item for CodingSchemeIdentificationSequence (0008,0110) describing ``99DCMNODE``."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANIZATION
    return item


def concept(c: TypesConcept) -> CodedConcept:
    """Shared-type concept -> highdicom concept."""
    return CodedConcept(value=c.value, scheme_designator=c.scheme, meaning=c.meaning)


def ucum(value: str, meaning: str | None = None) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="UCUM", meaning=meaning or value)


UNITS: dict[str, CodedConcept] = {
    "mm": ucum("mm", "millimeter"),
    "cm": ucum("cm", "centimeter"),
    "cm2": ucum("cm2", "square centimeter"),
    "mGy": ucum("mGy", "milligray"),
    "mGy.cm": ucum("mGy.cm", "milligray centimeter"),
    "dGy.cm2": ucum("dGy.cm2", "decigray square centimeter"),
    "%": ucum("%", "percent"),
    "1": ucum("1", "no units"),
    "{pixels}": ucum("{pixels}", "pixels"),
}


def unit(u: str) -> CodedConcept:
    try:
        return UNITS[u]
    except KeyError:
        raise ValueError(f"unit {u!r} is not one of the UCUM units the SR writer knows: {sorted(UNITS)}") from None


@dataclass(frozen=True)
class QuantitySpec:
    """How one QuantityKind is written: concept name and the UCUM unit it must carry."""

    name: CodedConcept
    unit: str


def _std(code: object) -> CodedConcept:
    return CodedConcept.from_code(code)  # type: ignore[arg-type]


# Concept names per quantity kind. Standard codes first; private ones only where PS3.16 has no concept.
QUANTITY_SPECS: dict[QuantityKind, QuantitySpec] = {
    QuantityKind.BOX_WIDTH: QuantitySpec(_std(codes.SCT.Width), "mm"),  # SCT 103355008
    QuantityKind.BOX_HEIGHT: QuantitySpec(_std(codes.DCM.Height), "mm"),  # DCM 121207
    QuantityKind.ELLIPSE_AREA: QuantitySpec(_std(codes.SCT.Area), "cm2"),  # SCT 42798000
    QuantityKind.CENTER_X: QuantitySpec(private("CENTER-X", "Box centre patient x (LPS)"), "mm"),
    QuantityKind.CENTER_Y: QuantitySpec(private("CENTER-Y", "Box centre patient y (LPS)"), "mm"),
    QuantityKind.CENTER_Z: QuantitySpec(private("CENTER-Z", "Box centre patient z (LPS)"), "mm"),
    QuantityKind.ISO_OFFSET_LATERAL: QuantitySpec(
        private("ISO-OFFSET-LAT", "Lateral offset from isocenter"), "mm"
    ),
    QuantityKind.ISO_OFFSET_VERTICAL: QuantitySpec(
        private("ISO-OFFSET-VERT", "Vertical offset from isocenter"), "mm"
    ),
    QuantityKind.EFFECTIVE_DIAMETER: QuantitySpec(_std(codes.DCM.DerivedEffectiveDiameter), "cm"),  # DCM 113933
    QuantityKind.WATER_EQUIVALENT_DIAMETER: QuantitySpec(_std(codes.DCM.WaterEquivalentDiameter), "cm"),  # 113980
    QuantityKind.SSDE_FACTOR: QuantitySpec(private("SSDE-FACTOR", "SSDE conversion factor"), "1"),
    QuantityKind.SSDE: QuantitySpec(_std(codes.DCM.SizeSpecificDoseEstimate), "mGy"),  # DCM 113930
    QuantityKind.DLP: QuantitySpec(_std(codes.DCM.DLP), "mGy.cm"),  # DCM 113838 (over the region's extent)
    QuantityKind.DAP_SHARE: QuantitySpec(private("DAP-SHARE", "Region share of dose area product"), "dGy.cm2"),
    QuantityKind.DAP_FRACTION: QuantitySpec(private("DAP-FRACTION", "Region fraction of dose area product"), "%"),
    QuantityKind.DIAPHRAGM_Z: QuantitySpec(private("DIAPHRAGM-Z", "Diaphragm level patient z (LPS)"), "mm"),
    QuantityKind.CONFIDENCE: QuantitySpec(_std(codes.DCM.CertaintyOfFinding), "%"),  # DCM 111012 (CID 6048)
}

# Box size in pixels: only written when no physical size is available (geometry level PIXELS).
PIXEL_WIDTH = QuantitySpec(_std(codes.SCT.Width), "{pixels}")
PIXEL_HEIGHT = QuantitySpec(_std(codes.DCM.Height), "{pixels}")

# Measurement Method (SCT 370129005) values flagging each value as measured or estimated (CID 3627).
MEASURED = _std(codes.SCT.Measured)  # SCT 258104002
ESTIMATED = _std(codes.SCT.Estimated)  # SCT 414135002

ARTIFICIAL_INTELLIGENCE = _std(codes.DCM.ArtificialIntelligence)  # DCM 123110 (CID 7162)
PROCESSING_EQUIPMENT = _std(codes.DCM.ProcessingEquipment)  # DCM 109102, purpose of Contributing Equipment
ORIGINAL_SOURCE = _std(codes.DCM.OriginalSource)  # DCM 111040
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
NOT_COMPUTED = private("NOT-COMPUTED", "Not computed")  # TEXT: which quantity and why
NOTE = private("NOTE", "Processing note")  # TEXT: image-level notes (assumptions, what was not computed)
REGION_COUNT = private("REGION-COUNT", "Number of regions detected")
GEOMETRY_LEVEL = private("GEOMETRY-LEVEL", "Geometry level of measurements")
ISOCENTER_SOURCE = private("ISO-SOURCE", "Isocenter source")
TABLE_MOVE = private("TABLE-MOVE", "Table move to centre region")

# Procedure reported (TID 1500 row 4), from the source modality.
PROCEDURE_CT = CodedConcept("25045-6", "LN", "CT unspecified body region")
PROCEDURE_XR = CodedConcept("43468-8", "LN", "XR unspecified body region")
PROCEDURES = {"CT": PROCEDURE_CT, "CR": PROCEDURE_XR, "DX": PROCEDURE_XR, "RG": PROCEDURE_XR, "RF": PROCEDURE_XR}


def procedure_for(modality: str) -> CodedConcept:
    try:
        return PROCEDURES[modality]
    except KeyError:
        raise ValueError(
            f"no procedure code for source modality {modality!r}; supported: {', '.join(sorted(PROCEDURES))}"
        ) from None


def spec_for(kind: QuantityKind) -> QuantitySpec:
    return QUANTITY_SPECS[kind]


def kind_for(name: CodedConcept, unit_value: str) -> QuantityKind | None:
    """Inverse of ``QUANTITY_SPECS`` (concept name + unit identify a quantity kind)."""
    for kind, spec in QUANTITY_SPECS.items():
        if spec.name == name and spec.unit == unit_value:
            return kind
    return None
