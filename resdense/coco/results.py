"""COCO results: the list a results JSON holds (what ``pycocotools.coco.COCO.loadRes`` reads)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .rle import json_rle

__all__ = ["detection_results"]


def detection_results(image_id: int, category_ids: Sequence[int], scores: Sequence[float], *, boxes=None,
                      segmentations: Sequence[dict] | None = None) -> list[dict]:
    """One image's detections as COCO results: ``image_id``, ``category_id``, ``score`` and, when given,
    ``bbox`` ``[x, y, w, h]`` and ``segmentation`` (a compressed RLE, ``counts`` as ``str``).

    Args:
        boxes: ``[N, 4]`` xyxy in the image's pixels (array-like).
        segmentations: N compressed RLEs of the image.

    A result with ``bbox`` and ``segmentation`` is scored by pycocotools' ``segm`` evaluation with the box's area
    as its size (small / medium / large); drop ``bbox`` to score masks by their own area, as detectron2 does.
    """
    out = [{"image_id": int(image_id), "category_id": int(c), "score": float(s)}
           for c, s in zip(category_ids, scores, strict=True)]
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist()
        for r, box in zip(out, xywh, strict=True):
            r["bbox"] = box
    if segmentations is not None:
        for r, rle in zip(out, segmentations, strict=True):
            r["segmentation"] = json_rle(rle)
    return out
