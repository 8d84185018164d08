"""coco_map equals pycocotools on randomized problems, for both iou types and both backends.

Each problem (see tests/evaluation/synthetic.py) has crowd regions, images without annotations, non-contiguous
category ids (0 possible), small/medium/large objects, polygon and RLE masks, tied scores and images with more
than 100 detections. 110 seeds x 2 iou types = 220 differential cases, each checked with both backends.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from resdense.evaluation import coco_map
from tests.evaluation.synthetic import random_coco_problem

from ._reference import as_array, reference_eval, reference_stats

SEEDS_PER_BLOCK = 10
BLOCKS = 11
TOL = 1e-10


@pytest.mark.filterwarnings("ignore:coco_map. the ground truth has no annotations")  # some seeds, on purpose
@pytest.mark.parametrize("block", range(BLOCKS))
def test_random_problems_match_pycocotools(block):
    best_ap = {"bbox": 0.0, "segm": 0.0}
    for seed in range(block * SEEDS_PER_BLOCK, (block + 1) * SEEDS_PER_BLOCK):
        gt, bbox_results, segm_results = random_coco_problem(seed)
        pristine = copy.deepcopy((gt, bbox_results, segm_results))
        for iou_type, results in (("bbox", bbox_results), ("segm", segm_results)):
            assert results, f"seed {seed}: the generator made no detections"
            expected = reference_stats(gt, results, iou_type)
            best_ap[iou_type] = max(best_ap[iou_type], expected[0])
            for backend in ("faster", "pycocotools"):
                got = as_array(coco_map(gt, results, iou_type, backend))
                np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, err_msg=f"{seed} {iou_type} {backend}")
        assert (gt, bbox_results, segm_results) == pristine, f"seed {seed}: coco_map modified its inputs"
    # Matches happen in both iou types (a problem of only false positives would test little).
    assert min(best_ap.values()) > 0.05, best_ap


def test_generator_covers_the_hard_cases():
    """The differential cases above are only as good as what they contain."""
    seen = dict(crowd=0, empty_images=0, cat0=0, polygon=0, rle=0, uncompressed=0, dense=0, ties=0)
    areas = []
    for seed in range(BLOCKS * SEEDS_PER_BLOCK):
        gt, bbox_results, _ = random_coco_problem(seed)
        anns = gt["annotations"]
        seen["crowd"] += sum(a["iscrowd"] for a in anns)
        seen["empty_images"] += len({i["id"] for i in gt["images"]} - {a["image_id"] for a in anns})
        seen["cat0"] += any(c["id"] == 0 for c in gt["categories"])
        for a in anns:
            seg = a["segmentation"]
            kind = "polygon" if isinstance(seg, list) else "uncompressed" if isinstance(seg["counts"], list) else "rle"
            seen[kind] += 1
        areas += [a["area"] for a in anns]
        per_image = np.bincount([r["image_id"] for r in bbox_results])
        seen["dense"] += int((per_image > 100).sum())
        scores = [r["score"] for r in bbox_results]
        seen["ties"] += len(scores) - len(set(scores))
    assert all(v > 0 for v in seen.values()), seen
    areas = np.asarray(areas)
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_classwise_ap_matches_pycocotools_per_category(iou_type):
    gt, bbox_results, segm_results = random_coco_problem(7, num_categories=(3, 3))
    results = bbox_results if iou_type == "bbox" else segm_results
    stats = coco_map(gt, results, iou_type, classwise=True)
    for cat in gt["categories"]:
        # An independent reference: pycocotools restricted to this one category.
        expected = reference_eval(gt, results, iou_type, cat_ids=[cat["id"]]).stats[0]
        assert stats[f"AP-{cat['name']}"] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_img_ids_restricts_evaluation_like_pycocotools(backend):
    gt, results, _ = random_coco_problem(3, num_images=(6, 6), segm=False)
    subset = [img["id"] for img in gt["images"][:3]]
    expected = reference_stats(gt, results, "bbox", img_ids=subset)
    got = as_array(coco_map(gt, results, "bbox", backend, img_ids=subset))
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def _top_k(results: list[dict], k: int) -> list[dict]:
    """Keep each (image, category)'s k best detections, ties in list order (pycocotools' stable sort)."""
    groups: dict = {}
    for r in results:
        groups.setdefault((r["image_id"], r["category_id"]), []).append(r)
    kept = []
    for group in groups.values():
        kept += sorted(group, key=lambda r: -r["score"])[:k]  # sorted() is stable
    return kept


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_custom_max_dets_reports_the_largest(backend):
    gt, results, _ = random_coco_problem(11, num_images=(5, 5), segm=False, max_dt_per_image=40)
    stats = coco_map(gt, results, "bbox", backend, max_dets=(3, 20))
    # pycocotools itself reports AP = -1 here: its summarize() looks for maxDets == 100.
    assert reference_eval(gt, results, "bbox", max_dets=[3, 20, 50]).stats[0] == -1
    # Independent reference: truncate to the k best per image and category, then evaluate with the defaults.
    at20 = reference_stats(gt, _top_k(results, 20), "bbox")
    at3 = reference_stats(gt, _top_k(results, 3), "bbox")
    assert set(stats) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR3", "AR20", "ARs", "ARm", "ARl"}
    for key, i in (("AP", 0), ("AP50", 1), ("AP75", 2), ("APs", 3), ("APm", 4), ("APl", 5), ("AR20", 8), ("ARs", 9)):
        assert stats[key] == pytest.approx(at20[i], abs=TOL), key
    assert stats["AR3"] == pytest.approx(at3[8], abs=TOL)
    assert stats["AP"] > 0


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_many_segm_results_in_one_call(backend):
    # Regression: pycocotools' mask.area() of a list of more than 255 RLEs overflows a uint8 counter.
    gt, _, segm_results = random_coco_problem(5, num_images=(30, 30), max_dt_per_image=30, dense_image_prob=0.0)
    assert len(segm_results) > 255
    expected = reference_stats(gt, segm_results, "segm")
    np.testing.assert_allclose(as_array(coco_map(gt, segm_results, "segm", backend)), expected, rtol=0, atol=TOL)
