"""The reference region detector: a small CNN with one slot per class (set prediction).

Each class (HEAD, SPINE, CHEST, ABDOMEN, PELVIS) occurs at most once per image, so the network predicts, for every
class, a presence logit and one box. Boxes are ``(cx, cy, w, h)`` in [0, 1] of the model input (sigmoid outputs).

``ExportWrapper`` turns that into the fixed-size ``efficient_nms`` layout the inference engine reads:
``num_dets`` (B, 1) int32, ``det_boxes`` (B, K, 4) float32 x1 y1 x2 y2 in model-input pixels (corner convention),
``det_scores`` (B, K) float32 in [0, 1], ``det_classes`` (B, K) int32 (0-based class index), K = number of classes.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
        )  # fmt: skip
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class RegionNet(nn.Module):
    """(B, 1, S, S) normalised image -> (presence logits (B, K), boxes (B, K, 4) cx cy w h in [0, 1]).

    ``S`` must be a multiple of 32; the last feature map is S/32 x S/32 and is flattened (with its position) into
    a fully connected head, so every class slot sees the whole image.
    """

    def __init__(self, n_classes: int = 5, input_size: int = 256, width: int = 16, hidden: int = 256) -> None:
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        w = width
        self.n_classes = n_classes
        self.input_size = input_size
        self.features = nn.Sequential(
            _conv(1, w, 2),  # S/2
            _conv(w, 2 * w, 2),  # S/4
            _Residual(2 * w),
            _conv(2 * w, 4 * w, 2),  # S/8
            _Residual(4 * w),
            _conv(4 * w, 6 * w, 2),  # S/16
            _Residual(6 * w),
            _conv(6 * w, 8 * w, 2),  # S/32
            _Residual(8 * w),
        )
        g = input_size // 32
        self.reduce = nn.Sequential(nn.Conv2d(8 * w, 32, 1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * g * g, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Linear(hidden, n_classes * 5),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.reduce(self.features(x))).view(-1, self.n_classes, 5)
        return out[..., 0], torch.sigmoid(out[..., 1:])


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU of x1 y1 x2 y2 boxes of the same shape (..., 4)."""
    ix0 = torch.maximum(a[..., 0], b[..., 0])
    iy0 = torch.maximum(a[..., 1], b[..., 1])
    ix1 = torch.minimum(a[..., 2], b[..., 2])
    iy1 = torch.minimum(a[..., 3], b[..., 3])
    inter = (ix1 - ix0).clamp(min=0) * (iy1 - iy0).clamp(min=0)
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    cx0 = torch.minimum(a[..., 0], b[..., 0])
    cy0 = torch.minimum(a[..., 1], b[..., 1])
    cx1 = torch.maximum(a[..., 2], b[..., 2])
    cy1 = torch.maximum(a[..., 3], b[..., 3])
    hull = (cx1 - cx0) * (cy1 - cy0) + 1e-7
    return iou - (hull - union) / hull


def detection_loss(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    target_present: torch.Tensor,
    target_boxes: torch.Tensor,
    presence_weight: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Set-prediction loss.

    ``target_present`` (B, K) in {0, 1}; ``target_boxes`` (B, K, 4) x1 y1 x2 y2 in [0, 1]; ``presence_weight``
    (B, K): 0 for ignore regions (no presence loss), 1 otherwise. Box terms (L1 on cx cy w h and 1 - GIoU) count
    for present classes only, including ignore regions (whose boxes are still the truth of what is visible).
    """
    bce = nn.functional.binary_cross_entropy_with_logits(logits, target_present, reduction="none")
    l_cls = (bce * presence_weight).sum() / presence_weight.sum().clamp(min=1)
    has_box = (target_present > 0.5) | ((presence_weight < 0.5) & (target_boxes[..., 2] > target_boxes[..., 0]))
    n = has_box.sum().clamp(min=1)
    pred_xyxy = cxcywh_to_xyxy(boxes)
    tb = target_boxes
    t_cxcywh = torch.stack([(tb[..., 0] + tb[..., 2]) / 2, (tb[..., 1] + tb[..., 3]) / 2,
                            tb[..., 2] - tb[..., 0], tb[..., 3] - tb[..., 1]], dim=-1)  # fmt: skip
    l1 = (boxes - t_cxcywh).abs().sum(-1)
    giou = 1.0 - generalized_iou(pred_xyxy, tb)
    mask = has_box.float()
    l_l1 = (l1 * mask).sum() / n
    l_giou = (giou * mask).sum() / n
    total = l_cls + 5.0 * l_l1 + 2.0 * l_giou
    return total, {k: float(v.detach()) for k, v in (("cls", l_cls), ("l1", l_l1), ("giou", l_giou), ("total", total))}


class ExportWrapper(nn.Module):
    """RegionNet -> efficient_nms outputs (num_dets, det_boxes, det_scores, det_classes), boxes in input pixels."""

    def __init__(self, net: RegionNet) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("classes", torch.arange(net.n_classes, dtype=torch.int32), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, boxes = self.net(x)
        size = float(self.net.input_size)
        det_boxes = (cxcywh_to_xyxy(boxes) * size).clamp(0.0, size)
        scores = torch.sigmoid(logits)
        b = x.shape[0]
        classes = cast(torch.Tensor, self.classes).unsqueeze(0).expand(b, -1)
        num = torch.full_like(classes[:, :1], self.net.n_classes)
        return num, det_boxes, scores, classes
