"""Inference backends: ONNX Runtime (CPU, CUDA), torch (TorchScript / torch.export, CPU or CUDA FP16), TensorRT.

A backend runs one loaded model on a batch ``(B, C, H, W)`` (or NHWC) numpy array and returns the raw outputs by
name; decoding is done by inference.postprocess. ``open_backend(card, "auto")`` picks TensorRT, then ONNX Runtime
CUDA, then torch CUDA, then ONNX Runtime CPU, and logs what it chose and why.

TensorRT engines are built from the card's ONNX file with the TensorRT Python API (FP16 by default, FP32, or INT8
with a calibration set; one optimisation profile for a dynamic batch) and cached on disk under a key made of the
ONNX SHA-256, the TensorRT version, the GPU name and compute capability, the precision and the profile, so a node
deserialises instead of rebuilding on start. Inference is enqueued on a CUDA stream (``execute_async_v3``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.backend_base import Backend as Backend  # re-exported: the interface and errors callers use
from inference.backend_base import BackendError as BackendError
from inference.backend_base import BackendTransientError as BackendTransientError
from inference.backend_base import BackendUnavailable as BackendUnavailable
from inference.modelcard import ModelCard
from nodecore.config_schema import MODEL_BACKENDS

log = logging.getLogger(__name__)

BACKENDS = MODEL_BACKENDS  # the names the configuration accepts (nodecore.config_schema)
DEFAULT_ENGINE_CACHE = Path(
    os.environ.get("DICOM_NODE_ENGINE_CACHE", Path.home() / ".cache" / "dicom-node" / "engines")
)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


# ---------------------------------------------------------------- ONNX Runtime


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime with the CPU or the CUDA execution provider."""

    def __init__(
        self, path: Path, *, cuda: bool = False, threads: int | None = None, device_id: int = 0
    ) -> None:
        import onnxruntime as ort

        providers: list[Any] = ["CPUExecutionProvider"]
        if cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "onnxruntime-cuda: CUDAExecutionProvider not available in this onnxruntime build "
                    f"(providers: {', '.join(ort.get_available_providers())})"
                )
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime could not load {path.name}: {exc}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = _ORT_DTYPES.get(inp.type, np.float32)
        b = inp.shape[0] if inp.shape else None
        self.max_batch = b if isinstance(b, int) and b > 0 else 1 << 16
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.name = "onnxruntime-cuda" if cuda else "onnxruntime-cpu"
        self.device = f"cuda:{device_id}" if cuda else "cpu"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)})
        return dict(zip(self.output_names, (np.asarray(o) for o in outs), strict=True))


# ---------------------------------------------------------------- torch


def _torch_outputs(out: Any, names: tuple[str, ...] | None) -> dict[str, np.ndarray]:
    def to_np(t: Any) -> np.ndarray:
        t = t.detach()
        if t.dtype.is_floating_point and t.element_size() < 4:  # fp16 / bf16 -> float32 for numpy decoders
            t = t.float()
        return t.cpu().numpy()

    if isinstance(out, Mapping):
        return {str(k): to_np(v) for k, v in out.items()}
    seq = list(out) if isinstance(out, list | tuple) else [out]
    if len(seq) == 1 and isinstance(seq[0], Mapping):  # torchvision-style list of dicts (batch 1)
        return {str(k): to_np(v) for k, v in seq[0].items()}
    keys = list(names) if names and len(names) == len(seq) else [f"output{i}" for i in range(len(seq))]
    return {k: to_np(v) for k, v in zip(keys, seq, strict=True)}


class TorchBackend(Backend):
    """TorchScript (``.pt``/``.ts``) or a torch.export program (``.pt2``); CUDA runs in FP16 unless ``fp16`` False."""

    def __init__(
        self, path: Path, *, device: str = "cpu", fp16: bool | None = None, output_names: tuple[str, ...] | None = None,
        threads: int | None = None,
    ) -> None:  # fmt: skip
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch-cuda: torch has no CUDA device here")
        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.fp16 = device.startswith("cuda") if fp16 is None else bool(fp16 and device.startswith("cuda"))
        try:
            if path.suffix == ".pt2":
                module = torch.export.load(str(path)).module()
                module.to(device)
            else:
                import warnings

                with warnings.catch_warnings():  # TorchScript is deprecated upstream, still the portable format
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(str(path), map_location=device)
                module.eval()
        except Exception as exc:  # torch raises RuntimeError and friends with useful text
            raise BackendError(f"torch could not load {path.name}: {exc}") from None
        if self.fp16:
            module = module.half()
        self.module = module
        self.names = output_names
        self.device = device
        self.name = "torch-cuda" if device.startswith("cuda") else "torch-cpu"
        self.max_batch = 1 << 16
        self.output_names = tuple(output_names or ())

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if self.fp16 and x.dtype.is_floating_point:
            x = x.half()
        with torch.inference_mode():
            out = self.module(x)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return _torch_outputs(out, self.names)


