"""Random COCO ground truth and detections, for differential tests and the speed benchmark.

The generator covers what makes COCO evaluation subtle: crowd regions (uncompressed RLE, like COCO's own),
images without annotations, non-contiguous category ids (0 included), objects in all three area ranges, polygon
and compressed-RLE masks, tied scores, detections of the wrong class, more than ``max_dets`` detections in an
image, and detections near a ground-truth object at every IoU. Nothing here is evaluation logic.
"""

from __future__ import annotations

import warnings

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["random_coco_problem"]


def _random_box(rng: np.random.Generator, w: int, h: int) -> list[float]:
    # Log-uniform side lengths so small (< 32**2), medium and large (> 96**2) objects all occur.
    bw = float(np.exp(rng.uniform(np.log(2.0), np.log(max(w, 3)))))
    bh = float(np.exp(rng.uniform(np.log(2.0), np.log(max(h, 3)))))
    x = float(rng.uniform(0, max(w - bw, 0.0)))
    y = float(rng.uniform(0, max(h - bh, 0.0)))
    return [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)]


def _polygon_in_box(rng: np.random.Generator, box: list[float]) -> list[float]:
    # A star-shaped polygon around the box centre: random radii along sorted angles never self-intersect.
    x, y, w, h = box
    n = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.4, 1.0, n)
    px = x + w / 2 + radii * np.cos(angles) * w / 2
    py = y + h / 2 + radii * np.sin(angles) * h / 2
    return [round(float(v), 2) for xy in zip(px, py, strict=True) for v in xy]


def _mask_of(polygon: list[float], h: int, w: int) -> dict:
    rles = mask_utils.frPyObjects([polygon], h, w)
    return mask_utils.merge(rles)


def _uncompressed(rle: dict, h: int, w: int) -> dict:
    # COCO stores crowd regions as uncompressed RLE: counts as a list of run lengths.
    with warnings.catch_warnings():  # pycocotools 2.0.x + numpy 2 warn about __array__(copy=...) here
        warnings.simplefilter("ignore", DeprecationWarning)
        m = mask_utils.decode(rle)
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": [h, w], "counts": counts}


def _moved(polygon: list[float], src: list[float], dst: list[float]) -> list[float]:
    """The polygon mapped from box ``src`` to box ``dst`` (both xywh)."""
    xy = np.asarray(polygon).reshape(-1, 2)
    xy = (xy - src[:2]) / np.maximum(src[2:], 1e-6) * dst[2:] + dst[:2]
    return [round(float(v), 2) for v in xy.reshape(-1)]


def _jitter(rng: np.random.Generator, box: list[float], scale: float) -> list[float]:
    x, y, w, h = box
    dx, dy = rng.normal(0, scale * w), rng.normal(0, scale * h)
    sw, sh = np.exp(rng.normal(0, scale, 2))
    return [round(x + dx, 2), round(y + dy, 2), round(max(w * sw, 0.5), 2), round(max(h * sh, 0.5), 2)]


