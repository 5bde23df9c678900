"""Export of the trained region detector: ONNX (onnxruntime, TensorRT) + TorchScript (torch backend) + model card.

The card is the single source of the preprocessing: training builds its inputs with ``card_template()`` through
``inference.preprocessing.preprocess``, and the same steps are written to ``card.yaml`` beside the weights.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path
from typing import Any

import yaml

from inference.modelcard import ModelCard, parse_card
from inference.training.data import CLASSES
from inference.training.model import ExportWrapper, RegionNet

MODEL_NAME = "dicom-node-reference-regions"
OUTPUT_NAMES = ("num_dets", "det_boxes", "det_scores", "det_classes")
INPUT_NAME = "images"
SNOMED = {
    "HEAD": ("69536005", "Head"),
    "SPINE": ("421060004", "Spine"),
    "CHEST": ("816094009", "Chest"),
    "ABDOMEN": ("818981001", "Abdomen"),
    "PELVIS": ("816092008", "Pelvis"),
}
ONNX_OPSET = 17


def card_template(input_size: int = 256, version: str = "1.0.0") -> dict[str, Any]:
    """The card as a plain mapping (weights and hashes filled in by ``export_model``)."""
    return {
        "name": MODEL_NAME,
        "version": version,
        "description": (
            "Reference anatomical-region detector (HEAD, SPINE, CHEST, ABDOMEN, PELVIS) for CT localizers and "
            "CR/DX radiographs: a small CNN with one presence score and one box per class, trained on simulated "
            "images only (inference/training). Not a medical device."
        ),
        "license": "Apache-2.0",
        "family": "Artificial Intelligence",
        "weights": "model.onnx",
        "weights_sha256": "0" * 64,
        "classes": [
            {"name": c, "finding_site": {"code": SNOMED[c][0], "scheme": "SCT", "meaning": SNOMED[c][1]}}
            for c in CLASSES
        ],
        "input": {"height": input_size, "width": input_size, "channels": 1, "layout": "NCHW", "dtype": "float32",
                  "name": INPUT_NAME, "batch": "dynamic"},
        "preprocessing": [
            "modality_lut",
            {"voi": {"mode": "percentile", "low": 0.5, "high": 99.5}},
            "invert_monochrome1",
            {"equalize_histogram": {"bins": 256}},
            {"letterbox": {"pad_value": 0.0, "interpolation": "bilinear", "align": "center"}},
            {"normalize": {"mean": [0.5], "std": [0.25]}},
        ],
        "output_format": "efficient_nms",
        "output": {"names": list(OUTPUT_NAMES), "label_offset": 0, "normalized": False, "box_coding": "corners"},
        "score_threshold": 0.5,
        "nms_iou": 0.5,
        "max_detections_per_class": 1,
        "max_detections": len(CLASSES),
        "intended": {"modalities": ["CT", "CR", "DX"], "views": ["frontal", "lateral"]},
    }


def template_card(input_size: int = 256, path: Path | None = None) -> ModelCard:
    """A validated ``ModelCard`` of the template (no weights checked), for preprocessing during training."""
    where = path or Path(__file__).resolve().parents[1] / "models" / "reference" / "card.yaml"
    return parse_card(card_template(input_size), where, check_weights=False)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_model(
    net: RegionNet, out_dir: Path, *, version: str = "1.0.0", metrics: dict[str, Any] | None = None
) -> Path:
    """Write ``model.onnx``, ``model.pt`` (TorchScript) and ``card.yaml`` into ``out_dir``; returns the card path."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(copy.deepcopy(net).cpu().eval()).eval()
    s = net.input_size
    example = torch.zeros(2, 1, s, s)
    onnx_path = out_dir / "model.onnx"
    with warnings.catch_warnings():  # the TorchScript-based exporter and tracer are deprecated, not removed
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(wrapper, example, onnx_path, pt_path := out_dir / "model.pt")
    card = card_template(s, version)
    card["weights_sha256"] = _sha256(onnx_path)
    card["torch_weights"] = "model.pt"
    card["torch_weights_sha256"] = _sha256(pt_path)
    if metrics:
        card["metrics"] = metrics
    card_path = out_dir / "card.yaml"
    header = (
        "# Model card of the reference region detector; written by `dicom-node train` (inference/training/export.py).\n"
        "# Keys are documented in docs/MODELS.md; training log in TRAINING.md; numbers in docs/MODEL_CARD.md.\n"
    )
    card_path.write_text(header + yaml.safe_dump(card, sort_keys=False, width=110))
    return card_path


def _export(wrapper, example, onnx_path: Path, pt_path: Path) -> None:
    import torch

    torch.onnx.export(
        wrapper, (example,), str(onnx_path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
        dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
        opset_version=ONNX_OPSET, dynamo=False,
    )  # fmt: skip
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    traced.save(str(pt_path))
