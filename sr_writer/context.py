"""Who writes the results: our device identity, the model, series numbers and the output kinds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata

from inference.types import ModelIdentity
from nodecore.uids import derived_uid

OUTPUT_KINDS = ("sr", "sc", "gsps", "plain_sr")
DEFAULT_SERIES_NUMBERS: Mapping[str, int] = {"sr": 9901, "sc": 9902, "gsps": 9903, "plain_sr": 9904}


def _package_version() -> str:
    try:
        return metadata.version("dicom-node")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True)
class ResultContext:
    """Identity of the writing device and how result series are numbered.

    ``device_uid`` derives from the model name, version and weights hash: a new model gives a new Device UID (the
    Contributing Equipment and the SR device observer carry it).
    """

    model: ModelIdentity
    manufacturer: str = "dicom-node project"
    manufacturer_model_name: str = "dicom-node"
    software_version: str = field(default_factory=_package_version)
    device_serial_number: str = "1"
    institution_name: str | None = None
    institutional_department_name: str | None = None
    station_name: str | None = None
    series_numbers: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_SERIES_NUMBERS))
    kinds: tuple[str, ...] = ("sr", "sc", "gsps")
    algorithm_parameters: tuple[str, ...] = ()  # e.g. "score_threshold=0.5", recorded in TID 4019
    sc_compression: str = "jpeg"  # secondary capture: jpeg | jpeg-ls | jpeg2000 | none (see sr_writer.sc)
    sc_max_size: int = 0  # longest side of the secondary capture in pixels; 0: the compression's default

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(OUTPUT_KINDS)
        if unknown:
            raise ValueError(f"unknown output kinds {sorted(unknown)}; known: {', '.join(OUTPUT_KINDS)}")

    @property
    def device_uid(self) -> str:
        return derived_uid("device", self.model.name, self.model.version, self.model.weights_sha256)

    def series_number(self, kind: str) -> int:
        return int(self.series_numbers.get(kind, DEFAULT_SERIES_NUMBERS[kind]))
