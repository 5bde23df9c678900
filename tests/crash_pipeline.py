"""A test-only pipeline that kills its worker process on a marked object, and a launcher that registers it.

Run the node as ``python -m tests.crash_pipeline serve --config F``: run as the main module it registers pipeline
``crash-test`` in ``dicom_node.pipeline.PIPELINES``, and multiprocessing's ``spawn`` re-runs the main module (as
``__mp_main__``) in every worker, so the workers know it too. A plain import (pytest) registers nothing: the
product's registry never contains it.

The pipeline decodes the received pixels (pydicom) and reports ``decode_ms``; an object whose ImageComments is
``KILL-WORKER`` makes the worker exit at once with ``os._exit(70)`` (like a native crash in a decoder), so the job
can never finish.
"""

from __future__ import annotations

import os
import time

from dicom_node.pipeline import PIPELINES, PipelineOutcome, ReceivedObject

KILL_MARKER = "KILL-WORKER"
PIPELINE_NAME = "crash-test"

if __name__ in ("__main__", "__mp_main__"):  # the node's main process and its spawned workers, not pytest's
    PIPELINES.setdefault(PIPELINE_NAME, "tests.crash_pipeline:CrashOnMarkerPipeline")


class CrashOnMarkerPipeline:
    def __init__(self, config: object) -> None:
        self.config = config

    def process(self, obj: ReceivedObject, route: object) -> PipelineOutcome:
        import pydicom

        t0 = time.perf_counter()
        ds = pydicom.dcmread(obj.path)
        if str(ds.get("ImageComments", "")) == KILL_MARKER:
            os._exit(70)
        pixels = ds.pixel_array
        return PipelineOutcome(summary={"shape": list(pixels.shape), "max": int(pixels.max()),
                                        "decode_ms": round((time.perf_counter() - t0) * 1e3, 3)})


if __name__ == "__main__":
    from dicom_node.cli import main

    raise SystemExit(main())
