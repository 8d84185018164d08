"""Large images: sliding-window segmentation and sliced detection.

Segmentation (mmsegmentation's ``slide`` mode, nnU-Net's window placement and Gaussian blend): windows of ``tile x
tile`` pixels, as many as a stride of ``tile * (1 - overlap)`` needs, spread evenly from edge to edge; the
windows' logits are blended with a per-window weight (``"gaussian"``: highest at the window's centre, sigma =
tile / 8; ``"uniform"``: a plain mean) and divided by the summed weight. Windows run ``tile_batch`` at a time, so
the model never sees more than ``tile_batch`` windows at once and its activation memory is that of the tile batch;
what grows with the image is the output (``K x H x W`` logits and one weight plane). A side no longer than ``tile``
is one window as long as the side, padded at the bottom/right to the model's divisor and cropped back, so an image
the tile covers is predicted exactly as the whole image.

Detection (SAHI's sliced prediction): the detector runs on every window and on the whole image; the windows' boxes
are shifted to the image's frame and merged class by class as SAHI does by default (greedy non-maximum merging
of boxes whose intersection covers half of the smaller one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from resdense.errors import ConfigError

__all__ = ["BLENDS", "window_starts", "windows", "blend_weight", "pad_to", "sliding_window_logits", "sliced_detection",
           "merge_detections", "greedy_merge", "check_tiling"]

BLENDS = ("gaussian", "uniform")


def check_tiling(tile: int | None, overlap: float, blend: str = "gaussian", tile_batch: int = 1) -> None:
    """One-line errors for tiling options that cannot work."""
    if tile is not None and (not isinstance(tile, int) or isinstance(tile, bool) or tile < 1):
        raise ConfigError(f"tile = {tile!r}: expected a positive number of pixels")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap = {overlap!r}: expected a fraction in [0, 1)")
    if blend not in BLENDS:
        raise ConfigError(f"blend = {blend!r}: expected one of {', '.join(BLENDS)}")
    if not isinstance(tile_batch, int) or tile_batch < 1:
        raise ConfigError(f"tile_batch = {tile_batch!r}: expected a positive integer")


def window_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the windows along one side: as few windows as a stride of ``tile - round(tile * overlap)``
    needs, spread evenly from 0 to ``size - tile`` (as nnU-Net does; the windows overlap by at least ``overlap``, and
    no window nearly repeats its neighbour at the edge); a side no longer than ``tile`` has one window at 0."""
    if size <= tile:
        return [0]
    stride = max(1, tile - round(tile * overlap))
    n = math.ceil((size - tile) / stride) + 1
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """``(y0, x0, y1, x1)`` of every window, row by row."""
    return [(y, x, min(y + tile, height), min(x + tile, width))
            for y in window_starts(height, tile, overlap) for x in window_starts(width, tile, overlap)]


def blend_weight(height: int, width: int, blend: str) -> Tensor:
    """The blending weight of one window ``[height, width]``: a Gaussian with sigma = side / 8 along each axis (at
    least exp(-8) of the peak along each, so every pixel counts while a window's border counts little), or ones."""
    if blend == "uniform":
        return torch.ones(height, width)
    axes = []
    for n in (height, width):
        c = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (c / max(n / 8, 1e-6)) ** 2))
    return axes[0][:, None] * axes[1][None, :]


