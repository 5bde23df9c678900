"""Process-wide logging set-up, shared by the main process (``service``) and the worker processes (``workers``).

PHI-safe logging to stderr (the journal under systemd, with ``<priority>`` prefixes); pynetdicom's and highdicom's
chatter only at DEBUG; library warnings routed through logging with quoted values blanked unless ``debug_phi``.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from dicom_node.logsafe import PhiSafeFormatter, debug_phi_enabled, install, redact


class _JournalFormatter(logging.Formatter):
    """Under systemd (``$JOURNAL_STREAM``): ``<priority>`` prefixes so journald keeps log levels, no timestamps."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prio = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in redact(super().format(record)).splitlines())


def setup_logging(level: str, debug_phi: bool) -> None:
    """PHI-safe logging to stderr (the journal under systemd); pynetdicom's chatter only at DEBUG."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(processName)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(PhiSafeFormatter("%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    apply_log_level(level)
    install(debug_phi=debug_phi)
    # Library warnings (highdicom, pydicom) can quote attribute values such as a patient's name: route them through
    # logging and blank quoted values unless debug_phi is on.
    logging.captureWarnings(True)
    warn_log = logging.getLogger("py.warnings")
    if not any(isinstance(f, _QuotedValueFilter) for f in warn_log.filters):
        warn_log.addFilter(_QuotedValueFilter())


class _QuotedValueFilter(logging.Filter):
    """Replaces quoted substrings of warning messages by <redacted> (they may be patient data)."""

    _QUOTED = re.compile(r"(\"[^\"\n]*\"|'[^'\n]*')")

    def filter(self, record: logging.LogRecord) -> bool:
        if not debug_phi_enabled():
            record.msg = self._QUOTED.sub("<redacted>", record.getMessage())
            record.args = None
        return True


def apply_log_level(level: str) -> None:
    logging.getLogger().setLevel(level)
    for chatty in ("pynetdicom", "highdicom"):  # library INFO lines (~30 per job for highdicom) only when debugging
        logging.getLogger(chatty).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
