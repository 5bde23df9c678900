"""What every inference backend is: the ``Backend`` interface and its errors (``inference.backends`` opens the
local ones, ``inference.triton`` the remote one; both import this module, so neither imports the other's)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class BackendError(RuntimeError):
    """A backend that cannot be opened or run (the message says which and why)."""


class BackendUnavailable(BackendError):
    """The requested backend is not installed or has no device here."""


class BackendTransientError(BackendError):
    """A remote backend cannot serve now (e.g. no Triton server answers): the job is worth running again later."""


class Backend(ABC):
    """One loaded model. ``max_batch`` is the largest batch ``run`` accepts (1 for a static batch-1 graph)."""

    name: str = ""
    device: str = "cpu"
    max_batch: int = 1
    output_names: tuple[str, ...] = ()

    @abstractmethod
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch (already in the model's layout) and return numpy outputs by name."""

    def describe(self) -> str:
        return f"{self.name} on {self.device}"

    def served_by(self) -> str:
        """What ran the last ``run`` (a remote backend names the server, or its local fallback)."""
        return self.name

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources (optional)."""
