"""SOP classes and transfer syntaxes the node accepts, by UID and by the names used in the configuration.

``config.node.sop_classes`` may name a storage SOP class by its UID, by its pydicom/pynetdicom keyword
(``ComputedRadiographyImageStorage``) or by a short alias (``cr``, ``dx``, ``ct`` ...); ``resolve_sop_class`` maps any
of these to the UID. An empty configured list means ``DEFAULT_SOP_CLASSES``. The same holds for transfer syntaxes:
an empty ``config.node.transfer_syntaxes`` means ``DEFAULT_TRANSFER_SYNTAXES`` (every syntax the decoders handle).
"""

from __future__ import annotations

from collections.abc import Iterable

VERIFICATION = "1.2.840.10008.1.1"

# UID -> (keyword, short alias)
STORAGE_SOP_CLASSES: dict[str, tuple[str, str]] = {
    "1.2.840.10008.5.1.4.1.1.2": ("CTImageStorage", "ct"),
    "1.2.840.10008.5.1.4.1.1.1": ("ComputedRadiographyImageStorage", "cr"),
    "1.2.840.10008.5.1.4.1.1.1.1": ("DigitalXRayImageStorageForPresentation", "dx"),
    "1.2.840.10008.5.1.4.1.1.1.1.1": ("DigitalXRayImageStorageForProcessing", "dx_processing"),
    "1.2.840.10008.5.1.4.1.1.1.2": ("DigitalMammographyXRayImageStorageForPresentation", "mg"),
    "1.2.840.10008.5.1.4.1.1.1.2.1": ("DigitalMammographyXRayImageStorageForProcessing", "mg_processing"),
    "1.2.840.10008.5.1.4.1.1.1.3": ("DigitalIntraOralXRayImageStorageForPresentation", "io"),
    "1.2.840.10008.5.1.4.1.1.1.3.1": ("DigitalIntraOralXRayImageStorageForProcessing", "io_processing"),
    "1.2.840.10008.5.1.4.1.1.7": ("SecondaryCaptureImageStorage", "sc"),
}
DEFAULT_SOP_CLASSES: tuple[str, ...] = tuple(STORAGE_SOP_CLASSES)

# UID -> short name (all little endian; the encapsulated syntaxes are explicit VR)
TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "implicit_le",
    "1.2.840.10008.1.2.1": "explicit_le",
    "1.2.840.10008.1.2.1.99": "deflated_le",
    "1.2.840.10008.1.2.4.50": "jpeg_baseline",
    "1.2.840.10008.1.2.4.51": "jpeg_extended",
    "1.2.840.10008.1.2.4.57": "jpeg_lossless",
    "1.2.840.10008.1.2.4.70": "jpeg_lossless_sv1",
    "1.2.840.10008.1.2.4.80": "jpegls_lossless",
    "1.2.840.10008.1.2.4.81": "jpegls_near_lossless",
    "1.2.840.10008.1.2.4.90": "jpeg2000_lossless",
    "1.2.840.10008.1.2.4.91": "jpeg2000",
    "1.2.840.10008.1.2.5": "rle",
}
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(TRANSFER_SYNTAXES)
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"

_SOP_BY_NAME: dict[str, str] = {}
for _uid, (_kw, _alias) in STORAGE_SOP_CLASSES.items():
    _SOP_BY_NAME[_kw.lower()] = _uid
    _SOP_BY_NAME[_alias] = _uid
_TS_BY_NAME: dict[str, str] = {name: uid for uid, name in TRANSFER_SYNTAXES.items()}


def _is_uid(text: str) -> bool:
    return bool(text) and len(text) <= 64 and all(p.isdigit() for p in text.split("."))


def resolve_sop_class(name_or_uid: str) -> str:
    """UID of a storage SOP class given its UID, keyword or alias (case-insensitive); ValueError otherwise.

    Any syntactically valid UID is accepted (a site may add a class the table does not list).
    """
    text = name_or_uid.strip()
    if _is_uid(text):
        return text
    try:
        return _SOP_BY_NAME[text.lower()]
    except KeyError:
        known = ", ".join(sorted(a for _, a in STORAGE_SOP_CLASSES.values()))
        raise ValueError(f"unknown SOP class {name_or_uid!r}: use a UID, a keyword or one of {known}") from None


def resolve_transfer_syntax(name_or_uid: str) -> str:
    """UID of a transfer syntax given its UID or short name (``explicit_le``, ``jpeg2000`` ...); ValueError otherwise."""
    text = name_or_uid.strip()
    if _is_uid(text):
        return text
    try:
        return _TS_BY_NAME[text.lower()]
    except KeyError:
        raise ValueError(
            f"unknown transfer syntax {name_or_uid!r}: use a UID or one of {', '.join(sorted(_TS_BY_NAME))}"
        ) from None


def sop_classes_or_default(configured: Iterable[str]) -> tuple[str, ...]:
    """Resolved configured SOP classes, or ``DEFAULT_SOP_CLASSES`` when none are configured."""
    resolved = tuple(dict.fromkeys(resolve_sop_class(s) for s in configured))
    return resolved or DEFAULT_SOP_CLASSES


def transfer_syntaxes_or_default(configured: Iterable[str]) -> tuple[str, ...]:
    """Resolved configured transfer syntaxes, or ``DEFAULT_TRANSFER_SYNTAXES`` when none are configured."""
    resolved = tuple(dict.fromkeys(resolve_transfer_syntax(s) for s in configured))
    return resolved or DEFAULT_TRANSFER_SYNTAXES


def sop_class_name(uid: str) -> str:
    """Human-readable name of a SOP class (pydicom's dictionary), or the UID itself when unknown."""
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid


def transfer_syntax_name(uid: str) -> str:
    """Human-readable name of a transfer syntax, or the UID itself when unknown."""
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid
