"""Mask R-CNN's instance masks as compressed RLE, without an image-sized array per instance.

torchvision's Mask R-CNN pastes every instance's ``M x M`` RoI mask into a float ``[N, 1, H, W]`` tensor
(``paste_masks_in_image``): 4 bytes per pixel per instance, 64 MiB per instance of a 4096 x 4096 image, and a
large image with hundreds of instances does not fit in memory. Here the model runs with its RoI masks kept as they
are (:func:`roi_mask_outputs`), and :func:`paste_rles` pastes each one into its own box only, thresholds it and
encodes that crop as an RLE of the whole image (:func:`~resdense.coco.encode_crop`): the pixels of torchvision's
paste thresholded, at the memory cost of one box.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

from resdense.coco import encode_crop
from resdense.errors import ConfigError

__all__ = ["has_masks", "roi_mask_outputs", "paste_rles"]


def has_masks(model: nn.Module) -> bool:
    """True for a torchvision detector with a mask branch (Mask R-CNN)."""
    roi_heads = getattr(model, "roi_heads", None)
    return bool(callable(getattr(roi_heads, "has_mask", None)) and roi_heads.has_mask())


@torch.no_grad()
def roi_mask_outputs(model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """A Mask R-CNN's outputs in eval mode with its RoI masks instead of pasted masks.

    Args:
        model: a torchvision Mask R-CNN in eval mode.
        images: ``[3, H, W]`` images in [0, 1].

    Returns:
        One dict per image: ``boxes`` (xyxy in the image's pixels), ``labels``, ``scores`` as ``model(images)``
        gives them, and ``roi_masks`` float ``[N, 1, M, M]``: each instance's mask probabilities over its box (what
        :func:`paste_rles` takes), in place of ``masks [N, 1, H, W]``.

    Raises:
        ConfigError: the model has no mask branch.
    """
    if not has_masks(model):
        raise ConfigError(f"{type(model).__name__} has no mask branch: RoI masks come from a Mask R-CNN")
    stash: list[Tensor] = []

    def take_masks(module: nn.Module, inputs: tuple, output: tuple) -> None:
        # RoIHeads returns (detections, losses); without "masks" the transform's postprocess resizes the boxes to
        # the image's frame and pastes nothing.
        stash.extend(d.pop("masks") for d in output[0])

    handle = model.roi_heads.register_forward_hook(take_masks)
    try:
        outputs = model(images)
    finally:
        handle.remove()
    for out, masks in zip(outputs, stash, strict=True):
        out["roi_masks"] = masks
    return outputs


def paste_rles(roi_masks: Tensor, boxes: Tensor, size: tuple[int, int], *, offset: tuple[int, int] = (0, 0),
               image_size: tuple[int, int] | None = None, threshold: float = 0.5) -> list[dict]:
    """RoI masks pasted into their boxes and encoded as RLEs of an image, exactly as torchvision pastes them.

    torchvision's ``paste_masks_in_image`` (one pixel of padding, the box grown to match, bilinear resizing to the
    box, clipped to the frame) is followed here for the box only; a pixel belongs to the instance where its
    probability is above ``threshold``.

    Args:
        roi_masks: float ``[N, 1, M, M]`` (``roi_masks`` of :func:`roi_mask_outputs`).
        boxes: ``[N, 4]`` xyxy in the frame the model saw.
        size: ``(h, w)`` of that frame; masks are clipped to it, as torchvision clips them to its input.
        offset: ``(top, left)`` of the frame in the image the RLEs describe (a window's place in a large image).
        image_size: ``(H, W)`` of that image (default: ``size``).
        threshold: the probability above which a pixel is in the mask (torchvision's evaluation uses 0.5).

    Returns:
        N compressed RLEs of ``image_size`` (``counts`` as ``str``).
    """
    height, width = image_size if image_size is not None else size
    top, left = offset
    if not len(roi_masks):
        return []
    masks, scale = expand_masks(roi_masks.float(), padding=1)
    grown = expand_boxes(boxes.float().to(masks.device), scale).to(torch.int64).tolist()
    rles = []
    for mask, (bx0, by0, bx1, by1) in zip(masks[:, 0], grown, strict=True):
        x0, x1 = max(bx0, 0), min(bx1 + 1, size[1])
        y0, y1 = max(by0, 0), min(by1 + 1, size[0])
        if x1 <= x0 or y1 <= y0:
            rles.append(encode_crop(np.zeros((0, 0), bool), top, left, height, width))
            continue
        box_hw = (max(by1 - by0 + 1, 1), max(bx1 - bx0 + 1, 1))
        resized = F.interpolate(mask[None, None], size=box_hw, mode="bilinear", align_corners=False)[0, 0]
        crop = resized[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0] > threshold
        rles.append(encode_crop(crop.cpu().numpy(), top + y0, left + x0, height, width))
    return rles
