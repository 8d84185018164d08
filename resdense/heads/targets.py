"""Check detection targets before torchvision sees them, so bad annotations fail with one clear line.

torchvision finds degenerate boxes only after resizing, names no box index, and lets out-of-range labels reach
``cross_entropy`` as an opaque index error. Empty targets (zero boxes) are valid: the image trains as a negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from resdense.errors import DataError

__all__ = ["validate_detection_targets", "install_target_check", "TargetCheck"]


def validate_detection_targets(
    targets: Sequence[dict[str, Tensor]],
    num_classes: int | None = None,
    *,
    masks: bool = False,
    images: Sequence[Tensor] | None = None,
) -> list[dict[str, Tensor]]:
    """Validate torchvision-style targets; return them with empty ``boxes`` reshaped to ``[0, 4]``.

    Args:
        targets: one dict per image with ``boxes`` float ``[N, 4]`` (x1, y1, x2, y2 in pixels) and ``labels``
            int64 ``[N]`` in ``1..num_classes-1`` (0 is background, torchvision's convention); ``masks``
            ``[N, H, W]`` when ``masks=True`` (Mask R-CNN training).
        num_classes: the detector's number of classes including background; ``None`` skips the label range check.
        images: the matching images ``[C, H, W]``, to check that the mask sizes fit them.

    Raises:
        DataError: naming the image index, the field, the box index and the offending values.
    """
    if images is not None and len(images) != len(targets):
        raise DataError(f"detection batch: {len(images)} images but {len(targets)} targets")
    out = []
    for i, t in enumerate(targets):
        if not isinstance(t, dict):
            raise DataError(f"target {i}: expected a dict with 'boxes' and 'labels', got {type(t).__name__}")
        for key in ("boxes", "labels"):
            if key not in t:
                raise DataError(f"target {i}: missing field '{key}' (has {sorted(t)})")
        boxes, labels = t["boxes"], t["labels"]
        if not isinstance(boxes, Tensor) or not boxes.is_floating_point():
            raise DataError(f"target {i}: 'boxes' must be a float tensor [N, 4], got {_describe(boxes)}")
        if boxes.numel() == 0 and boxes.shape != (0, 4):
            t = dict(t, boxes=boxes.reshape(0, 4))  # e.g. torch.zeros(0): an image without objects
            boxes = t["boxes"]
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise DataError(f"target {i}: 'boxes' must have shape [N, 4], got {list(boxes.shape)}")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (boxes.shape[0],):
            raise DataError(
                f"target {i}: 'labels' must be an int64 tensor of shape [{boxes.shape[0]}] (one per box), "
                f"got {_describe(labels)}"
            )
        _check_values(i, boxes, labels, num_classes)
        if masks:
            _check_masks(i, t, boxes.shape[0], None if images is None else images[i])
        out.append(t)
    return out


def _check_values(i: int, boxes: Tensor, labels: Tensor, num_classes: int | None) -> None:
    """Target ``i``'s coordinates are finite and each box has x2 > x1, y2 > y1; labels are in range."""
    if not torch.isfinite(boxes).all():
        j = int((~torch.isfinite(boxes)).any(dim=1).nonzero()[0])
        raise DataError(f"target {i}: box {j} has non-finite coordinates {boxes[j].tolist()}")
    degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
    if degenerate.any():
        j = int(degenerate.nonzero()[0])
        raise DataError(
            f"target {i}: box {j} is degenerate (x1, y1, x2, y2) = {[round(v, 4) for v in boxes[j].tolist()]}: "
            f"needs x2 > x1 and y2 > y1 ({int(degenerate.sum())} degenerate boxes in this image)"
        )
    if num_classes is not None and labels.numel():
        bad = (labels < 1) | (labels >= num_classes)
        if bad.any():
            j = int(bad.nonzero()[0])
            raise DataError(
                f"target {i}: box {j} has label {int(labels[j])}; labels must be in 1..{num_classes - 1} "
                f"(num_classes={num_classes} includes background 0)"
            )


def _check_masks(i: int, t: dict[str, Tensor], n: int, image: Tensor | None) -> None:
    m = t.get("masks")
    if m is None:
        raise DataError(f"target {i}: Mask R-CNN training needs 'masks' [N, H, W]; the target has {sorted(t)}")
    if not isinstance(m, Tensor) or m.ndim != 3 or m.shape[0] != n:
        raise DataError(f"target {i}: 'masks' must be a tensor [{n}, H, W] (one per box), got {_describe(m)}")
    if image is not None and n and tuple(m.shape[1:]) != tuple(image.shape[-2:]):
        raise DataError(f"target {i}: 'masks' are {list(m.shape[1:])} but the image is {list(image.shape[-2:])}")


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {list(x.shape)}"
    return type(x).__name__


class TargetCheck:
    """Forward pre-hook validating ``targets`` of a torchvision detector (a class, not a closure, so the model
    still pickles)."""

    def __init__(self, num_classes: int, masks: bool = False) -> None:
        self.num_classes, self.masks = num_classes, masks

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        images = args[0] if args else kwargs.get("images")
        in_args = len(args) > 1
        targets = args[1] if in_args else kwargs.get("targets")
        if targets is None:
            return None
        checked = validate_detection_targets(
            targets, self.num_classes, masks=self.masks and module.training, images=images
        )
        if in_args:
            return (args[0], checked, *args[2:]), kwargs
        return args, dict(kwargs, targets=checked)


def install_target_check(model: nn.Module, num_classes: int, masks: bool = False) -> None:
    """Register :class:`TargetCheck` as a forward pre-hook of a torchvision detector.

    The model stays an instance of its torchvision class; the check runs on ``model(images, targets)`` whenever
    targets are given, in training and in evaluation.
    """
    model.register_forward_pre_hook(TargetCheck(num_classes, masks), with_kwargs=True)
