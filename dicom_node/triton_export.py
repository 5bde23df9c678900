"""`dicom-node export-triton --config F --out DIR`: a Triton model repository generated from our model cards.

For every model of the configuration with ``backend: triton`` (or every model with ``--all``), it writes
``DIR/<triton model name>/config.pbtxt`` and ``DIR/<name>/<version>/`` with the card's weights:

- ``--platform onnxruntime`` (default): ``platform: "onnxruntime_onnx"``, ``<version>/model.onnx``; with
  ``--tensorrt-accelerator`` ONNX Runtime runs it through its TensorRT execution provider (FP16).
- ``--platform tensorrt``: ``platform: "tensorrt_plan"``; the engine is GPU-specific, so the repository holds the
  ONNX file (``<name>/onnx/model.onnx``) and ``<name>/build_engine.sh``, which runs ``trtexec`` ON the GPU server
  to write ``<version>/model.plan`` with the card's input shape and a dynamic batch profile.
- ``--platform python``: Triton's Python backend running the ONNX file with ONNX Runtime (``<version>/model.py``);
  for Triton builds without the onnxruntime backend, e.g. the one in the PyPI package nvidia-pytriton (tests).

Input and output names, data types and shapes come from the card and the ONNX graph (they must agree); the
``max_batch_size`` is the card's fixed batch (then 0, the batch is part of the dims) or ``--max-batch`` (default:
the model's ``max_batch``), with ``dynamic_batching`` (``--max-queue-delay-us``) and an ``instance_group``
(``--instances``, ``--kind``). The card's SHA-256 is checked when the card is loaded and again on the copied file,
and written into the config as parameter ``dicom_node_weights_sha256``: the node's Triton backend refuses a
server whose model was exported from other weights (inference.triton).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.modelcard import ModelCard, ModelCardError, load_card, sha256_file
from inference.triton import SHA_PARAMETER

PLATFORMS = ("onnxruntime", "tensorrt", "python")
KINDS = ("auto", "gpu", "cpu")
# ONNX TensorProto element type -> Triton data type
_ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32",
                   7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64"}  # fmt: skip
_CARD_DTYPE = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8"}


class ExportError(ValueError):
    """A model that cannot be exported (the message names the model and why)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0; -1: variable


@dataclass(frozen=True)
class ExportedModel:
    name: str
    version: str
    directory: Path
    platform: str
    max_batch_size: int
    input: Tensor
    outputs: tuple[Tensor, ...]
    sha256: str


def _dims(shape: Any) -> list[int]:
    return [int(d.dim_value) if d.HasField("dim_value") else -1 for d in shape.dim]