# ---------------------------------------------------------------- TensorRT


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialised TensorRT engine depends on; ``digest`` names the cache file."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str  # fp16 | fp32 | int8
    batch_profile: tuple[int, int, int]  # min, opt, max
    input_hw: tuple[int, int]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True, default=list).encode()).hexdigest()


def engine_cache_path(cache_dir: Path, model_name: str, key: EngineKey) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name)
    return cache_dir / f"{safe}-{key.precision}-{key.digest[:20]}.engine"


def _trt_torch_dtype(trt: Any, torch: Any, dt: Any) -> Any:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    for attr, tdt in (("int64", torch.int64), ("uint8", torch.uint8), ("bf16", torch.bfloat16)):
        if hasattr(trt, attr):
            table[getattr(trt, attr)] = tdt
    try:
        return table[dt]
    except KeyError:
        raise BackendError(f"tensorrt: unsupported tensor dtype {dt}") from None


def _make_calibrator(trt: Any, torch: Any, batches: list[np.ndarray], cache_file: Path) -> Any:
    """An entropy calibrator feeding preprocessed calibration batches (N, C, H, W float32) from device memory."""

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # TensorRT, when installed
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = batches
            self.index = 0
            self.device_batch: Any = None

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0]) if self.batches else 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(self.batches):
                return None
            self.device_batch = torch.from_numpy(np.ascontiguousarray(self.batches[self.index])).cuda()
            self.index += 1
            return [int(self.device_batch.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(cache))

    return _Calibrator()


class TensorRTBackend(Backend):
    """A TensorRT engine built from the card's ONNX file (cached on disk), executed on a CUDA stream."""

    def __init__(
        self,
        card: ModelCard,
        *,
        precision: str = "fp16",
        max_batch: int = 8,
        opt_batch: int | None = None,
        cache_dir: Path | None = None,
        calibration: Iterable[np.ndarray] | None = None,
        workspace_mb: int = 2048,
        build_only: bool = False,
    ) -> None:
        if importlib.util.find_spec("tensorrt") is None:
            raise BackendUnavailable("tensorrt: the tensorrt Python package is not installed")
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt: no CUDA GPU visible to torch")
        if precision not in ("fp16", "fp32", "int8"):
            raise BackendError(f"tensorrt: precision must be fp16, fp32 or int8, got {precision!r}")
        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        props = torch.cuda.get_device_properties(0)
        fixed = card.input.batch
        self.max_batch = fixed or max(1, int(max_batch))
        profile = (
            fixed or 1,
            fixed or max(1, min(opt_batch or self.max_batch, self.max_batch)),
            self.max_batch,
        )
        self.key = EngineKey(
            onnx_sha256=card.weights_sha256,
            tensorrt_version=str(trt.__version__),
            gpu_name=str(props.name),
            compute_capability=f"{props.major}.{props.minor}",
            precision=precision,
            batch_profile=profile,
            input_hw=(card.input.height, card.input.width),
        )
        cache_dir = Path(cache_dir or DEFAULT_ENGINE_CACHE)
        self.engine_path = engine_cache_path(cache_dir, card.name, self.key)
        self.built = False
        if self.engine_path.is_file():
            blob = self.engine_path.read_bytes()
            log.info("tensorrt: loading cached engine %s", self.engine_path)
        else:
            t0 = time.perf_counter()
            blob = self._build(card, precision, profile, calibration, workspace_mb, cache_dir)
            self.engine_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.engine_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(blob)
            tmp.replace(self.engine_path)
            self.engine_path.with_suffix(".json").write_text(
                json.dumps(self.key.__dict__, indent=1, default=list)
            )
            self.built = True
            log.info("tensorrt: built %s engine for %s in %.1f s -> %s", precision, card.name,
                     time.perf_counter() - t0, self.engine_path)  # fmt: skip
        self.name = "tensorrt"
        self.device = f"cuda:0 ({props.name})"
        if build_only:
            return
        trt.init_libnvinfer_plugins(self.logger, "")
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BackendError(f"tensorrt: could not deserialise {self.engine_path} (delete it to rebuild)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = tuple(n for n in names if n not in self.inputs)
        if len(self.inputs) != 1:
            raise BackendError(f"tensorrt: expected one input tensor, got {self.inputs}")
        self.input_name = self.inputs[0]
        self.input_dtype = _trt_torch_dtype(trt, torch, self.engine.get_tensor_dtype(self.input_name))

    def _build(
        self, card: ModelCard, precision: str, profile: tuple[int, int, int],
        calibration: Iterable[np.ndarray] | None, workspace_mb: int, cache_dir: Path,
    ) -> bytes:  # fmt: skip
        trt = self.trt
        trt.init_libnvinfer_plugins(self.logger, "")  # EfficientNMS and friends, when a graph uses them
        builder = trt.Builder(self.logger)
        flags = 0
        if (
            hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
            and int(trt.__version__.split(".")[0]) < 10
        ):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(card.weights.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"tensorrt: ONNX parser rejected {card.weights.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        inp = network.get_input(0)
        c, h, w = card.input.channels, card.input.height, card.input.width
        chw = (c, h, w) if card.input.layout == "NCHW" else (h, w, c)
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(inp.name, (profile[0], *chw), (profile[1], *chw), (profile[2], *chw))
        config.add_optimization_profile(opt_profile)
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means IEEE fp32, not TF32 tensor-core math
        if precision == "fp16":
            if not getattr(builder, "platform_has_fast_fp16", True):
                log.warning("tensorrt: this GPU has no fast FP16; building FP16 anyway")
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "int8":
            batches = [np.asarray(b, dtype=np.float32) for b in (calibration or [])]
            if not batches:
                raise BackendError(
                    "tensorrt: int8 needs a calibration set (options.calibration: a folder of DICOM files)"
                )
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.FP16)  # layers INT8 cannot run fall back to FP16, not FP32
            cache_file = cache_dir / f"{card.name}-{card.weights_sha256[:20]}.calib"
            self._calibrator = _make_calibrator(trt, self.torch, batches, cache_file)
            config.int8_calibrator = self._calibrator
            config.set_calibration_profile(opt_profile)
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise BackendError(
                f"tensorrt: engine build failed for {card.weights.name} (see TensorRT log above)"
            )
        return bytes(blob)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        n = batch.shape[0]
        if n > self.max_batch:
            raise BackendError(f"tensorrt: batch {n} exceeds the engine profile maximum {self.max_batch}")
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(batch)).pin_memory().to("cuda", non_blocking=True)
            x = x.to(self.input_dtype)
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            self.context.set_tensor_address(self.input_name, int(x.data_ptr()))
            outs: dict[str, Any] = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(
                        f"tensorrt: output {name} has a data-dependent shape {shape} (unsupported)"
                    )
                dt = _trt_torch_dtype(self.trt, torch, self.engine.get_tensor_dtype(name))
                outs[name] = torch.empty(shape, dtype=dt, device="cuda")
                self.context.set_tensor_address(name, int(outs[name].data_ptr()))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError("tensorrt: execute_async_v3 failed")
            host = {k: v.to("cpu", non_blocking=True) for k, v in outs.items()}
        self.stream.synchronize()
        return {
            k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v).numpy()
            for k, v in host.items()
        }


