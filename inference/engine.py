"""Detectors: a model card + a backend, loaded once per worker, warmed up, micro-batched.

``Detector.detect(ds)`` runs preprocessing (inference.preprocessing), the backend (inference.backends), the
decoder and NMS (inference.postprocess), and maps boxes back to ORIGINAL pixel coordinates (SCOORD convention of
inference.types: (0, 0) is the top-left corner of the first pixel). ``MicroBatcher`` groups images submitted by
several threads into one backend call (at most ``max_batch`` images, waiting at most ``max_wait_ms`` after the
first). ``DetectorPool`` validates every configured card at start and loads models on first use (cascades:
inference.cascade).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from pydicom.dataset import Dataset

from inference.backend_base import Backend, BackendTransientError
from inference.backends import open_backend
from inference.modelcard import TORCHVISION_FORMATS, ModelCard, load_card
from inference.orientation import Orientation
from inference.postprocess import Candidates, postprocess
from inference.preprocessing import PreparedImage, preprocess
from inference.types import Box, Detection
from nodecore.config_schema import ModelSpec

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Thread-safe micro-batching: ``submit(item)`` returns a Future; a worker thread calls ``fn(items)``.

    A batch closes when it holds ``max_batch`` items or ``max_wait_ms`` after its first item arrived, whichever
    comes first. ``fn`` must return one result per item, in order; an exception fails every future of the batch.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 8, max_wait_ms: float = 5.0,
                 name: str = "batcher") -> None:  # fmt: skip
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self._cond = threading.Condition()
        self._queue: list[tuple[T, Future[R]]] = []
        self._arrivals: list[float] = []  # monotonic arrival time of each queued item
        self._closed = False
        self.batch_sizes: list[int] = []  # sizes of the batches run so far (for tests and metrics)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future[R]:
        fut: Future[R] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("MicroBatcher is closed")
            self._queue.append((item, fut))
            self._arrivals.append(time.monotonic())
            self._cond.notify_all()
        return fut

    def __call__(self, item: T) -> R:
        return self.submit(item).result()

    def _take(self) -> list[tuple[T, Future[R]]] | None:
        with self._cond:
            while True:
                if self._queue:
                    deadline = self._arrivals[0] + self.max_wait_s  # the oldest waiting item sets the deadline
                    now = time.monotonic()
                    if len(self._queue) >= self.max_batch or now >= deadline or self._closed:
                        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                        del self._arrivals[: self.max_batch]
                        return batch
                    self._cond.wait(deadline - now)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            items = [b[0] for b in batch]
            self.batch_sizes.append(len(items))
            try:
                results = list(self.fn(items))
                if len(results) != len(items):
                    raise RuntimeError(
                        f"batch function returned {len(results)} results for {len(items)} items"
                    )
            except BaseException as exc:  # hand every failure to the waiting callers
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), res in zip(batch, results, strict=True):
                fut.set_result(res)

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)


@dataclass(frozen=True)
class DetectItem:
    """One image for ``detect_batch``: a dataset and, when already decoded, its STORED pixel values."""

    ds: Dataset | None
    pixels: np.ndarray | None = None
    orientation: Orientation | None = None  # None: from the header (inference.orientation)


class Detector:
    """One model, loaded once; thread-safe. Boxes come back in ORIGINAL pixels as ``inference.types.Detection``."""

    def __init__(
        self, card: ModelCard, backend: Backend, *, max_batch: int = 8, max_wait_ms: float = 5.0,
        micro_batching: bool = False,
    ) -> None:  # fmt: skip
        self.card = card
        self.micro_batching = micro_batching  # detect() goes through the MicroBatcher unless told otherwise
        self.backend = backend
        self.identity = card.identity()
        self.max_batch = max(1, min(int(max_batch), backend.max_batch))
        if card.output.format in TORCHVISION_FORMATS:  # torchvision exports return per-image outputs
            self.max_batch = 1
        self.max_wait_ms = float(max_wait_ms)
        self._lock = threading.Lock()
        self._batcher: MicroBatcher[PreparedImage, dict[str, np.ndarray]] | None = None
        self.warm = False

    @classmethod
    def from_spec(cls, spec: ModelSpec, card: ModelCard | None = None, *, warmup: bool = True) -> Detector:
        """Load the model of a configured ``ModelSpec`` (the card is loaded and validated when not given)."""
        card = card or load_card(spec.card)
        backend = open_backend(card, spec.backend, max_batch=spec.max_batch, options=spec.options,
                               triton=spec.triton)  # fmt: skip
        det = cls(card, backend, max_batch=spec.max_batch, max_wait_ms=spec.max_wait_ms,
                  micro_batching=bool(spec.options.get("micro_batching", False)))  # fmt: skip
        if warmup:
            det.warmup()
        return det

    @classmethod
    def from_card(cls, card: ModelCard | str, backend: str = "auto", **kwargs: Any) -> Detector:
        """Convenience: ``Detector.from_card('builtin:reference', 'onnxruntime')``."""
        card = card if isinstance(card, ModelCard) else load_card(card)
        spec = ModelSpec(name=card.name, card=str(card.path), backend=backend, **kwargs)
        return cls.from_spec(spec, card)

    # -- running

    def warmup(self, runs: int = 2) -> None:
        """Run the model on blank inputs (batch 1 and the largest batch) so the first real image is not slow."""
        c, h, w = self.card.input.channels, self.card.input.height, self.card.input.width
        quick = getattr(self.backend, "quick", None)  # a remote backend: do not wait for an unreachable server
        with quick() if quick is not None else nullcontext():
            try:
                for n in sorted({1, self.max_batch})[: max(1, runs)]:
                    self.run_tensors([np.zeros((c, h, w), dtype=np.float32)] * n)
            except BackendTransientError as exc:
                log.warning("model %s: warm-up skipped, %s", self.card.name, exc)
                return
        self.warm = True

    def _layout(self, tensors: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack(tensors)
        if self.card.input.layout == "NHWC":
            batch = np.transpose(batch, (0, 2, 3, 1))
        dtype = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}[self.card.input.dtype]
        return np.ascontiguousarray(batch, dtype=dtype)

    def run_tensors(self, tensors: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Raw outputs per image for (C, H, W) tensors, in chunks of at most ``max_batch``."""
        results: list[dict[str, np.ndarray]] = []
        for start in range(0, len(tensors), self.max_batch):
            chunk = tensors[start : start + self.max_batch]
            with self._lock:
                out = self.backend.run(self._layout(chunk))
            n = len(chunk)
            for i in range(n):
                item: dict[str, np.ndarray] = {}
                for name, arr in out.items():
                    if n == 1:
                        item[name] = arr
                    elif arr.ndim >= 1 and arr.shape[0] == n:
                        item[name] = arr[i : i + 1]
                    else:
                        raise RuntimeError(
                            f"output {name} of shape {arr.shape} has no batch dimension of {n}"
                        )
                results.append(item)
        return results

    def prepare(
        self, ds: Dataset | None, pixels: np.ndarray | None = None, orientation: Orientation | None = None
    ) -> PreparedImage:
        """Model input of one image; ``orientation``: the turn to the head-up view (default: from the header)."""
        if ds is None:
            if pixels is None:
                raise ValueError("need a dataset or pixels")
            return preprocess(pixels, self.card, orientation=orientation)
        return preprocess(ds, self.card, pixels=pixels, orientation=orientation)

    def to_detections(self, cand: Candidates, prepared: PreparedImage) -> list[Detection]:
        """Candidates in model-input pixels -> Detections in ORIGINAL pixels (zero-area boxes dropped)."""
        boxes = prepared.transform.boxes_to_original(cand.boxes, clip=True)
        out = []
        for (x1, y1, x2, y2), score, cid in zip(boxes, cand.scores, cand.class_ids, strict=True):
            if x2 <= x1 or y2 <= y1:  # entirely outside the image (letterbox padding)
                continue
            cls = self.card.classes[int(cid)]
            out.append(
                Detection(
                    cls.name,
                    cls.finding_site,
                    float(np.clip(score, 0.0, 1.0)),
                    Box(float(x1), float(y1), float(x2), float(y2)),
                    self.identity,
                )  # fmt: skip
            )
        return out

    def detect_prepared(
        self, prepared: Sequence[PreparedImage], *, score_threshold: float | None = None,
        nms_iou: float | None = None, classes: Sequence[str] | None = None, use_batcher: bool | None = None,
    ) -> list[list[Detection]]:  # fmt: skip
        if self.micro_batching if use_batcher is None else use_batcher:
            futures = [self.batcher.submit(p) for p in prepared]
            raw = [f.result() for f in futures]
        else:
            raw = self.run_tensors([p.tensor for p in prepared])
        out = []
        for p, r in zip(prepared, raw, strict=True):
            (cand,) = postprocess(
                r, self.card, score_threshold=score_threshold, nms_iou=nms_iou, classes=classes
            )
            out.append(self.to_detections(cand, p))
        return out

    def detect(
        self, ds: Dataset | None, pixels: np.ndarray | None = None, *, score_threshold: float | None = None,
        nms_iou: float | None = None, classes: Sequence[str] | None = None, use_batcher: bool | None = None,
        orientation: Orientation | None = None,
    ) -> list[Detection]:  # fmt: skip
        """Detections on one image (``pixels``: its stored values when already decoded), best score first.

        ``orientation``: the turn to the head-up view (default: from the header); boxes are in STORED pixels.

        ``use_batcher``: go through the shared MicroBatcher, so concurrent callers (threads) share backend calls;
        default: ``ModelSpec.options['micro_batching']``.
        """
        prepared = self.prepare(ds, pixels, orientation)
        return self.detect_prepared(
            [prepared],
            score_threshold=score_threshold,
            nms_iou=nms_iou,
            classes=classes,
            use_batcher=use_batcher,
        )[0]

    def detect_batch(
        self, items: Sequence[DetectItem | Dataset | np.ndarray], *, score_threshold: float | None = None,
        nms_iou: float | None = None, classes: Sequence[str] | None = None,
    ) -> list[list[Detection]]:  # fmt: skip
        """Detections for several images in as few backend calls as ``max_batch`` allows."""
        prepared = []
        for it in items:
            if isinstance(it, DetectItem):
                prepared.append(self.prepare(it.ds, it.pixels, it.orientation))
            elif isinstance(it, Dataset):
                prepared.append(self.prepare(it))
            else:
                prepared.append(self.prepare(None, np.asarray(it)))
        return self.detect_prepared(
            prepared, score_threshold=score_threshold, nms_iou=nms_iou, classes=classes
        )

    @property
    def batcher(self) -> MicroBatcher[PreparedImage, dict[str, np.ndarray]]:
        """The detector's MicroBatcher (created on first use; max_batch / max_wait_ms from the ModelSpec)."""
        with self._lock:
            if self._batcher is None:
                self._batcher = MicroBatcher(
                    lambda ps: self.run_tensors([p.tensor for p in ps]), self.max_batch, self.max_wait_ms,
                    name=f"batcher-{self.card.name}",
                )  # fmt: skip
            return self._batcher

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        self.backend.close()