def model_io(card: ModelCard, max_batch: int) -> tuple[int, Tensor, tuple[Tensor, ...]]:
    """(max_batch_size, input, outputs) of ``card``'s ONNX graph, checked against the card."""
    import onnx

    graph = onnx.load(str(card.weights), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    where = f"model {card.name} ({card.weights.name})"
    if len(inputs) != 1:
        raise ExportError(f"{where}: expected one input, the graph has {[i.name for i in inputs]}")
    inp = inputs[0]
    if card.input.name and card.input.name != inp.name:
        raise ExportError(f"{where}: the card's input.name is {card.input.name!r}, the graph's input {inp.name!r}")
    shape = _dims(inp.type.tensor_type.shape)
    c, h, w = card.input.channels, card.input.height, card.input.width
    per_image = [c, h, w] if card.input.layout == "NCHW" else [h, w, c]
    if len(shape) != 4 or any(d not in (-1, e) for d, e in zip(shape[1:], per_image, strict=True)):
        raise ExportError(f"{where}: graph input shape {shape} does not fit the card's {card.input.layout} "
                          f"{per_image} per image")  # fmt: skip
    dtype = _ONNX_TO_TRITON.get(inp.type.tensor_type.elem_type, "")
    if dtype != _CARD_DTYPE[card.input.dtype]:
        raise ExportError(f"{where}: graph input type {dtype or '?'}, the card says {card.input.dtype}")
    fixed = card.input.batch
    if fixed is not None and shape[0] not in (-1, fixed):
        raise ExportError(f"{where}: the card says batch {fixed}, the graph {shape[0]}")
    batched = fixed is None
    size = max(1, int(max_batch)) if batched else 0
    inp_t = Tensor(inp.name, dtype, tuple(per_image) if batched else (fixed, *per_image))  # type: ignore[arg-type]
    outs = []
    names = [o.name for o in graph.output]
    for wanted in card.output.names or ():
        if wanted not in names:
            raise ExportError(f"{where}: the card's output {wanted!r} is not a graph output ({', '.join(names)})")
    for o in graph.output:
        odims = _dims(o.type.tensor_type.shape)
        otype = _ONNX_TO_TRITON.get(o.type.tensor_type.elem_type)
        if otype is None:
            raise ExportError(f"{where}: output {o.name} has an unsupported element type")
        if batched and (not odims or odims[0] not in (-1, 1)):
            raise ExportError(f"{where}: output {o.name} shape {odims} has no batch dimension")
        dims = tuple(odims[1:] if batched else odims) or (1,)
        outs.append(Tensor(o.name, otype, dims))
    return size, inp_t, tuple(outs)


def _tensor_block(key: str, tensors: tuple[Tensor, ...]) -> str:
    items = [f'  {{ name: "{t.name}" data_type: {t.data_type} dims: [ {", ".join(map(str, t.dims))} ] }}'
             for t in tensors]  # fmt: skip
    return f"{key} [\n" + ",\n".join(items) + "\n]\n"


def config_pbtxt(
    name: str, card: ModelCard, platform: str, max_batch_size: int, inp: Tensor, outputs: tuple[Tensor, ...],
    *, kind: str = "auto", instances: int = 1, max_queue_delay_us: int = 2000, threads: int = 0,
    tensorrt_accelerator: bool = False,
) -> str:  # fmt: skip
    """The text of ``config.pbtxt`` (protobuf text format of Triton's ModelConfig)."""
    gpu = kind == "gpu" or (kind == "auto" and platform in ("onnxruntime", "tensorrt"))
    if platform == "tensorrt" and not gpu:
        raise ExportError(f"model {name}: TensorRT plans run on GPU instances only (--kind gpu or auto)")
    lines = [
        f"# generated by dicom-node export-triton from the card {card.name} {card.version}",
        f"# weights sha256 {card.weights_sha256}",
        f'name: "{name}"',
    ]
    lines.append({"onnxruntime": 'platform: "onnxruntime_onnx"', "tensorrt": 'platform: "tensorrt_plan"',
                  "python": 'backend: "python"'}[platform])  # fmt: skip
    lines.append(f"max_batch_size: {max_batch_size}")
    text = "\n".join(lines) + "\n" + _tensor_block("input", (inp,)) + _tensor_block("output", outputs)
    if max_batch_size > 0:
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {int(max_queue_delay_us)} }}\n"
    text += f"instance_group [ {{ count: {int(instances)} kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]\n"
    params = {SHA_PARAMETER: card.weights_sha256, "dicom_node_card": f"{card.name} {card.version}"}
    if platform in ("onnxruntime", "python") and threads > 0:
        params["intra_op_thread_count"] = str(int(threads))
        params["inter_op_thread_count"] = "1"
    for key, value in params.items():
        text += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    if platform == "onnxruntime" and tensorrt_accelerator:
        text += ('optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt"\n'
                 '  parameters { key: "precision_mode" value: "FP16" } } ] } }\n')  # fmt: skip
    return text


_PYTHON_MODEL = '''"""Triton python-backend model written by `dicom-node export-triton`: runs model.onnx with ONNX Runtime.

Requests merged by Triton's dynamic batcher arrive together in ``execute``: their inputs are concatenated into one
batch, run once, and the outputs split back per request.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count") or 0)
        options.inter_op_num_threads = int(params.get("inter_op_thread_count") or 0)
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            outs = self.session.run(self.output_names, {self.input_name: np.concatenate(arrays)})
        except Exception as exc:  # one error response per request
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]
        responses, start = [], 0
        for a in arrays:
            n = a.shape[0]
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(o[start : start + n]))
                       for name, o in zip(self.output_names, outs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
'''


