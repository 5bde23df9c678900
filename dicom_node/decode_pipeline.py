"""Pipeline "decode": decodes the received pixels and reports what it found; produces no result objects.

It exercises the whole node (receive, route, worker, job bookkeeping) without a detector: the job summary says which
decoder read the image, its shape and stored-value range; an undecodable image ends the job in error with the
decoders' messages.
"""

from __future__ import annotations

import time

import numpy as np

from dicom_node.pipeline import PipelineOutcome
from inference.decoders import UndecodableImage, decode_pixels
from nodecore.config_schema import NodeConfig, Route
from nodecore.received import ReceivedObject


class DecodePipeline:
    """``options`` of the route's pipeline: ``external`` (bool, default True): allow the dcmtk fallback."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config

    def process(self, obj: ReceivedObject, route: Route) -> PipelineOutcome:
        options = route.pipeline.options if route.pipeline is not None else {}
        external = bool(options.get("external", True))
        t0 = time.perf_counter()
        try:
            image = decode_pixels(obj.path, external=external)
        except UndecodableImage as exc:
            return PipelineOutcome(errors=[str(exc)], summary={"decoded": False, "attempts": exc.attempts})
        except (OSError, ValueError) as exc:
            return PipelineOutcome(errors=[f"cannot decode {obj.path.name}: {exc}"], summary={"decoded": False})
        pixels = image.pixels
        finite = pixels if pixels.dtype.kind in "iu" else pixels[np.isfinite(pixels)]
        summary = {
            "decoded": True,
            "decoder": image.decoder_used,
            "shape": list(pixels.shape),
            "dtype": str(pixels.dtype),
            "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "photometric": image.photometric,
            "bits_stored": image.bits,
            "frames": image.number_of_frames,
            "transfer_syntax": image.transfer_syntax_uid,
            "warnings": list(image.warnings),
            "decode_ms": round((time.perf_counter() - t0) * 1e3, 1),
        }
        return PipelineOutcome(summary=summary)
