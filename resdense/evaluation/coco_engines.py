"""Running pycocotools or faster-coco-eval quietly on validated inputs, and summarising their arrays.

Both engines fill the same arrays: ``precision`` [T, R, K, A, M] (IoU thresholds, 101 recall points, categories,
area ranges all/small/medium/large, max_dets) and ``recall`` [T, K, A, M], with -1 where a category has no
ground truth in that area range. :func:`summarize` reads the COCO statistics out of them with pycocotools' own
formula (mean over the entries > -1), so both backends are summarised by the same code and the max_dets
handling is fixed in one place. :func:`per_class_ap` and :func:`pr_curves` read the per-category numbers of a
report from the same arrays.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from resdense.coco.io import build_coco, quiet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOutput:
    """What an engine's ``accumulate()`` leaves behind, without the engine object."""

    precision: np.ndarray  # [T, R, K, A, M]
    recall: np.ndarray  # [T, K, A, M]
    iou_thrs: np.ndarray  # [T]
    rec_thrs: np.ndarray  # [R]
    cat_ids: list  # [K], sorted
    cat_names: list  # [K], the GT's category names ("name(id)" where two categories share a name)
    max_dets: list  # [M], sorted


def run_engine(
    gt: dict, results: list[dict], iou_type: str, backend: str, max_dets: Sequence[int], img_ids: list | None
) -> EngineOutput:
    """Evaluate validated inputs (see ``coco_inputs``) with one backend; both receive identical data."""
    dt = _results_dataset(gt, results, iou_type)
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval

        with quiet():
            evaluator = COCOeval(build_coco(gt), build_coco(dt), iou_type)
            _set_params(evaluator.params, max_dets, img_ids)
            evaluator.evaluate()
            evaluator.accumulate()
    else:
        from faster_coco_eval.core import COCO, COCOeval_faster

        coco_gt = COCO(gt, print_function=logger.debug)
        coco_dt = COCO(dt, print_function=logger.debug)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=logger.debug)
        _set_params(evaluator.params, max_dets, img_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    p = evaluator.params
    return EngineOutput(
        precision=np.asarray(evaluator.eval["precision"]),
        recall=np.asarray(evaluator.eval["recall"]),
        iou_thrs=np.asarray(p.iouThrs),
        rec_thrs=np.asarray(p.recThrs),
        cat_ids=[int(c) for c in p.catIds],
        cat_names=_category_names(gt, [int(c) for c in p.catIds]),
        max_dets=list(p.maxDets),
    )


def _category_names(gt: dict, cat_ids: list) -> list[str]:
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt["categories"]}
    counts = Counter(names.values())
    return [names[c] if counts[names[c]] == 1 else f"{names[c]}({c})" for c in cat_ids]


def _results_dataset(gt: dict, results: list[dict], iou_type: str) -> dict:
    """The results as a COCO dataset, with the fields ``COCO.loadRes`` adds: ``id`` 1..N, ``iscrowd`` 0, ``area``
    (box area for bbox, mask area for segm) and, for segm, the mask's ``bbox``.

    Done here rather than by ``loadRes`` because pycocotools' version raises IndexError on an empty list, treats
    any result with a ``bbox`` as a box result, and spends most of its time adding box polygons nobody reads.
    """
    if iou_type == "segm" and results:
        from pycocotools import mask as mask_utils

        # One RLE at a time: pycocotools 2.0.11's area() of a list overflows past 255 masks (uint8 counter).
        for r in results:
            r["area"] = float(mask_utils.area(r["segmentation"]))
        boxes = mask_utils.toBbox([r["segmentation"] for r in results]).tolist()
        for r, box in zip(results, boxes, strict=True):
            r["bbox"] = box
    elif iou_type == "bbox":
        for r in results:
            r["area"] = r["bbox"][2] * r["bbox"][3]
    for i, r in enumerate(results, start=1):
        r["id"], r["iscrowd"] = i, 0
    return {"images": gt["images"], "categories": gt["categories"], "annotations": results}


