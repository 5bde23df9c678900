"""Logging without PHI.

* ``describe(ds)``: a PHI-free one-liner for a dataset (SOP class name, SOP Instance UID, modality, transfer syntax).
* ``PhiFilter``: a ``logging.Filter`` that redacts PHI values from records: values of patient-identifying
  attributes in pydicom dumps (``(0010,0010) Patient's Name  PN: 'X'``) and in ``Keyword=value`` /
  ``Keyword: value`` text (a quoted value up to its quote, an unquoted one up to the next ``,`` ``;`` ``)`` or the
  line end: redacting too much is the safe side). ``PhiSafeFormatter`` redacts the formatted text, tracebacks
  included.
* ``set_debug_phi(True)`` (the ``node.debug_phi`` config flag) lets PHI through, for an admin debugging a site.
* ``install(debug_phi=...)`` puts the filter on every handler of the root logger.

SOP Instance UIDs, AE titles and addresses are not treated as PHI (they are needed to trace a job).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from nodecore.sopclasses import sop_class_name, transfer_syntax_name

REDACTED = "<redacted>"

# Attributes whose values identify a patient (PS3.15 Annex E basic profile, the ones seen in these images).
PHI_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "MedicalRecordLocator",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "RequestingPhysician",
        "InstitutionName",
        "InstitutionAddress",
        "StudyID",
        "MilitaryRank",
        "EthnicGroup",
        "PatientComments",
    }
)
# pydicom's element names for the same attributes as they appear in dumps, and every (0010,xxxx) element.
_PHI_TAGS = {
    "0008,0050",  # Accession Number
    "0008,0080",  # Institution Name
    "0008,0081",  # Institution Address
    "0008,0090",  # Referring Physician's Name
    "0008,1050",  # Performing Physician's Name
    "0008,1070",  # Operators' Name
    "0020,0010",  # Study ID
    "0032,1032",  # Requesting Physician
}
_DUMP_RE = re.compile(
    r"(\((?:0010,[0-9A-Fa-f]{4}|" + "|".join(re.escape(t) for t in _PHI_TAGS) + r")\)[^\n:]*?\b[A-Z]{2}:\s*)([^\n]*)"
)
_KEYWORD_RE = re.compile(
    r"\b(" + "|".join(sorted(PHI_KEYWORDS, key=len, reverse=True)) + r")(\s*[=:]\s*)('[^'\n]*'|\"[^\"\n]*\"|[^,;\n)]*)"
)

_debug_phi = False


def set_debug_phi(enabled: bool) -> None:
    """Let PHI appear in logs (admin debugging only). Process-wide."""
    global _debug_phi
    _debug_phi = bool(enabled)


def debug_phi_enabled() -> bool:
    return _debug_phi


def redact(text: str) -> str:
    """``text`` with PHI values replaced by ``<redacted>`` (unchanged when debug_phi is on)."""
    if _debug_phi or not text:
        return text
    text = _DUMP_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return _KEYWORD_RE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


class PhiFilter(logging.Filter):
    """Redacts PHI from a record's message (arguments merged in) and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _debug_phi:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class PhiSafeFormatter(logging.Formatter):
    """A formatter whose whole output (message, traceback, stack) goes through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def install(debug_phi: bool = False, logger: logging.Logger | None = None) -> None:
    """Set the debug_phi switch and add a ``PhiFilter`` to every handler of ``logger`` (root by default).

    Handlers added later should use ``PhiSafeFormatter`` or call this again.
    """
    set_debug_phi(debug_phi)
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, PhiFilter) for f in handler.filters):
            handler.addFilter(PhiFilter())


def _get(ds: Any, keyword: str) -> str:
    try:
        value = getattr(ds, keyword, None)
    except Exception:
        return "?"
    return "" if value is None else str(value).strip()


def describe(ds: Any) -> str:
    """PHI-free one-liner: ``<SOP class name> sop=<SOP Instance UID> modality=<X> ts=<transfer syntax name>``.

    ``ds`` is a pydicom Dataset (its file_meta gives the transfer syntax) or any object with ``sop_class_uid``,
    ``sop_instance_uid`` and ``transfer_syntax_uid`` attributes (ReceivedObject, StoredObject).
    """
    if hasattr(ds, "sop_instance_uid"):
        sop_class = str(getattr(ds, "sop_class_uid", "") or "")
        sop_instance = str(ds.sop_instance_uid or "")
        modality = str(getattr(ds, "modality", "") or "")
        ts = str(getattr(ds, "transfer_syntax_uid", "") or "")
    else:
        sop_class = _get(ds, "SOPClassUID")
        sop_instance = _get(ds, "SOPInstanceUID")
        modality = _get(ds, "Modality")
        meta = getattr(ds, "file_meta", None)
        ts = _get(meta, "TransferSyntaxUID") if meta is not None else ""
    parts = [sop_class_name(sop_class) if sop_class else "unknown SOP class", f"sop={sop_instance or '?'}"]
    parts.append(f"modality={modality or '?'}")
    parts.append(f"ts={transfer_syntax_name(ts) if ts else '?'}")
    return " ".join(parts)