def pad_to(x: Tensor, divisor: int) -> Tensor:
    """Zero-pad ``[..., H, W]`` at the bottom/right to multiples of ``divisor``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def sliding_window_logits(forward: Callable[[Tensor], Tensor], image: Tensor, tile: int | None, *,
                          overlap: float = 0.25,
                          blend: str = "gaussian", tile_batch: int = 4, divisor: int = 32) -> Tensor:
    """Logits ``float32 [K, H, W]`` of one image ``[3, H, W]`` by sliding windows (see the module's docstring).

    Args:
        forward: ``x [B, 3, h, w] -> logits [B, K, h, w]`` (the model; ``h``, ``w`` multiples of ``divisor``).
        tile: window side in pixels (``None``: the whole image as one window). Each window is padded to multiples
            of ``divisor`` and cropped back.
    """
    check_tiling(tile, overlap, blend, tile_batch)
    h, w = image.shape[-2:]
    boxes = windows(h, w, tile, overlap) if tile is not None else [(0, 0, h, w)]
    if len(boxes) == 1:  # the tile covers the image: exactly the whole-image prediction
        return forward(pad_to(image[None], divisor))[0, :, :h, :w].float()
    out = weight_sum = None
    weights: dict[tuple[int, int], Tensor] = {}
    for group in _batches(boxes, tile_batch):
        # windows in one batch share a shape: a side shorter than the tile is the same short side in every window
        crops = torch.stack([pad_to(image[:, y0:y1, x0:x1], divisor) for y0, x0, y1, x1 in group])
        logits = forward(crops).float()
        if out is None:
            out = torch.zeros(logits.shape[1], h, w, device=logits.device)
            weight_sum = torch.zeros(h, w, device=logits.device)
        for (y0, x0, y1, x1), lg in zip(group, logits, strict=True):
            key = (y1 - y0, x1 - x0)
            if key not in weights:
                weights[key] = blend_weight(*key, blend).to(logits.device)
            wt = weights[key]
            out[:, y0:y1, x0:x1] += lg[:, :key[0], :key[1]] * wt
            weight_sum[y0:y1, x0:x1] += wt
    return out / weight_sum


def merge_detections(parts: list[dict[str, Tensor]], iou_threshold: float = 0.5,
                     max_detections: int | None = None) -> dict[str, Tensor]:
    """Concatenate detections (already in one frame) and keep the class-wise NMS survivors, best score first."""
    merged = _concat(parts)
    if not len(merged["boxes"]):
        return merged
    keep = batched_nms(merged["boxes"].float(), merged["scores"].float(), merged["labels"], iou_threshold)
    if max_detections is not None:
        keep = keep[:max_detections]
    return {k: v[keep] for k, v in merged.items()}


def _concat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    keys = [k for k in ("boxes", "scores", "labels", "masks") if all(k in p for p in parts)]
    return {k: torch.cat([p[k] for p in parts]) for k in keys}


def greedy_merge(parts: list[dict[str, Tensor]], threshold: float = 0.5,
                 max_detections: int | None = None) -> dict[str, Tensor]:
    """SAHI's ``GREEDYNMM`` with its ``IOS`` match: best score first, a box absorbs the boxes of its class whose
    intersection covers more than ``threshold`` of the smaller one; the merged box is their union, its score the
    best, its mask their union. A window cuts an object at its edge; this joins the pieces (plain NMS by IoU keeps
    a half box beside the whole one)."""
    merged = _concat(parts)
    boxes, scores, labels = merged["boxes"].float(), merged["scores"], merged["labels"]
    if not len(boxes):
        return merged
    area = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    ios = inter / torch.minimum(area[:, None], area[None, :]).clamp_min(1e-9)
    match = (ios > threshold) & (labels[:, None] == labels[None, :])
    free = torch.ones(len(boxes), dtype=torch.bool)
    out_boxes, keep, masks = [], [], []
    for i in scores.argsort(descending=True).tolist():
        if not free[i]:
            continue
        group = (match[i] & free).nonzero().flatten()
        free[group] = False
        out_boxes.append(torch.cat([boxes[group, :2].amin(0), boxes[group, 2:].amax(0)]))
        keep.append(i)
        if "masks" in merged:
            masks.append(merged["masks"][group].amax(0))
    keep = keep[:max_detections] if max_detections is not None else keep
    idx = torch.tensor(keep)
    out = {"boxes": torch.stack(out_boxes[:len(keep)]).to(merged["boxes"].dtype), "scores": scores[idx],
           "labels": labels[idx]}
    if masks:
        out["masks"] = torch.stack(masks[:len(keep)])
    return out


@torch.no_grad()
def sliced_detection(detect: Callable[[list[Tensor]], list[dict[str, Tensor]]], image: Tensor, tile: int, *,
                     overlap: float = 0.25, tile_batch: int = 4, match_threshold: float = 0.5,
                     max_detections: int | None = 100, full_image: bool = True) -> dict[str, Tensor]:
    """Detections on one image ``[3, H, W]`` from windows (and the whole image), merged by :func:`greedy_merge`.

    Args:
        detect: a list of ``[3, h, w]`` images -> torchvision-style outputs (``boxes`` xyxy in each input's pixels,
            ``scores``, ``labels``, optional ``masks [N, 1, h, w]``).
    """
    check_tiling(tile, overlap, "uniform", tile_batch)
    h, w = image.shape[-2:]
    boxes = windows(h, w, tile, overlap)
    parts = []
    if full_image or len(boxes) == 1:
        parts.append(detect([image])[0])
    if len(boxes) > 1:
        for group in _batches(boxes, tile_batch):
            outs = detect([image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in group])
            parts += [_shift(o, y0, x0, h, w) for (y0, x0, _, _), o in zip(group, outs, strict=True)]
    return greedy_merge(parts, match_threshold, max_detections)


def _shift(out: dict[str, Tensor], y0: int, x0: int, height: int, width: int) -> dict[str, Tensor]:
    shifted = dict(out)
    shifted["boxes"] = out["boxes"] + torch.tensor([x0, y0, x0, y0], dtype=out["boxes"].dtype,
                                                   device=out["boxes"].device)
    if "masks" in out:
        m = out["masks"]
        full = m.new_zeros(m.shape[0], m.shape[1], height, width)
        full[..., y0:y0 + m.shape[-2], x0:x0 + m.shape[-1]] = m
        shifted["masks"] = full
    return shifted
