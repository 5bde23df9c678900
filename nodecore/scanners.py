"""The one rule that decides whether a site's per-scanner setting applies to an image.

``measurement.scanner_calibrations`` (water-equivalent calibration, ``inference.dose``) and
``measurement.options.scanner_geometry`` (source distances and tube side, ``inference.geometry``) both name a scanner
by header attributes (``match: {Manufacturer: ..., ManufacturerModelName: ...}``). An entry applies when EVERY
attribute it names is present in the header with a non-empty value equal to the configured one, compared without
leading/trailing spaces and without regard to case (a multi-valued attribute as its values joined by ``\\``).

A missing or empty attribute never matches, whatever the configured value: a calibration or a source distance
behind reported millimetres must not be applied to an image that does not say which scanner made it. (The loader
rejects empty configured values, so "match the attribute's absence" cannot be written either.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


class ScannerEntry(Protocol):
    @property
    def match(self) -> Mapping[str, str]: ...


E = TypeVar("E", bound=ScannerEntry)


def _header_text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed element is as good as absent here
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def scanner_matches(ds: Dataset, match: Mapping[str, str]) -> bool:
    """True when every attribute of ``match`` is present, non-empty and equal (trimmed, case-insensitive)."""
    for keyword, wanted in match.items():
        have = _header_text(ds, keyword)
        if not have or have.upper() != str(wanted).strip().upper():
            return False
    return True


def first_match(ds: Dataset, entries: Iterable[E]) -> E | None:
    """The first entry whose ``match`` holds for ``ds`` (``scanner_matches``), or None."""
    for entry in entries:
        if scanner_matches(ds, entry.match):
            return entry
    return None
