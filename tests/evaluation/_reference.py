"""pycocotools called the documented way, on private copies: the reference every parity test compares against."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resdense.evaluation import COCO_STAT_KEYS


def reference_eval(
    gt: dict, results: list, iou_type: str, *, max_dets=None, img_ids=None, cat_ids=None
) -> COCOeval:
    """COCO(gt) -> loadRes -> COCOeval -> evaluate/accumulate/summarize, stdout swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        if cat_ids is not None:
            ev.params.catIds = list(cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def reference_stats(gt: dict, results: list, iou_type: str, **kwargs) -> np.ndarray:
    """The 12 numbers of pycocotools' summarize(), in COCO_STAT_KEYS order."""
    return np.asarray(reference_eval(gt, results, iou_type, **kwargs).stats, dtype=np.float64)


def as_array(stats: dict) -> np.ndarray:
    return np.asarray([stats[k] for k in COCO_STAT_KEYS], dtype=np.float64)
