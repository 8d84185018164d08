"""coco_map's input handling: each pycocotools pitfall is shown, then refused or fixed, with the message asserted."""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from resdense.errors import ConfigError, EvaluationError, ResdenseError
from resdense.evaluation import COCO_STAT_KEYS, coco_map
from tests.evaluation.synthetic import random_coco_problem

from ._reference import as_array, reference_eval, reference_stats

BACKENDS = ["faster", "pycocotools"]


def _one_box_gt(ann_id: int = 1) -> dict:
    return {
        "images": [{"id": 5, "height": 100, "width": 100}],
        "annotations": [
            {"id": ann_id, "image_id": 5, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}
        ],
        "categories": [{"id": 3, "name": "cat"}],
    }


def _det(box=(10, 10, 20, 20), score=0.9, image_id=5, category_id=3) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": score}


@pytest.mark.parametrize("backend", BACKENDS)
def test_result_image_ids_absent_from_gt_are_listed(backend):
    with pytest.raises(EvaluationError, match=r"image ids absent from the ground truth: \[998, 999\]"):
        coco_map(_one_box_gt(), [_det(), _det(image_id=999), _det(image_id=998)], backend=backend)


def test_result_category_ids_absent_from_gt_are_listed():
    with pytest.raises(EvaluationError, match=r"category ids absent from the ground truth: \[77\]"):
        coco_map(_one_box_gt(), [_det(), _det(category_id=77)])


def test_nan_box_counts_as_true_positive_in_pycocotools_and_is_refused_here():
    nan_box = [_det(box=(math.nan, 10, 20, 20))]
    # The pitfall: every comparison with a NaN IoU is False, so pycocotools never rejects the match.
    assert reference_stats(_one_box_gt(), nan_box, "bbox")[0] == pytest.approx(1.0)
    with pytest.raises(EvaluationError, match=r"1 box\(es\) with NaN/inf, first at entry 0: \[nan, 10, 20, 20\]"):
        coco_map(_one_box_gt(), nan_box)


def test_inf_box_and_nan_score_are_refused():
    with pytest.raises(EvaluationError, match=r"NaN/inf, first at entry 1"):
        coco_map(_one_box_gt(), [_det(), _det(box=(1, 2, math.inf, 4))])
    with pytest.raises(EvaluationError, match=r"1 non-finite score\(s\), first at entry 1: nan"):
        coco_map(_one_box_gt(), [_det(), _det(score=float("nan"))])


def test_negative_box_size_and_malformed_entries_are_refused():
    with pytest.raises(EvaluationError, match=r"negative width/height .* first at entry 0: \[30, 30, -20, 20\]"):
        coco_map(_one_box_gt(), [_det(box=(30, 30, -20, 20))])
    with pytest.raises(EvaluationError, match=r"results entry 0: 'bbox' must be \[x, y, w, h\], got \[1, 2, 3\]"):
        coco_map(_one_box_gt(), [_det(box=(1, 2, 3))])
    with pytest.raises(EvaluationError, match=r"results entry 1 has no 'score' field"):
        coco_map(_one_box_gt(), [_det(), {"image_id": 5, "category_id": 3, "bbox": [1, 2, 3, 4]}])
    with pytest.raises(EvaluationError, match=r"results must be a list of result dicts, got dict"):
        coco_map(_one_box_gt(), _det())


def test_annotation_id_zero_turns_true_positives_into_false_positives_in_pycocotools():
    gt = _one_box_gt(ann_id=0)
    # The pitfall: the match is recorded as the GT id, and id 0 reads as "unmatched".
    assert reference_stats(gt, [_det()], "bbox")[0] == 0.0
    with pytest.raises(EvaluationError, match=r"annotation id 0; .* \(pass renumber_ann_ids=True"):
        coco_map(gt, [_det()])
    for backend in BACKENDS:
        assert coco_map(gt, [_det()], backend=backend, renumber_ann_ids=True)["AP"] == pytest.approx(1.0)


def test_duplicate_annotation_ids_are_listed():
    gt = _one_box_gt()
    gt["annotations"] += [dict(gt["annotations"][0], bbox=[50, 50, 10, 10], area=100) for _ in range(2)]
    gt["annotations"].append(dict(gt["annotations"][0], id=9))
    gt["annotations"].append(dict(gt["annotations"][0], id=9))
    with pytest.raises(EvaluationError, match=r"ground truth: duplicate annotation ids \[1, 9\]"):
        coco_map(gt, [_det()])
    # Renumbered, all five annotations count: one is found, so AR100 = 1/5 at every IoU threshold.
    assert coco_map(gt, [_det()], renumber_ann_ids=True)["AR100"] == pytest.approx(0.2)


def test_gt_annotation_of_unknown_image_or_category_is_refused():
    gt = _one_box_gt()
    gt["annotations"].append(dict(gt["annotations"][0], id=2, image_id=42))
    with pytest.raises(EvaluationError, match=r"annotations refer to image ids absent from 'images': \[42\]"):
        coco_map(gt, [_det()])
    gt = _one_box_gt()
    gt["annotations"].append(dict(gt["annotations"][0], id=2, category_id=8))
    with pytest.raises(EvaluationError, match=r"annotations refer to category ids absent from 'categories': \[8\]"):
        coco_map(gt, [_det()])