# ---------------------------------------------------------------- selection


def _cuda_via_torch() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def tensorrt_installed() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot build engines here (None: it can). Imports nothing heavy when TensorRT is absent, so
    ``dicom-node build-engines`` (systemd ExecStartPre) returns at once on CPU-only hosts."""
    if not tensorrt_installed():
        return "tensorrt not installed"
    return None if _cuda_via_torch() else "no CUDA GPU"


def availability(card: ModelCard | None = None) -> dict[str, str | None]:
    """Backend -> None when usable here, else the reason it is not (cheap checks; nothing is loaded)."""
    import onnxruntime as ort

    out: dict[str, str | None] = {}
    has_trt = tensorrt_installed()
    cuda = _cuda_via_torch() if (has_trt or (card is not None and card.torch_weights)) else False
    out["tensorrt"] = (
        None if has_trt and cuda else ("tensorrt not installed" if not has_trt else "no CUDA GPU")
    )
    providers = ort.get_available_providers()
    out["onnxruntime-cuda"] = (
        None if "CUDAExecutionProvider" in providers else "onnxruntime has no CUDA provider"
    )
    if card is not None and card.torch_weights is None:
        out["torch-cuda"] = "the model card has no torch_weights"
    elif importlib.util.find_spec("torch") is None:
        out["torch-cuda"] = "torch not installed"
    else:
        out["torch-cuda"] = None if _cuda_via_torch() else "torch has no CUDA device"
    out["onnxruntime-cpu"] = None
    return out


def choose_backend(requested: str, card: ModelCard | None = None) -> tuple[str, str]:
    """(backend, reason) for ``requested``; ``auto``: tensorrt > onnxruntime-cuda > torch-cuda > onnxruntime-cpu."""
    if requested not in BACKENDS:
        raise BackendError(f"unknown backend {requested!r} (known: {', '.join(BACKENDS)})")
    if requested != "auto":
        aliases = {"onnxruntime": "onnxruntime-cpu"}
        return aliases.get(requested, requested), "requested in the configuration"
    avail = availability(card)
    skipped: list[str] = []
    for name in ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu"):
        if avail[name] is None:
            why = f"auto: {name}" + (f" ({'; '.join(skipped)})" if skipped else " (first choice)")
            return name, why
        skipped.append(f"not {name}: {avail[name]}")
    raise BackendUnavailable("no backend available")  # unreachable: onnxruntime-cpu is always there


def open_backend(
    card: ModelCard, requested: str = "auto", *, max_batch: int = 8, options: Mapping[str, Any] | None = None,
    calibration: Callable[[], Iterable[np.ndarray]] | None = None, triton: Any = None,
) -> Backend:  # fmt: skip
    """Load ``card``'s model on the chosen backend; ``options`` as in ModelSpec.options (threads, precision, ...).

    ``triton``: the model's ``TritonSpec`` when ``requested`` is ``triton`` (inference.triton; its ``fallback``
    names the local backend opened, with the same options, when no Triton server answers)."""
    opts = dict(options or {})
    name, why = choose_backend(requested, card)
    threads = opts.get("threads")
    if name == "triton":
        from inference.triton import TritonBackend

        if triton is None:
            raise BackendError(f"model {card.name}: backend triton needs a triton section (servers, model)")
        fallback = None if triton.fallback == "fail" else triton.fallback

        def open_fallback() -> Backend:
            return open_backend(card, fallback or "auto", max_batch=max_batch, options=options,
                                calibration=calibration)  # fmt: skip

        backend: Backend = TritonBackend(card, triton, max_batch=max_batch,
                                         fallback_factory=open_fallback if fallback else None)  # fmt: skip
    elif name == "tensorrt":
        backend = TensorRTBackend(
            card,
            precision=str(opts.get("precision", "fp16")),
            max_batch=max_batch,
            opt_batch=opts.get("opt_batch"),
            cache_dir=Path(opts["engine_cache"]) if opts.get("engine_cache") else None,
            calibration=calibration() if calibration and opts.get("precision") == "int8" else None,
            workspace_mb=int(opts.get("workspace_mb", 2048)),
        )
    elif name in ("onnxruntime-cpu", "onnxruntime-cuda"):
        backend = OnnxRuntimeBackend(card.weights, cuda=name == "onnxruntime-cuda", threads=threads)
    else:  # torch, torch-cpu, torch-cuda
        if card.torch_weights is None:
            raise BackendUnavailable(
                f"{name}: model card {card.name} has no torch_weights (TorchScript or .pt2)"
            )
        device = str(opts.get("device", ""))
        if not device:
            device = (
                "cpu"
                if name == "torch-cpu"
                else ("cuda" if name == "torch-cuda" or _cuda_via_torch() else "cpu")
            )
        backend = TorchBackend(
            card.torch_weights,
            device=device,
            fp16=opts.get("fp16"),
            output_names=card.output.names,
            threads=threads,
        )
    log.info("model %s %s: backend %s on %s (%s)", card.name, card.version, backend.name, backend.device, why)
    return backend
