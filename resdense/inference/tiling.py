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
of boxes whose intersection covers half of the smaller one). Instance masks travel as compressed RLEs of the image
when the detector gives RoI masks (:func:`~resdense.heads.roi_mask_outputs`): each is pasted into its box inside
its window and placed at the window's offset, and merged masks are RLE unions, so no image-sized array is ever made
per instance and the memory is that of the tile batch plus the RLEs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from resdense.backbones import pad_to_multiple
from resdense.coco import union_rle
from resdense.errors import ConfigError
from resdense.heads import paste_rles

__all__ = ["BLENDS", "MATCH_METRICS", "MERGES", "window_starts", "windows", "blend_weight", "sliding_window_logits", "sliced_detection",
           "merge_detections", "greedy_merge", "select_detections", "check_tiling"]

BLENDS = ("gaussian", "uniform")
MATCH_METRICS = ("ios", "iou")  # SAHI's IOS (intersection over the smaller box) and IOU
MERGES = ("nmm", "nms")  # SAHI's GREEDYNMM (a group becomes one instance) and NMS (the group's best is kept)


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
        return forward(pad_to_multiple(image[None], divisor)[0])[0, :, :h, :w].float()
    out = weight_sum = None
    weights: dict[tuple[int, int], Tensor] = {}
    for group in _batches(boxes, tile_batch):
        # windows in one batch share a shape: a side shorter than the tile is the same short side in every window
        crops = torch.stack([pad_to_multiple(image[:, y0:y1, x0:x1], divisor)[0] for y0, x0, y1, x1 in group])
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
    return select_detections(merged, keep)


def _concat(parts: list[dict]) -> dict:
    keys = [k for k in ("boxes", "scores", "labels", "masks", "rles") if all(k in p for p in parts)]
    return {k: [r for p in parts for r in p[k]] if k == "rles" else torch.cat([p[k] for p in parts]) for k in keys}


def select_detections(out: dict, index: Tensor) -> dict:
    """The detections ``index`` (indices or a boolean mask) of an output dict; ``rles`` is a list."""
    if index.dtype == torch.bool:
        index = index.nonzero().flatten()
    return {k: [v[i] for i in index.tolist()] if isinstance(v, list) else v[index.to(v.device)]
            for k, v in out.items()}


def greedy_merge(parts: list[dict], threshold: float = 0.5, max_detections: int | None = None, *,
                 metric: str = "ios", merge: str = "nmm") -> dict:
    """SAHI's ``GREEDYNMM`` (``merge="nmm"``) or ``NMS`` (``"nms"``), class by class, with its ``IOS`` or ``IOU``
    match of boxes: best score first, a detection takes the free detections of its class whose box matches its box
    above ``threshold``. With ``"nmm"`` the group becomes one detection: the union of the boxes, the best score,
    the union of the masks (``masks``: pixel-wise max; ``rles``: RLE union); with ``"nms"`` the best is kept as it
    is. A window cuts an object at its edge; merging joins the pieces (plain NMS by IoU keeps a half box beside the
    whole one).

    Args:
        parts: outputs in one frame: ``boxes [N, 4]`` xyxy, ``scores``, ``labels``, optionally ``masks [N, 1, H, W]``
            or ``rles`` (N compressed RLEs of the image).

    Returns:
        The merged detections, best score first, at most ``max_detections``.
    """
    if metric not in MATCH_METRICS or merge not in MERGES:
        raise ConfigError(f"greedy_merge: metric={metric!r} / merge={merge!r}: expected one of "
                          f"{', '.join(MATCH_METRICS)} / {', '.join(MERGES)}")
    merged = _concat(parts)
    boxes, scores, labels = merged["boxes"].float(), merged["scores"], merged["labels"]
    if not len(boxes):
        return merged
    area = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    if metric == "ios":
        denominator = torch.minimum(area[:, None], area[None, :])
    else:
        denominator = area[:, None] + area[None, :] - inter
    match = (inter / denominator.clamp_min(1e-9) > threshold) & (labels[:, None] == labels[None, :])
    free = torch.ones(len(boxes), dtype=torch.bool)
    keep, groups = [], []
    for i in scores.argsort(descending=True).tolist():
        if not free[i]:
            continue
        group = (match[i] & free).nonzero().flatten()
        free[group] = False
        keep.append(i)
        groups.append(group)
        if max_detections is not None and len(keep) == max_detections:
            break
    out = select_detections(merged, torch.tensor(keep))
    if merge == "nms":
        return out
    out["boxes"] = torch.stack([torch.cat([boxes[g, :2].amin(0), boxes[g, 2:].amax(0)]) for g in groups]
                               ).to(merged["boxes"].dtype)
    if "masks" in merged:
        out["masks"] = torch.stack([merged["masks"][g].amax(0) for g in groups])
    if "rles" in merged:
        out["rles"] = [union_rle([merged["rles"][j] for j in g.tolist()]) for g in groups]
    return out


