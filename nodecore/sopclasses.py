"""The one table of SOP classes and transfer syntaxes the node accepts, by UID, keyword and short alias.

Built on pydicom's public UID API only (the named constants of ``pydicom.uid`` and ``UID.name`` / ``.keyword`` /
``.type``), so names and types come from the DICOM standard as pydicom ships it and nothing is kept equal by hand.

``node.sop_classes`` / ``node.transfer_syntaxes`` in the configuration may name each entry by UID, by keyword
(``ComputedRadiographyImageStorage``, ``ExplicitVRLittleEndian``) or by a short alias (``cr``, ``explicit_le``);
``resolve_uid`` maps any of these to the UID, with a "did you mean" hint for a near miss. An empty configured list
means ``DEFAULT_SOP_CLASSES`` / ``DEFAULT_TRANSFER_SYNTAXES`` (every syntax the decoders handle).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydicom import uid as _pydicom_uid
from pydicom.uid import UID

from nodecore.hints import suggestion

VERIFICATION = "1.2.840.10008.1.1"  # Verification SOP Class (pydicom names no constant for it)
IMPLICIT_VR_LE = str(_pydicom_uid.ImplicitVRLittleEndian)
EXPLICIT_VR_LE = str(_pydicom_uid.ExplicitVRLittleEndian)
DEFLATED_EXPLICIT_VR_LE = str(_pydicom_uid.DeflatedExplicitVRLittleEndian)
EXPLICIT_VR_BE = str(_pydicom_uid.ExplicitVRBigEndian)

SOP_CLASS = "SOP Class"
TRANSFER_SYNTAX = "Transfer Syntax"

# short alias -> UID; the storage SOP classes accepted by default, in this order
SOP_CLASS_ALIASES: dict[str, str] = {
    "ct": str(_pydicom_uid.CTImageStorage),
    "cr": str(_pydicom_uid.ComputedRadiographyImageStorage),
    "dx": str(_pydicom_uid.DigitalXRayImageStorageForPresentation),
    "dx_processing": str(_pydicom_uid.DigitalXRayImageStorageForProcessing),
    "mg": str(_pydicom_uid.DigitalMammographyXRayImageStorageForPresentation),
    "mg_processing": str(_pydicom_uid.DigitalMammographyXRayImageStorageForProcessing),
    "io": str(_pydicom_uid.DigitalIntraOralXRayImageStorageForPresentation),
    "io_processing": str(_pydicom_uid.DigitalIntraOralXRayImageStorageForProcessing),
    "sc": str(_pydicom_uid.SecondaryCaptureImageStorage),
}
DEFAULT_SOP_CLASSES: tuple[str, ...] = tuple(SOP_CLASS_ALIASES.values())

# short alias -> UID (all little endian except explicit_be; the encapsulated syntaxes are explicit VR)
TRANSFER_SYNTAX_ALIASES: dict[str, str] = {
    "implicit_le": IMPLICIT_VR_LE,
    "explicit_le": EXPLICIT_VR_LE,
    "deflated_le": DEFLATED_EXPLICIT_VR_LE,
    "explicit_be": EXPLICIT_VR_BE,
    "jpeg_baseline": str(_pydicom_uid.JPEGBaseline8Bit),
    "jpeg_extended": str(_pydicom_uid.JPEGExtended12Bit),
    "jpeg_lossless": str(_pydicom_uid.JPEGLossless),
    "jpeg_lossless_sv1": str(_pydicom_uid.JPEGLosslessSV1),
    "jpegls_lossless": str(_pydicom_uid.JPEGLSLossless),
    "jpegls_near_lossless": str(_pydicom_uid.JPEGLSNearLossless),
    "jpeg2000_lossless": str(_pydicom_uid.JPEG2000Lossless),
    "jpeg2000": str(_pydicom_uid.JPEG2000),
    "htj2k_lossless": str(_pydicom_uid.HTJ2KLossless),
    "htj2k": str(_pydicom_uid.HTJ2K),
    "rle": str(_pydicom_uid.RLELossless),
}
# what the node accepts when node.transfer_syntaxes is empty: every syntax its decoders handle
_NOT_DEFAULT = ("explicit_be", "htj2k_lossless", "htj2k")
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(
    uid for alias, uid in TRANSFER_SYNTAX_ALIASES.items() if alias not in _NOT_DEFAULT
)

# Views of the same table: UID -> (keyword, alias) of the default storage classes; UID -> alias of the default
# transfer syntaxes.
STORAGE_SOP_CLASSES: dict[str, tuple[str, str]] = {
    uid: (UID(uid).keyword, alias) for alias, uid in SOP_CLASS_ALIASES.items()
}
TRANSFER_SYNTAXES: dict[str, str] = {
    uid: alias for alias, uid in TRANSFER_SYNTAX_ALIASES.items() if uid in DEFAULT_TRANSFER_SYNTAXES
}

# keyword -> UID of every SOP class and transfer syntax pydicom names (its public constants)
_KEYWORDS: dict[str, UID] = {
    name: value
    for name, value in vars(_pydicom_uid).items()
    if isinstance(value, UID) and value.keyword == name and value.type in (SOP_CLASS, TRANSFER_SYNTAX)
}
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def resolve_uid(text: str, kind: str) -> str:
    """A UID from an alias, a pydicom keyword or a UID; ``kind`` is ``SOP_CLASS`` or ``TRANSFER_SYNTAX``.

    Raises ValueError with a precise message (and a suggestion) when ``text`` is none of these. A well-formed UID
    pydicom does not know is accepted (e.g. a private SOP class); a known one of the other kind is not.
    """
    if kind not in (SOP_CLASS, TRANSFER_SYNTAX):
        raise ValueError(f"kind must be {SOP_CLASS!r} or {TRANSFER_SYNTAX!r}, not {kind!r}")
    text = text.strip()
    aliases = SOP_CLASS_ALIASES if kind == SOP_CLASS else TRANSFER_SYNTAX_ALIASES
    if text.lower() in aliases:
        return aliases[text.lower()]
    if text in _KEYWORDS:
        uid = _KEYWORDS[text]
        if uid.type != kind:
            raise ValueError(f"{text!r} is a {uid.type}, not a {kind}")
        return str(uid)
    if _UID_RE.match(text):
        if len(text) > 64:
            raise ValueError(f"UID {text!r} is longer than 64 characters")
        known = UID(text)
        if known.type and known.type != kind:
            raise ValueError(f"{text} is a {known.type} ({known.name}), not a {kind}")
        return text  # unknown but well-formed: e.g. a private SOP class
    keywords = [k for k, uid in _KEYWORDS.items() if uid.type == kind]
    lowered = {k.lower(): k for k in keywords}
    if text.lower() in lowered:
        return str(_KEYWORDS[lowered[text.lower()]])
    hint = suggestion(text, [*aliases, *keywords])
    raise ValueError(f"unknown {kind} {text!r}{hint}: use an alias ({', '.join(aliases)}), a keyword or a UID")


def resolve_sop_class(name_or_uid: str) -> str:
    """UID of a SOP class given its UID, keyword or alias; ValueError otherwise."""
    return resolve_uid(name_or_uid, SOP_CLASS)


def resolve_transfer_syntax(name_or_uid: str) -> str:
    """UID of a transfer syntax given its UID, keyword or alias; ValueError otherwise."""
    return resolve_uid(name_or_uid, TRANSFER_SYNTAX)


def sop_classes_or_default(configured: Iterable[str]) -> tuple[str, ...]:
    """Resolved configured SOP classes, or ``DEFAULT_SOP_CLASSES`` when none are configured."""
    resolved = tuple(dict.fromkeys(resolve_sop_class(s) for s in configured))
    return resolved or DEFAULT_SOP_CLASSES


def transfer_syntaxes_or_default(configured: Iterable[str]) -> tuple[str, ...]:
    """Resolved configured transfer syntaxes, or ``DEFAULT_TRANSFER_SYNTAXES`` when none are configured."""
    resolved = tuple(dict.fromkeys(resolve_transfer_syntax(s) for s in configured))
    return resolved or DEFAULT_TRANSFER_SYNTAXES


def uid_name(uid: str) -> str:
    """Human-readable name of a UID (pydicom's dictionary), or the UID itself when unknown."""
    name = UID(uid).name
    return name if name and name != uid else uid


def uid_type(uid: str) -> str:
    """``SOP Class``, ``Transfer Syntax``, ... for a UID pydicom knows; ``""`` otherwise."""
    return str(UID(uid).type or "")


sop_class_name = uid_name
transfer_syntax_name = uid_name