def _set_params(params, max_dets: Sequence[int], img_ids: list | None) -> None:
    params.maxDets = sorted(int(m) for m in max_dets)
    if img_ids is not None:
        params.imgIds = sorted(set(img_ids))


def _mean_defined(s: np.ndarray) -> float:
    # pycocotools' _summarize: -1 marks "no ground truth here"; the mean is over the other entries.
    s = s[s > -1]
    return float(np.mean(s)) if s.size else -1.0


def summarize(out: EngineOutput) -> dict[str, float]:
    """The COCO statistics, all at the largest ``max_dets`` except ``AR<m>`` for each ``m``.

    pycocotools' ``summarize`` hard-codes ``maxDets=100`` for AP and indexes ``maxDets[0..2]`` for AR, so a custom
    ``max_dets`` without 100 yields AP = -1 (or an IndexError with fewer than three values); here AP, APs/m/l and
    ARs/m/l use the largest value and every ``max_dets`` value gets an ``AR<m>``. With the default (1, 10, 100)
    this is exactly pycocotools' summary.
    """
    prec, rec = out.precision, out.recall
    m = len(out.max_dets) - 1
    t50, t75 = _thr(out, 0.5), _thr(out, 0.75)
    stats = {
        "AP": _mean_defined(prec[:, :, :, 0, m]),
        "AP50": _mean_defined(prec[t50][:, :, :, 0, m]),
        "AP75": _mean_defined(prec[t75][:, :, :, 0, m]),
        "APs": _mean_defined(prec[:, :, :, 1, m]),
        "APm": _mean_defined(prec[:, :, :, 2, m]),
        "APl": _mean_defined(prec[:, :, :, 3, m]),
    }
    for i, max_det in enumerate(out.max_dets):
        stats[f"AR{max_det}"] = _mean_defined(rec[:, :, 0, i])
    stats["ARs"] = _mean_defined(rec[:, :, 1, m])
    stats["ARm"] = _mean_defined(rec[:, :, 2, m])
    stats["ARl"] = _mean_defined(rec[:, :, 3, m])
    return stats


def _thr(out: EngineOutput, iou: float) -> np.ndarray:
    # pycocotools' _summarize selects a threshold by exact equality (np.where(iouThr == p.iouThrs)).
    return np.where(out.iou_thrs == iou)[0]


def per_class_ap(out: EngineOutput, iou: float | None = None) -> list[float]:
    """AP of each category in ``out.cat_ids`` (all areas, largest max_dets): at IoU threshold ``iou`` (0.5 for
    AP50) or, with ``None``, averaged over the thresholds (AP); -1 for a category without ground truth. The mean of
    the entries > -1 of ``precision[t, :, k, 0, m]``, as pycocotools' summarize computes AP."""
    m = len(out.max_dets) - 1
    t = slice(None) if iou is None else _thr(out, iou)
    return [_mean_defined(out.precision[t, :, k, 0, m]) for k in range(len(out.cat_ids))]


def pr_curves(out: EngineOutput) -> dict[str, np.ndarray]:
    """Precision-recall curves per category, from ``precision`` at area "all" and the largest max_dets.

    Returns:
        ``recall`` [R] (the recall thresholds), ``iou50`` [K, R] (precision at IoU 0.5: ``precision[t50, :, k, 0,
        m]``) and ``mean`` [K, R] (the mean over the IoU thresholds of the entries > -1). Rows of categories
        without ground truth are -1, as in the engines' arrays.
    """
    m = len(out.max_dets) - 1
    prec = out.precision[:, :, :, 0, m]  # [T, R, K]
    defined = prec > -1
    count = defined.sum(0)
    mean = np.where(count > 0, np.where(defined, prec, 0.0).sum(0) / np.maximum(count, 1), -1.0)
    t50 = _thr(out, 0.5)
    iou50 = prec[t50[0]] if t50.size else np.full(prec.shape[1:], -1.0)
    return {"recall": out.rec_thrs.copy(), "iou50": iou50.T.copy(), "mean": mean.T}
