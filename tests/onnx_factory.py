"""Tiny ONNX (and TorchScript) models built by the tests, one per output format, with known outputs.

``RectFinder`` is a real, deterministic detector: it finds the bounding box of the pixels above 0.5 in the model
input (channel 0) and returns it with a score equal to the image maximum. ``FormatModel`` wraps it into the raw
output layout of each supported format, with extra candidates that exercise thresholds and NMS:

=====  =============================  =====  ============  =============================================
cand.  box (model-input pixels)       class  score         expected fate (card: threshold 0.25, NMS 0.45)
=====  =============================  =====  ============  =============================================
0      the found rectangle            1      0.9 x max     kept
1      found, shifted 2 px right      1      0.8 x max     suppressed by NMS (same class, IoU > 0.45)
2      the found rectangle            0      0.6 x max     kept (class-aware NMS)
3      (0, 0, 10, 10)                 2      0.05 x max    below the score threshold
4      (W-20, H-20, W-4, H-4)         1      0.7 x max     kept unless max_detections_per_class is 1
=====  =============================  =====  ============  =============================================

So the expected detections in ORIGINAL pixels are known exactly: the rectangle drawn in the test image (and the
inverse transform of candidate 4). ``ConvDetector`` is a small convolutional detector (YOLOv8 head layout) used
for backend parity and the engine benchmark.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CLASSES = (
    ("HEAD", "69536005", "Head"),
    ("CHEST", "816094009", "Chest"),
    ("PELVIS", "816092008", "Pelvis"),
)
FORMATS = ("yolov5", "yolov8", "yolov8_transposed", "yolo_end2end", "yolov4", "ssd", "retinanet", "faster_rcnn",
           "efficient_nms")  # fmt: skip
SCORES = (0.9, 0.8, 0.6, 0.05, 0.7)
CLASS_IDS = (1, 1, 0, 2, 1)


def _torch() -> Any:
    import torch

    return torch


def rect_finder_module(height: int, width: int) -> Any:
    torch = _torch()
    nn = torch.nn

    class RectFinder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("ar_w", torch.arange(width, dtype=torch.float32))
            self.register_buffer("ar_h", torch.arange(height, dtype=torch.float32))

        def forward(self, x: Any) -> Any:
            img = x[:, 0].float()
            mask = (img > 0.5).float()
            cols = mask.amax(dim=1)  # (B, W)
            rows = mask.amax(dim=2)  # (B, H)
            x_max = (cols * (self.ar_w + 1.0)).amax(dim=1)
            x_min = width - (cols * (width - self.ar_w)).amax(dim=1)
            y_max = (rows * (self.ar_h + 1.0)).amax(dim=1)
            y_min = height - (rows * (height - self.ar_h)).amax(dim=1)
            score = img.amax(dim=2).amax(dim=1)
            return torch.stack([x_min, y_min, x_max, y_max], dim=-1), score

    return RectFinder()


def format_model(fmt: str, height: int, width: int, num_classes: int = 3) -> Any:
    """A torch module whose outputs are the raw layout of ``fmt`` (see the module docstring)."""
    torch = _torch()
    nn = torch.nn
    finder = rect_finder_module(height, width)
    scores_c = torch.tensor(SCORES)
    ids_c = torch.tensor(CLASS_IDS)
    const0 = torch.tensor([0.0, 0.0, 10.0, 10.0])
    const1 = torch.tensor([width - 20.0, height - 20.0, width - 4.0, height - 4.0])
    shift = torch.tensor([2.0, 0.0, 2.0, 0.0])

    class FormatModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.finder = finder
            self.register_buffer("scores_c", scores_c)
            self.register_buffer("onehot", torch.nn.functional.one_hot(ids_c, num_classes).float())
            self.register_buffer("ids_f", ids_c.float())
            self.register_buffer("const0", const0)
            self.register_buffer("const1", const1)
            self.register_buffer("shift", shift)

        def candidates(self, x: Any) -> tuple[Any, Any, Any]:
            found, s = self.finder(x)
            zero = torch.zeros_like(found)
            boxes = torch.stack(
                [found, found + self.shift, found, zero + self.const0, zero + self.const1], dim=1
            )
            scores = s[:, None] * self.scores_c[None, :]  # (B, 5)
            return boxes, scores, s

        def forward(self, x: Any) -> Any:
            boxes, scores, s = self.candidates(x)
            b = boxes.shape[0]
            cls_scores = scores[:, :, None] * self.onehot[None]  # (B, 5, C)
            if fmt in ("yolov5", "yolov8", "yolov8_transposed"):
                cxcywh = torch.cat(
                    [(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], dim=-1
                )
                if fmt == "yolov5":  # objectness = image max, class prob = the fixed fraction
                    obj = torch.zeros_like(scores)[..., None] + s[:, None, None]
                    probs = torch.zeros_like(obj) + self.onehot[None] * self.scores_c[None, :, None]
                    return torch.cat([cxcywh, obj, probs], dim=-1)
                out = torch.cat([cxcywh, cls_scores], dim=-1)  # (B, N, 4 + C)
                return out.permute(0, 2, 1) if fmt == "yolov8" else out
            if fmt == "yolo_end2end":
                ids = (torch.zeros_like(scores) + self.ids_f[None])[..., None]
                return torch.cat([boxes, scores[..., None], ids], dim=-1)
            if fmt == "yolov4":
                norm = torch.tensor([width, height, width, height], dtype=torch.float32)
                return (boxes / norm)[:, :, None, :], cls_scores
            if fmt in ("ssd", "retinanet", "faster_rcnn"):  # torchvision: per image, label 0 = background
                bg_box = boxes[0, :1] * 0 + torch.tensor([[5.0, 5.0, 60.0, 60.0]])
                out_boxes = torch.cat([boxes[0], bg_box], dim=0)
                labels = torch.cat([ids_c + 1, torch.zeros(1, dtype=torch.int64)])
                out_scores = torch.cat([scores[0], scores[0, :1] * 0 + 0.95])
                return out_boxes, labels, out_scores
            if fmt == "efficient_nms":  # K = 8 slots, only num_dets valid; padding slots carry junk
                pad_boxes = torch.zeros(b, 3, 4) + torch.tensor([1.0, 1.0, 50.0, 50.0])
                det_boxes = torch.cat([boxes, pad_boxes], dim=1)
                det_scores = torch.cat([scores, torch.zeros(b, 3) + 0.99], dim=1)
                det_classes = torch.cat([torch.zeros(b, 5, dtype=torch.int32) + ids_c.int()[None],
                                         torch.zeros(b, 3, dtype=torch.int32)], dim=1)  # fmt: skip
                num = torch.zeros(b, 1, dtype=torch.int32) + 5
                return num, det_boxes, det_scores, det_classes
            raise ValueError(fmt)

    return FormatModel().eval()


OUTPUT_NAMES = {
    "yolov4": ["boxes", "confs"],
    "ssd": ["boxes", "labels", "scores"],
    "retinanet": ["boxes", "labels", "scores"],
    "faster_rcnn": ["boxes", "labels", "scores"],
    "efficient_nms": ["num_dets", "det_boxes", "det_scores", "det_classes"],
}


def export_onnx(module: Any, path: Path, height: int, width: int, channels: int = 1,
                output_names: list[str] | None = None, dynamic_batch: bool = True) -> Path:  # fmt: skip
    torch = _torch()
    x = torch.zeros(1, channels, height, width)
    names = output_names or ["output0"]
    dyn = {"images": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["images"], output_names=names,
                          dynamic_axes=dyn, opset_version=17)  # fmt: skip
    return path


def build_format_model(fmt: str, directory: Path, height: int = 320, width: int = 320) -> Path:
    """ONNX file for ``fmt`` (``yolov8_transposed`` is the (B, N, 4 + C) variant of yolov8)."""
    torchvision_like = fmt in ("ssd", "retinanet", "faster_rcnn")
    path = directory / f"{fmt}.onnx"
    return export_onnx(format_model(fmt, height, width), path, height, width,
                       output_names=OUTPUT_NAMES.get(fmt), dynamic_batch=not torchvision_like)  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def card_dict(weights: Path, output_format: str, *, height: int = 320, width: int = 320, channels: int = 1,
              preprocessing: list[Any] | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    d: dict[str, Any] = {
        "name": f"test-{output_format}",
        "version": "0.0.1",
        "weights": weights.name,
        "weights_sha256": sha256(weights),
        "classes": [
            {"name": n, "finding_site": {"code": c, "scheme": "SCT", "meaning": m}} for n, c, m in CLASSES
        ],
        "input": {"height": height, "width": width, "channels": channels},
        "preprocessing": preprocessing
        if preprocessing is not None
        else [{"voi": {"mode": "minmax"}}, {"letterbox": {"pad_value": 0.0}}],
        "output_format": output_format,
        "score_threshold": 0.25,
        "nms_iou": 0.45,
        "max_detections_per_class": 1,
        "intended": {"modalities": ["CT", "CR", "DX"], "views": ["frontal"]},
    }
    d.update(extra)
    return d


def write_card(directory: Path, data: dict[str, Any], name: str = "card.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_format_card(fmt: str, directory: Path, height: int = 320, width: int = 320, **extra: Any) -> Path:
    """Model + card for ``fmt`` in ``directory`` (card file ``<fmt>.yaml``)."""
    onnx_path = build_format_model(fmt, directory, height, width)
    card_fmt = "yolov8" if fmt == "yolov8_transposed" else fmt
    return write_card(
        directory, card_dict(onnx_path, card_fmt, height=height, width=width, **extra), f"{fmt}.yaml"
    )


def conv_detector_module(num_classes: int = 5, width_mult: int = 16) -> Any:
    """A small YOLO-like detector: 5 stride-2 conv stages, a 1x1 head, YOLOv8 output (B, 4 + C, N)."""
    torch = _torch()
    nn = torch.nn

    class ConvDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            ch = [1, width_mult, 2 * width_mult, 4 * width_mult, 8 * width_mult, 8 * width_mult]
            layers: list[Any] = []
            for i in range(5):
                layers += [nn.Conv2d(ch[i], ch[i + 1], 3, stride=2, padding=1), nn.BatchNorm2d(ch[i + 1]), nn.SiLU(),
                           nn.Conv2d(ch[i + 1], ch[i + 1], 3, padding=1), nn.SiLU()]  # fmt: skip
            self.body = nn.Sequential(*layers)
            self.head = nn.Conv2d(ch[-1], 4 + num_classes, 1)
            self.stride = 32

        def forward(self, x: Any) -> Any:
            f = self.head(self.body(x))  # (B, 4 + C, H/32, W/32)
            b, k, h, w = f.shape
            gy, gx = torch.meshgrid(
                torch.arange(h, dtype=f.dtype), torch.arange(w, dtype=f.dtype), indexing="ij"
            )
            cx = (gx.reshape(1, -1) + torch.sigmoid(f[:, 0].reshape(b, -1))) * self.stride
            cy = (gy.reshape(1, -1) + torch.sigmoid(f[:, 1].reshape(b, -1))) * self.stride
            wh = torch.exp(torch.clamp(f[:, 2:4].reshape(b, 2, -1), max=4.0)) * self.stride
            cls = torch.sigmoid(f[:, 4:].reshape(b, k - 4, -1))
            return torch.cat([cx[:, None], cy[:, None], wh, cls], dim=1)

    torch.manual_seed(0)
    return ConvDetector().eval()


def build_conv_detector(directory: Path, size: int = 320, num_classes: int = 5) -> tuple[Path, Path]:
    """(ONNX path, TorchScript path) of the same ConvDetector weights."""
    torch = _torch()
    module = conv_detector_module(num_classes)
    onnx_path = export_onnx(module, directory / "convdet.onnx", size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, torch.zeros(1, 1, size, size))
    ts_path = directory / "convdet.pt"
    traced.save(str(ts_path))
    return onnx_path, ts_path


def rect_image(
    rows: int, cols: int, box: tuple[int, int, int, int], value: int = 1000, dtype: Any = np.uint16
) -> np.ndarray:
    """Stored pixels: background 0, ``value`` inside ``box`` = (x_min, y_min, x_max, y_max) corners (exclusive end)."""
    img = np.zeros((rows, cols), dtype=dtype)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = value
    return img