@torch.no_grad()
def sliced_detection(detect: Callable[[list[Tensor]], list[dict[str, Tensor]]], image: Tensor, tile: int, *,
                     overlap: float = 0.25, tile_batch: int = 4, match_threshold: float = 0.5,
                     max_detections: int | None = 100, full_image: bool = True, metric: str = "ios",
                     merge: str = "nmm", mask_threshold: float = 0.5) -> dict:
    """Detections on one image ``[3, H, W]`` from windows (and the whole image), merged by :func:`greedy_merge`.
    A tile that covers the image gives the detector's output on the whole image as it is (nothing to merge).

    Args:
        detect: a list of ``[3, h, w]`` images -> torchvision-style outputs (``boxes`` xyxy in each input's pixels,
            ``scores``, ``labels``; for instance masks either ``masks [N, 1, h, w]`` or ``roi_masks [N, 1, M, M]``
            as :func:`~resdense.heads.roi_mask_outputs` gives them).
        match_threshold, metric, merge: see :func:`greedy_merge`.
        mask_threshold: the probability above which a pixel of a RoI mask is in the instance.

    Returns:
        ``boxes``, ``scores``, ``labels`` and, with instance masks, ``masks [N, 1, H, W]`` (from ``masks``: an image
        sized array per instance) or ``rles`` (from ``roi_masks``: N compressed RLEs of the image, ``counts`` str).
    """
    check_tiling(tile, overlap, "uniform", tile_batch)
    h, w = image.shape[-2:]
    boxes = windows(h, w, tile, overlap)
    parts = []
    if full_image or len(boxes) == 1:
        parts.append(_to_image(detect([image])[0], (0, 0, h, w), h, w, mask_threshold))
    if len(boxes) > 1:
        for group in _batches(boxes, tile_batch):
            outs = detect([image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in group])
            parts += [_to_image(o, box, h, w, mask_threshold) for box, o in zip(group, outs, strict=True)]
    if len(parts) == 1:
        return parts[0]
    return greedy_merge(parts, match_threshold, max_detections, metric=metric, merge=merge)


def _to_image(out: dict[str, Tensor], window: tuple[int, int, int, int], height: int, width: int,
              mask_threshold: float) -> dict:
    """One window's output in the image's frame: boxes shifted, RoI masks pasted as RLEs of the image at the
    window's offset (clipped to the window, as the detector clips them to its input), dense masks placed."""
    y0, x0, y1, x1 = window
    shifted = dict(out)
    if "roi_masks" in out:
        shifted["rles"] = paste_rles(shifted.pop("roi_masks"), out["boxes"], (y1 - y0, x1 - x0), offset=(y0, x0),
                                     image_size=(height, width), threshold=mask_threshold)
    if (y0, x0, y1, x1) == (0, 0, height, width):
        return shifted
    shifted["boxes"] = out["boxes"] + torch.tensor([x0, y0, x0, y0], dtype=out["boxes"].dtype,
                                                   device=out["boxes"].device)
    if "masks" in out:
        m = out["masks"]
        full = m.new_zeros(m.shape[0], m.shape[1], height, width)
        full[..., y0:y0 + m.shape[-2], x0:x0 + m.shape[-1]] = m
        shifted["masks"] = full
    return shifted
