"""COCO detection metrics (AP / AR) equal to pycocotools', with its pitfalls turned into errors.

>>> from resdense.evaluation import coco_map
>>> stats = coco_map("instances_val2017.json", "detections.json")          # doctest: +SKIP
>>> stats["AP"], stats["AP50"]                                              # doctest: +SKIP

Conventions (all pycocotools'): 10 IoU thresholds 0.50:0.05:0.95, 101-point interpolated precision, area ranges
small < 32**2 <= medium < 96**2 <= large taken from the ground truth's ``area`` field (the detection's own area
for unmatched detections), crowd regions matched but never counted, and -1 for a statistic that has no ground
truth (e.g. ``APs`` on a dataset without small objects).

What this adds to the engines (pycocotools 2.0.x, faster-coco-eval 1.x), each covered by a test:

* Validation first (see ``coco_inputs``): result image / category ids absent from the GT (pycocotools asserts
  without naming them), NaN/inf boxes or scores (a NaN box matches any GT: every ``iou < t`` test is False),
  GT annotation id 0 (stored as the match flag, it reads as "unmatched": TPs become FPs; faster-coco-eval only
  warns) and duplicate ids (collapsed by the id index). ``renumber_ann_ids=True`` renumbers instead of refusing.
* Result datasets are built here, not by ``loadRes``: empty results work (pycocotools: IndexError), segm results
  never take their area from a ``bbox`` field (pycocotools' loadRes treats any result with ``bbox`` as a box),
  polygons and uncompressed RLE are accepted, and the caller's lists are never modified.
* Statistics are read from the engines' ``precision`` / ``recall`` arrays by one function for both backends, at
  the largest ``max_dets`` (pycocotools' ``summarize`` hard-codes 100 and reports AP = -1 without it).
* :func:`coco_evaluate` also returns the accumulated arrays of the engine that ran (``precision`` [T, R, K, A, M],
  ``recall``, thresholds, category ids and names) with the per-class AP table and precision-recall curves read
  from them, for reports.
* Engines run quietly (pycocotools' prints go to the debug log) and with the cyclic GC paused, which alone makes
  a val2017-sized bbox evaluation ~1.5x faster than calling faster-coco-eval directly.

faster-coco-eval vs pycocotools: on the same inputs the 12 statistics agree to 2.3e-16 in our differential tests
(the C++ accumulation differs from numpy's in the last bit of some precision values), not bit for bit.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from resdense.errors import ConfigError, EvaluationError

from .coco_engines import EngineOutput, per_class_ap, pr_curves, run_engine, summarize
from .coco_inputs import load_ground_truth, load_results

__all__ = ["COCO_STAT_KEYS", "BACKENDS", "CocoEvaluation", "check_max_dets", "coco_evaluate", "coco_map"]

logger = logging.getLogger(__name__)

#: The 12 statistics of pycocotools' ``summarize()``, in its order, for the default ``max_dets``.
COCO_STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

BACKENDS = ("faster", "pycocotools")  # faster-coco-eval, or the reference implementation
_IOU_TYPES = ("bbox", "segm")


def coco_map(
    gt: Any,
    results: Any,
    iou_type: str = "bbox",
    backend: str = "faster",
    max_dets: Sequence[int] = (1, 10, 100),
    classwise: bool = False,
    *,
    img_ids: Iterable[int] | None = None,
    renumber_ann_ids: bool = False,
) -> dict[str, float]:
    """COCO AP / AR of ``results`` against ``gt``, identical to pycocotools' ``COCOeval.summarize()``.

    Args:
        gt: ground truth: a path to a COCO JSON file, a COCO dict, or a ``COCO`` object (pycocotools or
            faster-coco-eval). It is copied, never modified.
        results: a path to a COCO results JSON file or a list of dicts ``{"image_id", "category_id", "score",
            "bbox": [x, y, w, h]}`` (bbox) / ``{..., "segmentation": RLE or polygons}`` (segm; masks in the image's
            full size). An empty list gives zeros (where there is ground truth) and a warning.
        iou_type: ``"bbox"`` or ``"segm"``. For segm any ``bbox`` field of the results is ignored, so areas and
            area ranges come from the masks.
        backend: ``"faster"`` (faster-coco-eval's C++ engine, the default) or ``"pycocotools"`` (the reference).
            Both give the same numbers to 1e-12 (faster-coco-eval's precision differs in the last bit at most).
        max_dets: detections kept per image and category. AP and the area-range stats use the largest value; each
            value ``m`` gets a key ``AR<m>``. (pycocotools reports AP = -1 when 100 is not among them.)
        classwise: also return ``"AP-<category name>"`` (IoU 0.50:0.95, all areas) per category; -1 without GT.
        img_ids: evaluate only these images (e.g. the ones a model was run on); default all GT images.
        renumber_ann_ids: renumber GT annotations 1..N instead of refusing annotation id 0 or duplicate ids.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}`` as floats in
        [0, 1] or -1 (no ground truth for that statistic); ``AR<m>`` follow ``max_dets``.

    Raises:
        EvaluationError: unreadable files; result image or category ids absent from the GT; NaN/inf boxes or
            scores; negative box sizes; GT annotation id 0 or duplicate ids; masks of the wrong size.
        ConfigError: an unknown ``iou_type`` / ``backend`` or invalid ``max_dets``.

    Side effect: Python's cyclic garbage collector is paused (``gc.disable()``) while the call runs and re-enabled
    after, if it was on: for the whole process, other threads included. The evaluation allocates millions of small
    acyclic objects, and the collections they trigger take a large share of the time on val2017; reference
    counting still frees everything, so only a cycle created meanwhile by another thread waits for the end.
    """
    with _gc_paused():
        return _coco_map(gt, results, iou_type, backend, max_dets, classwise, img_ids, renumber_ann_ids).stats


@dataclass(frozen=True)
class CocoEvaluation:
    """The statistics of :func:`coco_map` and the arrays they were read from (``arrays.precision`` [T, R, K, A, M]
    with T IoU thresholds, R recall thresholds, K categories, A = all/small/medium/large, M max_dets; -1 where a
    category has no ground truth), as the engine that ran accumulated them."""

    stats: dict[str, float]
    arrays: EngineOutput

    def per_class(self) -> list[dict[str, Any]]:
        """One row per category (sorted by id): ``category_id``, ``name``, ``AP`` (IoU 0.50:0.95), ``AP50``,
        ``AP75``; all areas, the largest max_dets; -1 for a category without ground truth."""
        out = self.arrays
        columns = {"AP": per_class_ap(out), "AP50": per_class_ap(out, 0.5), "AP75": per_class_ap(out, 0.75)}
        return [{"category_id": c, "name": n, **{k: v[i] for k, v in columns.items()}}
                for i, (c, n) in enumerate(zip(out.cat_ids, out.cat_names, strict=True))]

    def pr_curves(self) -> dict[str, np.ndarray]:
        """``recall`` [R], ``iou50`` [K, R] and ``mean`` (over IoU 0.50:0.95) [K, R] precision per category, at
        area all and the largest max_dets; rows of categories without ground truth are -1."""
        return pr_curves(self.arrays)


def coco_evaluate(
    gt: Any,
    results: Any,
    iou_type: str = "bbox",
    backend: str = "faster",
    max_dets: Sequence[int] = (1, 10, 100),
    classwise: bool = False,
    *,
    img_ids: Iterable[int] | None = None,
    renumber_ann_ids: bool = False,
) -> CocoEvaluation:
    """:func:`coco_map` (same arguments, same checks), keeping the engine's arrays: for per-class tables and
    precision-recall curves (:meth:`CocoEvaluation.per_class`, :meth:`CocoEvaluation.pr_curves`)."""
    with _gc_paused():
        return _coco_map(gt, results, iou_type, backend, max_dets, classwise, img_ids, renumber_ann_ids)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: COCO evaluation allocates millions of small dicts, lists and tuples
    (none of them cyclic), and each allocation burst triggers full collections that rescan the whole heap; on
    val2017 that is a large share of the run time, in both engines."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _coco_map(
    gt: Any,
    results: Any,
    iou_type: str,
    backend: str,
    max_dets: Sequence[int],
    classwise: bool,
    img_ids: Iterable[int] | None,
    renumber_ann_ids: bool,
) -> CocoEvaluation:
    if iou_type not in _IOU_TYPES:
        raise ConfigError(f"coco_map: iou_type must be one of {_IOU_TYPES}, got {iou_type!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"coco_map: backend must be one of {BACKENDS}, got {backend!r}")
    max_dets = check_max_dets(max_dets)
    dataset = load_ground_truth(gt, iou_type, renumber_ann_ids=renumber_ann_ids)
    dets = load_results(results, dataset, iou_type)
    if img_ids is not None:
        img_ids = [int(i) for i in img_ids]
        unknown = set(img_ids) - {img["id"] for img in dataset["images"]}
        if unknown:
            raise EvaluationError(f"coco_map: img_ids absent from the ground truth: {sorted(unknown)[:10]}")
        if not img_ids:
            raise EvaluationError("coco_map: img_ids is empty; there is nothing to evaluate")
    if not dets:
        warnings.warn(
            f"coco_map: no {iou_type} results; AP and AR are 0 wherever there is ground truth",
            UserWarning,
            stacklevel=3,
        )
    if not dataset["annotations"]:
        warnings.warn("coco_map: the ground truth has no annotations; every statistic is -1", UserWarning, stacklevel=3)

    out = run_engine(dataset, dets, iou_type, backend, max_dets, img_ids)
    stats = summarize(out)
    if classwise:
        stats.update({f"AP-{name}": ap for name, ap in zip(out.cat_names, per_class_ap(out), strict=True)})
    logger.debug("coco_map(%s, %s): %s", iou_type, backend, stats)
    return CocoEvaluation(stats, out)


def check_max_dets(max_dets: Sequence[int]) -> list[int]:
    """``max_dets`` as sorted distinct positive ints (COCO's per-image detection limits), else a ConfigError."""
    try:
        values = [int(m) for m in max_dets]
    except (TypeError, ValueError):
        raise ConfigError(f"coco_map: max_dets must be a sequence of positive ints, got {max_dets!r}") from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise ConfigError(f"coco_map: max_dets must be distinct positive ints, got {max_dets!r}")
    return sorted(values)