def _build_engine_script(name: str, version: str, card: ModelCard, max_batch_size: int, inp: Tensor) -> str:
    per = "x".join(str(d) for d in (inp.dims if max_batch_size > 0 else inp.dims[1:]))
    opt = max(1, max_batch_size // 2)
    shapes = (f"--minShapes={inp.name}:1x{per} --optShapes={inp.name}:{opt}x{per} "
              f"--maxShapes={inp.name}:{max_batch_size}x{per}") if max_batch_size > 0 else ""  # fmt: skip
    return f"""#!/bin/sh
# Build the TensorRT engine of {card.name} {card.version} ON the GPU server that serves it (engines are specific
# to the GPU and the TensorRT version), e.g. inside NVIDIA's Triton container: sh build_engine.sh
set -eu
cd "$(dirname "$0")"
echo "{card.weights_sha256}  onnx/model.onnx" | sha256sum -c -
mkdir -p {version}
trtexec --onnx=onnx/model.onnx --saveEngine={version}/model.plan --fp16 {shapes}
"""


def export_model(
    card: ModelCard, name: str, version: str, out: Path, *, platform: str = "onnxruntime", max_batch: int = 8,
    kind: str = "auto", instances: int = 1, max_queue_delay_us: int = 2000, threads: int = 0,
    tensorrt_accelerator: bool = False,
) -> ExportedModel:  # fmt: skip
    """Write one model's directory under ``out`` (replacing an earlier export of it)."""
    if platform not in PLATFORMS:
        raise ExportError(f"unknown platform {platform!r} (known: {', '.join(PLATFORMS)})")
    size, inp, outputs = model_io(card, max_batch)
    text = config_pbtxt(name, card, platform, size, inp, outputs, kind=kind, instances=instances,
                        max_queue_delay_us=max_queue_delay_us, threads=threads,
                        tensorrt_accelerator=tensorrt_accelerator)  # fmt: skip
    directory = out / name
    tmp = out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / version).mkdir(parents=True)
    onnx_path = tmp / ("onnx" if platform == "tensorrt" else version) / "model.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(card.weights, onnx_path)
    actual = sha256_file(onnx_path)
    if actual != card.weights_sha256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"model {name}: the copied weights hash to {actual}, the card says {card.weights_sha256} "
                          "(file changed while exporting?)")  # fmt: skip
    if platform == "python":
        (tmp / version / "model.py").write_text(_PYTHON_MODEL)
    if platform == "tensorrt":
        script = tmp / "build_engine.sh"
        script.write_text(_build_engine_script(name, version, card, size, inp))
        script.chmod(0o755)
    (tmp / "config.pbtxt").write_text(text)
    (tmp / "dicom-node-card.json").write_text(json.dumps({"card": card.name, "version": card.version,
                                                          "weights_sha256": card.weights_sha256}, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return ExportedModel(name, version, directory, platform, size, inp, outputs, card.weights_sha256)


def export_repository(
    config_path: Path, out: Path, *, every_model: bool = False, only: list[str] | None = None, **options: Any
) -> list[ExportedModel]:  # fmt: skip
    """Export the models of a configuration file (``backend: triton`` ones, or all with ``every_model``)."""
    from dicom_node.config import load_config

    config = load_config(config_path)
    chosen = [s for s in config.models.values() if every_model or s.backend == "triton"]
    if only:
        unknown = [n for n in only if n not in config.models]
        if unknown:
            raise ExportError(f"unknown model(s) {', '.join(unknown)} (configured: {', '.join(config.models)})")
        chosen = [config.models[n] for n in only]
    if not chosen:
        raise ExportError(f"{config_path}: no model has backend: triton (use --all to export every model)")
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for spec in chosen:
        try:
            card = load_card(spec.card)  # validates the card and checks the weights' SHA-256
        except ModelCardError as exc:
            raise ExportError(f"model {spec.name}: {exc}") from None
        name = spec.triton.model if spec.triton else spec.name
        version = (spec.triton.version if spec.triton else "") or "1"
        opts = dict(options)
        opts.setdefault("max_batch", spec.max_batch)
        if opts.get("max_batch") is None:
            opts["max_batch"] = spec.max_batch
        done.append(export_model(card, name, version, out, **opts))
    return done


def add_export_triton_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="node configuration (its models section)")
    p.add_argument("--out", required=True, type=Path, help="model repository directory to write")
    p.add_argument("--platform", choices=PLATFORMS, default="onnxruntime",
                   help="onnxruntime (default), tensorrt (engine built on the GPU server) or python (ORT in Python)")
    p.add_argument("--all", action="store_true", help="export every configured model, not only backend: triton")
    p.add_argument("--model", action="append", help="export only this configured model (repeatable)")
    p.add_argument("--max-batch", type=int, default=None, help="max_batch_size (default: the model's max_batch)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching queue delay (us)")
    p.add_argument("--instances", type=int, default=1, help="model instances per device")
    p.add_argument("--kind", choices=KINDS, default="auto", help="instance kind (auto: GPU except python)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    p.add_argument("--tensorrt-accelerator", action="store_true",
                   help="onnxruntime platform: run through ONNX Runtime's TensorRT execution provider (FP16)")


def run_export_triton(args: argparse.Namespace) -> int:
    from dicom_node.config import ConfigError

    try:
        done = export_repository(
            args.config, args.out, every_model=args.all, only=args.model, platform=args.platform,
            max_batch=args.max_batch, kind=args.kind, instances=max(1, args.instances),
            max_queue_delay_us=max(0, args.max_queue_delay_us), threads=max(0, args.threads),
            tensorrt_accelerator=args.tensorrt_accelerator,
        )  # fmt: skip
    except (ExportError, ConfigError) as exc:
        print(f"dicom-node export-triton: error: {exc}", file=sys.stderr)
        return 1
    for m in done:
        print(f"{m.name} version {m.version}: {m.platform}, max_batch_size {m.max_batch_size}, input {m.input.name} "
              f"{list(m.input.dims)}, outputs {', '.join(o.name for o in m.outputs)}, sha256 {m.sha256[:16]}... "
              f"-> {m.directory}")  # fmt: skip
    if any(m.platform == "tensorrt" for m in done):
        print("TensorRT: run build_engine.sh in each model directory on the GPU server before starting Triton")
    return 0


add_arguments = add_export_triton_arguments
run = run_export_triton