def random_coco_problem(
    seed: int,
    *,
    num_images: tuple[int, int] = (1, 8),
    image_size: tuple[int, int] = (24, 320),
    num_categories: tuple[int, int] = (1, 5),
    max_gt_per_image: int = 6,
    max_dt_per_image: int = 16,
    segm: bool = True,
    crowd_prob: float = 0.1,
    dense_image_prob: float = 0.05,
) -> tuple[dict, list[dict], list[dict]]:
    """Build one random evaluation problem.

    Args:
        seed: seed of the numpy generator (same seed, same problem).
        num_images: inclusive range of the number of images.
        image_size: inclusive range of image heights and widths in pixels.
        num_categories: inclusive range of the number of categories (ids drawn from 0..90, so non-contiguous).
        max_gt_per_image: most ground-truth annotations per image (0 occurs too).
        max_dt_per_image: most detections per image, except in "dense" images that get 100-130 of them.
        segm: also build masks (GT polygons / RLE, compressed-RLE detections); off for a faster bbox-only problem.
        crowd_prob: probability that a ground-truth annotation is a crowd region.
        dense_image_prob: probability that an image gets more than 100 detections (exercises max_dets truncation).

    Returns:
        ``(gt, bbox_results, segm_results)``: a COCO ground-truth dict with annotation ids 1..N, and the two result
        lists in COCO results format (``segm_results`` is empty when ``segm`` is False).
    """
    rng = np.random.default_rng(seed)
    n_cats = int(rng.integers(num_categories[0], num_categories[1] + 1))
    cat_ids = sorted(int(c) for c in rng.choice(91, size=n_cats, replace=False))
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in cat_ids]
    images, annotations, bbox_results, segm_results = [], [], [], []
    first_image_id = int(rng.integers(0, 3))  # image id 0 is legal (labelme exports start there)
    for i in range(int(rng.integers(num_images[0], num_images[1] + 1))):
        h, w = (int(v) for v in rng.integers(image_size[0], image_size[1] + 1, 2))
        image_id = first_image_id + 3 * i  # non-contiguous image ids
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.jpg"})
        gt_boxes = []
        for _ in range(int(rng.integers(0, max_gt_per_image + 1))):
            box, polygon = _random_box(rng, w, h), None
            cat = int(rng.choice(cat_ids))
            crowd = int(rng.random() < crowd_prob)
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "bbox": box, "iscrowd": crowd}
            if segm:
                polygon = _polygon_in_box(rng, box)
                rle = _mask_of(polygon, h, w)
                ann["area"] = float(mask_utils.area(rle))
                if crowd:
                    ann["segmentation"] = _uncompressed(rle, h, w)
                elif rng.random() < 0.2:
                    ann["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
                else:
                    ann["segmentation"] = [polygon]
            else:
                ann["area"] = round(box[2] * box[3] * float(rng.uniform(0.5, 1.0)), 2)
            annotations.append(ann)
            gt_boxes.append((box, cat, polygon))
        n_dt = int(rng.integers(0, max_dt_per_image + 1))
        if rng.random() < dense_image_prob:
            n_dt = int(rng.integers(100, 131))
        for _ in range(n_dt):
            if gt_boxes and rng.random() < 0.7:
                gt_box, cat, gt_polygon = gt_boxes[int(rng.integers(len(gt_boxes)))]
                box = _jitter(rng, gt_box, float(rng.choice([0.02, 0.1, 0.3])))
                # The GT outline moved with its box, so mask IoUs spread like box IoUs (true positives occur).
                polygon = _moved(gt_polygon, gt_box, box) if segm else None
                if rng.random() < 0.15:
                    cat = int(rng.choice(cat_ids))
            else:
                box, cat = _random_box(rng, w, h), int(rng.choice(cat_ids))
                polygon = _polygon_in_box(rng, box) if segm else None
            # Two decimals make tied scores common: ties are where ordering bugs hide.
            score = round(float(rng.uniform(0.01, 1.0)), 2)
            bbox_results.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": score})
            if segm:
                rle = _mask_of(polygon, h, w)
                seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
                segm_results.append({"image_id": image_id, "category_id": cat, "segmentation": seg, "score": score})
    if not bbox_results:  # keep every problem evaluable by plain pycocotools (its loadRes fails on [])
        image, cat = images[0], cat_ids[0]
        box = _random_box(rng, image["width"], image["height"])
        bbox_results.append({"image_id": image["id"], "category_id": cat, "bbox": box, "score": 0.5})
        if segm:
            rle = _mask_of(_polygon_in_box(rng, box), image["height"], image["width"])
            seg = {"size": [image["height"], image["width"]], "counts": rle["counts"].decode("ascii")}
            segm_results.append({"image_id": image["id"], "category_id": cat, "segmentation": seg, "score": 0.5})
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, bbox_results, segm_results