def _rle(h, w, y0, y1, x0, x1) -> dict:
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _segm_problem():
    gt = {
        "images": [{"id": 1, "height": 100, "width": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(100, 100, 10, 30, 10, 30),
             "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    results = [
        # A small false positive ranked first; its bbox field claims a large box.
        {"image_id": 1, "category_id": 1, "segmentation": _rle(100, 100, 60, 80, 60, 80), "score": 0.9,
         "bbox": [0, 0, 100, 100]},
        {"image_id": 1, "category_id": 1, "segmentation": _rle(100, 100, 10, 30, 10, 30), "score": 0.5,
         "bbox": [10, 10, 20, 20]},
    ]
    return gt, results


@pytest.mark.parametrize("backend", BACKENDS)
def test_segm_results_bbox_field_is_ignored_so_areas_come_from_masks(backend):
    gt, results = _segm_problem()
    # The pitfall: with a bbox field pycocotools' loadRes takes the box area (10000, "large"), so the small false
    # positive is ignored in the small range and APs is 1.0 instead of the true 0.5 (FP ranked before the TP).
    assert reference_stats(gt, results, "segm")[3] == pytest.approx(1.0)
    stats = coco_map(gt, results, "segm", backend)
    without_bbox = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    assert stats["APs"] == pytest.approx(reference_stats(gt, without_bbox, "segm")[3]) == pytest.approx(0.5, abs=0.01)
    assert stats == coco_map(gt, without_bbox, "segm", backend)


def test_segm_results_as_polygons_and_uncompressed_rle_equal_compressed_rle():
    gt, results = _segm_problem()
    polygons = copy.deepcopy(results)
    polygons[0]["segmentation"] = [[60, 60, 80, 60, 80, 80, 60, 80]]
    compressed = copy.deepcopy(polygons)
    compressed[0]["segmentation"] = mask_utils.merge(mask_utils.frPyObjects([[60, 60, 80, 60, 80, 80, 60, 80]], 100, 100))
    assert coco_map(gt, polygons, "segm") == coco_map(gt, compressed, "segm")
    with pytest.raises(EvaluationError, match=r"results entry 1: mask size \[50, 50\] != image \[100, 100\]"):
        coco_map(gt, [results[0], dict(results[1], segmentation=_rle(50, 50, 0, 5, 0, 5))], "segm")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_empty_results_give_zeros_and_a_warning(backend, iou_type):
    gt, _ = _segm_problem()  # one small object only
    with pytest.warns(UserWarning, match=f"no {iou_type} results"):
        stats = coco_map(gt, [], iou_type, backend)
    expected = dict(AP=0, AP50=0, AP75=0, APs=0, APm=-1, APl=-1, AR1=0, AR10=0, AR100=0, ARs=0, ARm=-1, ARl=-1)
    assert stats == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_gt_as_path_dict_or_coco_object_and_results_as_path(tmp_path, backend):
    from faster_coco_eval import COCO as FasterCOCO
    from pycocotools.coco import COCO

    gt, results, _ = random_coco_problem(4, segm=False)
    gt_file, res_file = tmp_path / "gt.json", tmp_path / "res.json"
    gt_file.write_text(json.dumps(gt))
    res_file.write_text(json.dumps(results))
    expected = reference_stats(gt, results, "bbox")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco_objects = [COCO(str(gt_file)), FasterCOCO(str(gt_file))]
    for gt_form in (gt, str(gt_file), gt_file, *coco_objects):
        for res_form in (results, str(res_file)):
            got = as_array(coco_map(gt_form, res_form, backend=backend))
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_unreadable_files_and_bad_arguments():
    with pytest.raises(EvaluationError, match=r"ground truth file '/nonexistent/gt.json' does not exist"):
        coco_map("/nonexistent/gt.json", [])
    with pytest.raises(EvaluationError, match=r"ground truth: field 'categories' is missing or not a list"):
        coco_map({"images": [], "annotations": []}, [])
    with pytest.raises(ConfigError, match=r"iou_type must be one of \('bbox', 'segm'\), got 'keypoints'"):
        coco_map(_one_box_gt(), [_det()], "keypoints")
    with pytest.raises(ConfigError, match=r"backend must be one of \('faster', 'pycocotools'\), got 'detectron2'"):
        coco_map(_one_box_gt(), [_det()], backend="detectron2")
    with pytest.raises(ConfigError, match=r"max_dets must be distinct positive ints, got \(10, 10\)"):
        coco_map(_one_box_gt(), [_det()], max_dets=(10, 10))
    with pytest.raises(EvaluationError, match=r"img_ids absent from the ground truth: \[6\]"):
        coco_map(_one_box_gt(), [_det()], img_ids=[6])
    # All of them are ResdenseErrors and ValueErrors, so a CLI prints one line and callers can catch ValueError.
    assert issubclass(EvaluationError, ResdenseError) and issubclass(EvaluationError, ValueError)


def test_default_keys_are_pycocotools_summary_order():
    stats = coco_map(_one_box_gt(), [_det()])
    assert tuple(stats) == COCO_STAT_KEYS
    assert stats["AP"] == pytest.approx(1.0) and stats["APm"] == -1


def test_pycocotools_engine_output_is_silenced(capfd):
    gt, results, _ = random_coco_problem(1, segm=False)
    coco_map(gt, results, backend="pycocotools")
    coco_map(gt, results, backend="faster")
    assert capfd.readouterr().out == ""


def test_reference_helper_is_the_documented_pycocotools_flow():
    # Guard against a helper that silently returns defaults: a perfect detection is AP 1, no detection AP 0.
    assert reference_eval(_one_box_gt(), [_det()], "bbox").stats[0] == pytest.approx(1.0)
    assert reference_eval(_one_box_gt(), [_det(box=(60, 60, 20, 20))], "bbox").stats[0] == 0.0
