"""``ReceivedObject``: a stored object as the network layer hands it to the queue, the workers and the pipelines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReceivedObject:
    """A spooled object: ``path`` holds the bytes exactly as received (file meta + dataset)."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    study_instance_uid: str = ""
    received_at: float = 0.0  # POSIX seconds
    job_id: int | None = None