class DetectorPool:
    """The models of a configuration: every card validated at construction, each model loaded on first use.

    ``preload(names)`` loads and warms models before the node reports ready; models only reached through a
    cascade gate are left for ``get`` to load when the gate first fires.
    """

    def __init__(
        self, models: Mapping[str, ModelSpec], *, validate: bool = True,
        loader: Callable[[ModelSpec, ModelCard], Detector] | None = None,
    ) -> None:  # fmt: skip
        self.specs = dict(models)
        self._cards: dict[str, ModelCard] = {}
        self._detectors: dict[str, Detector] = {}
        self._locks: dict[str, threading.Lock] = {name: threading.Lock() for name in self.specs}
        self._loader = loader or (lambda spec, card: Detector.from_spec(spec, card))
        self.load_log: list[tuple[str, float]] = []  # (model, seconds) in load order
        if validate:
            for name in self.specs:
                self.card(name)

    def _spec(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise KeyError(
                f"model {name!r} is not configured (configured: {', '.join(sorted(self.specs))})"
            ) from None

    def card(self, name: str) -> ModelCard:
        if name not in self._cards:
            self._cards[name] = load_card(self._spec(name).card)
        return self._cards[name]

    def is_loaded(self, name: str) -> bool:
        return name in self._detectors

    def get(self, name: str) -> Detector:
        """The loaded, warmed detector for ``name`` (loaded now if this is its first use)."""
        det = self._detectors.get(name)
        if det is not None:
            return det
        with self._locks.setdefault(name, threading.Lock()):
            det = self._detectors.get(name)
            if det is None:
                t0 = time.perf_counter()
                det = self._loader(self._spec(name), self.card(name))
                self.load_log.append((name, time.perf_counter() - t0))
                log.info("loaded model %s in %.2f s", name, self.load_log[-1][1])
                self._detectors[name] = det
        return det

    def preload(self, names: Sequence[str]) -> None:
        for name in names:
            self.get(name)

    def close(self) -> None:
        for det in self._detectors.values():
            det.close()
        self._detectors.clear()
