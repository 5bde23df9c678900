"""Deterministic UIDs for result objects.

A result's UIDs derive from the source SOP Instance UID, the model version and the output kind, so processing the
same object again with the same model replaces the earlier result instead of adding a duplicate. UIDs use the
``2.25.<decimal 128-bit integer>`` form (ISO/IEC 9834-8), which needs no registered organisation root.
"""

from __future__ import annotations

import hashlib


def derived_uid(*parts: str) -> str:
    """A UID that is a pure function of ``parts`` (at most 44 characters)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def result_uids(source_sop_instance_uid: str, model_version: str, output_kind: str) -> dict[str, str]:
    """SOP Instance UID and Series Instance UID of one result object (one result series per source and kind)."""
    base = (source_sop_instance_uid, model_version, output_kind)
    return {
        "SOPInstanceUID": derived_uid("instance", *base),
        "SeriesInstanceUID": derived_uid("series", *base),
    }
