"""Test-time augmentation: predict on flipped and rescaled copies of an image, map back, combine.

Segmentation: each copy's logits are flipped back and resized (bilinear) to the original frame, then averaged.
Detection: each copy's boxes (and masks) are mapped back to the original frame and merged, by class-wise NMS
(``merge="nms"``) or by weighted box fusion (``merge="wbf"``, Solovyev et al. 2019: boxes of a class that overlap
a cluster's fused box by more than the IoU threshold join it; the fused box is the score-weighted mean of its
members and its score their mean score times ``min(members, copies) / copies``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from resdense.errors import ConfigError

from .tiling import merge_detections

__all__ = ["TTA", "as_tta", "tta_logits", "tta_detections", "weighted_box_fusion"]

FLIPS = ("horizontal", "vertical")
MERGES = ("nms", "wbf")


@dataclass(frozen=True)
class TTA:
    """Which copies to predict: every scale, each unflipped and with each flip (the identity is always included)."""

    flips: tuple[str, ...] = ("horizontal",)
    scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    merge: str = "nms"
    iou_threshold: float = 0.55

    def __post_init__(self) -> None:
        bad = [f for f in self.flips if f not in FLIPS]
        if bad:
            raise ConfigError(f"tta flips = {list(self.flips)!r}: {bad[0]!r} is not one of {', '.join(FLIPS)}")
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ConfigError(f"tta scales = {list(self.scales)!r}: expected positive factors")
        if self.merge not in MERGES:
            raise ConfigError(f"tta merge = {self.merge!r}: expected one of {', '.join(MERGES)}")

    def copies(self) -> list[tuple[float, str | None]]:
        return [(s, f) for s in self.scales for f in (None, *self.flips)]


def as_tta(tta: TTA | bool | None) -> TTA | None:
    """``True``: the default :class:`TTA`; ``False`` / ``None``: none."""
    if tta is True:
        return TTA()
    if tta is False or tta is None:
        return None
    if isinstance(tta, TTA):
        return tta
    raise ConfigError(f"tta = {tta!r}: expected True, False or a resdense.inference.TTA")


def _flip(x: Tensor, flip: str | None) -> Tensor:
    if flip is None:
        return x
    return x.flip(-1) if flip == "horizontal" else x.flip(-2)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def _scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(1, round(h * scale)), max(1, round(w * scale))


@torch.no_grad()
def tta_logits(predict: Callable[[Tensor], Tensor], image: Tensor, tta: TTA) -> Tensor:
    """Mean logits ``[K, H, W]`` over the copies; ``predict`` maps an image ``[3, h, w]`` to logits ``[K, h, w]``."""
    h, w = image.shape[-2:]
    total = None
    copies = tta.copies()
    for scale, flip in copies:
        x = _flip(_resize(image, _scaled_size(h, w, scale)), flip)
        logits = _resize(_flip(predict(x).float(), flip), (h, w))
        total = logits if total is None else total + logits
    return total / len(copies)


def _unmap(out: dict[str, Tensor], scale_yx: tuple[float, float], flip: str | None, size: tuple[int, int],
           orig: tuple[int, int]) -> dict[str, Tensor]:
    """Boxes / masks predicted on a copy of size ``size`` back to the original frame ``orig``."""
    res = dict(out)
    b = out["boxes"].clone().float()
    sh, sw = size
    if flip == "horizontal":
        b[:, [0, 2]] = sw - b[:, [2, 0]]
    elif flip == "vertical":
        b[:, [1, 3]] = sh - b[:, [3, 1]]
    b[:, [0, 2]] /= scale_yx[1]
    b[:, [1, 3]] /= scale_yx[0]
    res["boxes"] = b
    if "masks" in out and len(out["masks"]):
        m = _flip(out["masks"].float(), flip)
        res["masks"] = F.interpolate(m, size=orig, mode="bilinear", align_corners=False)
    elif "masks" in out:
        res["masks"] = out["masks"].new_zeros(0, 1, *orig).float()
    return res


@torch.no_grad()
def tta_detections(detect: Callable[[Tensor], dict[str, Tensor]], image: Tensor, tta: TTA,
                   max_detections: int | None = 100) -> dict[str, Tensor]:
    """Detections of the copies mapped back and merged (``detect``: one image ``[3, h, w]`` -> one output dict)."""
    h, w = image.shape[-2:]
    parts = []
    for scale, flip in tta.copies():
        size = _scaled_size(h, w, scale)
        out = detect(_flip(_resize(image, size), flip))
        parts.append(_unmap(out, (size[0] / h, size[1] / w), flip, size, (h, w)))
    if tta.merge == "wbf":
        return weighted_box_fusion(parts, tta.iou_threshold, max_detections)
    return merge_detections(parts, tta.iou_threshold, max_detections)


def weighted_box_fusion(parts: list[dict[str, Tensor]], iou_threshold: float = 0.55,
                        max_detections: int | None = None) -> dict[str, Tensor]:
    """Weighted box fusion of ``len(parts)`` predictions of one image (see the module's docstring); a fused box keeps
    the mask of its best member."""
    n_copies = len(parts)
    boxes = torch.cat([p["boxes"].float() for p in parts])
    scores = torch.cat([p["scores"].float() for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    masks = torch.cat([p["masks"] for p in parts]) if all("masks" in p for p in parts) else None
    fused_b, fused_s, fused_l, best = [], [], [], []
    for label in labels.unique().tolist():
        idx = (labels == label).nonzero().flatten()
        idx = idx[scores[idx].argsort(descending=True)]
        clusters: list[list[int]] = []
        centres = torch.zeros(0, 4)
        for i in idx.tolist():
            if len(clusters):
                iou = box_iou(boxes[i:i + 1], centres)[0]
                j = int(iou.argmax())
                if iou[j] > iou_threshold:
                    clusters[j].append(i)
                    members = torch.tensor(clusters[j])
                    wts = scores[members][:, None]
                    centres[j] = (boxes[members] * wts).sum(0) / wts.sum()
                    continue
            clusters.append([i])
            centres = torch.cat([centres, boxes[i:i + 1]])
        for members, centre in zip(clusters, centres, strict=True):
            s = scores[members]
            fused_b.append(centre)
            fused_s.append(s.mean() * min(len(members), n_copies) / n_copies)
            fused_l.append(label)
            best.append(members[0])
    if not fused_b:
        return {k: v[:0] for k, v in parts[0].items()}
    out = {"boxes": torch.stack(fused_b), "scores": torch.stack(fused_s),
           "labels": torch.tensor(fused_l, dtype=labels.dtype)}
    if masks is not None:
        out["masks"] = masks[torch.tensor(best)]
    order = out["scores"].argsort(descending=True)[:max_detections]
    return {k: v[order] for k, v in out.items()}
