"""The arrays behind the evaluation reports equal pycocotools' own, on random problems run through plain COCOeval.

``CocoEvaluation.pr_curves()`` must be ``eval["precision"]`` at area "all" and maxDets 100 (at IoU 0.5, and its mean
over the ten IoU thresholds); ``CocoEvaluation.per_class()`` must be pycocotools' per-category AP (the mean of the
entries > -1 of ``precision[:, :, k, 0, -1]``, the standard classwise computation), -1 without ground truth.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from resdense.evaluation import coco_evaluate, coco_map

from ._reference import reference_eval
from .synthetic import random_coco_problem

# (seed, iou_type): bbox problems plus a few segm ones (masks are slower to build and match).
CASES = [(seed, "bbox") for seed in range(8)] + [(seed, "segm") for seed in (100, 101, 102)]


def _problem(seed: int, iou_type: str) -> tuple[dict, list[dict]]:
    gt, bbox, segm = random_coco_problem(seed, segm=iou_type == "segm")
    # A category nobody annotated: its rows must be -1 (no ground truth), in pycocotools and here.
    gt["categories"].append({"id": 95, "name": "unannotated", "supercategory": "thing"})
    return gt, bbox if iou_type == "bbox" else segm


def _both(seed: int, iou_type: str, backend: str):
    """``(ours, pycocotools' precision [T, R, K] at area all and maxDets 100, its params, the GT)``."""
    gt, results = _problem(seed, iou_type)
    ev = reference_eval(gt, results, iou_type)
    assert list(ev.params.maxDets)[-1] == 100
    ours = coco_evaluate(copy.deepcopy(gt), copy.deepcopy(results), iou_type, backend)
    return ours, np.asarray(ev.eval["precision"])[:, :, :, 0, -1], ev.params, gt


def _ap(p: np.ndarray) -> float:
    defined = p[p > -1]
    return float(defined.mean()) if defined.size else -1.0


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
@pytest.mark.parametrize("seed,iou_type", CASES)
def test_pr_curves_are_pycocotools_precision(seed, iou_type, backend):
    ours, prec, params, _ = _both(seed, iou_type, backend)
    curves = ours.pr_curves()
    t50 = int(np.flatnonzero(params.iouThrs == 0.5)[0])
    # faster-coco-eval's C++ accumulation differs from numpy's in the last bit of some values
    tol = {"rtol": 0, "atol": 0 if backend == "pycocotools" else 1e-12}
    np.testing.assert_array_equal(curves["recall"], params.recThrs)
    np.testing.assert_allclose(curves["iou50"], prec[t50].T, **tol)
    with_gt = (prec > -1).any(axis=(0, 1))
    mean = np.where(with_gt[:, None], prec.mean(axis=0).T, -1.0)
    np.testing.assert_allclose(curves["mean"], mean, rtol=0, atol=1e-12)
    assert not with_gt[-1] and (curves["mean"][-1] == -1).all()  # the unannotated category


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
@pytest.mark.parametrize("seed,iou_type", CASES)
def test_per_class_ap_is_pycocotools_per_category_mean(seed, iou_type, backend):
    ours, prec, params, gt = _both(seed, iou_type, backend)
    rows = ours.per_class()
    assert [r["category_id"] for r in rows] == list(params.catIds)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    assert [r["name"] for r in rows] == [names[c] for c in params.catIds]
    t50, t75 = (int(np.flatnonzero(params.iouThrs == t)[0]) for t in (0.5, 0.75))
    for k, row in enumerate(rows):
        expected = {"AP": _ap(prec[:, :, k]), "AP50": _ap(prec[t50, :, k]), "AP75": _ap(prec[t75, :, k])}
        assert row["AP"] == pytest.approx(expected["AP"], abs=1e-12), (k, row)
        assert row["AP50"] == pytest.approx(expected["AP50"], abs=1e-12), (k, row)
        assert row["AP75"] == pytest.approx(expected["AP75"], abs=1e-12), (k, row)
    assert rows[-1]["AP"] == -1.0


def test_the_evaluation_keeps_coco_maps_statistics():
    gt, results = _problem(3, "bbox")
    evaluation = coco_evaluate(copy.deepcopy(gt), copy.deepcopy(results), "bbox", classwise=True)
    assert evaluation.stats == coco_map(copy.deepcopy(gt), copy.deepcopy(results), "bbox", classwise=True)
    # the classwise statistics are the per-class table's AP column
    assert [evaluation.stats[f"AP-{r['name']}"] for r in evaluation.per_class()] == [
        r["AP"] for r in evaluation.per_class()]


def test_duplicate_category_names_are_told_apart():
    gt, results = _problem(4, "bbox")
    for cat in gt["categories"]:
        cat["name"] = "thing"
    names = [r["name"] for r in coco_evaluate(gt, results, "bbox").per_class()]
    assert names == [f"thing({c['id']})" for c in sorted(gt["categories"], key=lambda c: c["id"])]
