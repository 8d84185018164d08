"""resdense.coco: the one validation, reader, suppressor and bit-packing that data and evaluation share."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from resdense.coco import (
    CocoFileError,
    check_ground_truth,
    detection_results,
    encode_crop,
    encode_masks,
    pack_masks,
    pack_segms,
    quiet,
    read_json,
    union_rle,
    unpack_masks,
)
from resdense.data.coco_parse import parse_coco
from resdense.errors import EvaluationError
from resdense.evaluation.coco_inputs import load_ground_truth


def _gt(anns, images=None) -> dict:
    images = images or [{"id": 1, "file_name": "1.png", "height": 40, "width": 60}]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}


def _ann(aid, **kw) -> dict:
    return {"id": aid, "image_id": 1, "category_id": 1, "bbox": [5, 6, 10, 12], "area": 120, "iscrowd": 0, **kw}


def test_every_problem_is_reported_with_its_kind_and_ids():
    gt = _gt([_ann(0), _ann(3), _ann(3), _ann(4, image_id=9), _ann(5, category_id=7), _ann(6, bbox=[1, 2, 3])])
    checked = check_ground_truth(gt, "gt.json")
    kinds = [(p.kind, p.values) for p in checked.problems]
    assert kinds == [("id 0", (0,)), ("duplicate ids", (3,)), ("orphan", (9,)), ("unknown category", (7,)),
                     ("annotation", ())]
    assert all(p.message.startswith("gt.json: ") and "\n" not in p.message for p in checked.problems)
    assert [a.id for a in checked.annotations] == [0, 3, 3]  # the annotations that passed their own checks


def test_renumbering_replaces_the_id_checks():
    checked = check_ground_truth(_gt([_ann(0), _ann(0), _ann("x")]), "gt", renumber_ann_ids=True)
    assert checked.ok and [a.new_id for a in checked.annotations] == [1, 2, 3]


def test_required_fields_depend_on_the_caller():
    images = [{"id": 1}]  # enough for bbox evaluation, not for a training dataset
    assert check_ground_truth(_gt([_ann(1)], images), "gt", image_fields=(), annotation_fields=("area",)).ok
    assert not check_ground_truth(_gt([_ann(1)], images), "gt").ok
    no_area = _ann(1)
    del no_area["area"]
    assert check_ground_truth(_gt([no_area]), "gt").ok  # the datasets fill it from the box
    problems = check_ground_truth(_gt([no_area]), "gt", annotation_fields=("area",)).problems
    assert [p.message for p in problems] == ["gt: annotation id 1: field 'area' = None is not a finite number"]


def test_datasets_and_evaluation_refuse_with_the_same_validation():
    gt = _gt([_ann(1, bbox=[1, 2, math.nan, 4])])
    expected = "annotation id 1: field 'bbox' = [1, 2, nan, 4] is not 4 finite numbers [x, y, w, h]"
    assert parse_coco(gt, "gt.json").errors == [f"gt.json: {expected}"]
    with pytest.raises(EvaluationError) as err:
        load_ground_truth(gt, "bbox")
    assert str(err.value) == f"ground truth: {expected}"


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(CocoFileError, match=r"nope\.json: annotation file not found") as err:
        read_json(tmp_path / "nope.json")
    assert err.value.missing
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(CocoFileError, match=r"bad\.json: not a JSON file \(") as err:
        read_json(tmp_path / "bad.json")
    assert not err.value.missing and "\n" not in str(err.value)


def test_quiet_sends_prints_to_the_debug_log(capsys, caplog):
    with caplog.at_level(logging.DEBUG, logger="resdense.coco.io"), quiet():
        print("creating index...")
    assert capsys.readouterr().out == ""
    assert "pycocotools: creating index..." in caplog.text


def test_one_packing_layout_for_masks_and_segmentations():
    rng = np.random.default_rng(0)
    for n in (1, 8, 9, 20):
        masks = (rng.random((n, 7, 5)) < 0.5).astype(np.uint8)
        packed = pack_masks(masks)
        assert packed.shape == ((7, 5) if n <= 8 else (7, 5, (n + 7) // 8))
        np.testing.assert_array_equal(unpack_masks(packed, np.arange(n)), masks)
        segms = [{"size": [7, 5], "counts": _counts(m)} for m in masks]
        np.testing.assert_array_equal(pack_segms(segms, 7, 5).array, packed)


def _counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE (column-major runs, starting with a 0-run) of one binary mask."""
    flat = mask.T.reshape(-1)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return ([0] + runs) if flat[0] else runs


def test_a_crop_placed_in_an_image_is_the_rle_of_the_whole_image_with_the_crop_pasted():
    rng = np.random.default_rng(0)
    cases = [(8, 17, 3, 4, 5, 13, 1.0), (6, 5, 6, 5, 0, 0, 0.5), (6, 5, 6, 2, 0, 3, 1.0), (9, 9, 0, 0, 4, 4, 1.0),
             (9, 9, 2, 3, 0, 0, 0.0)]  # at the bottom-right corner, the whole image, as tall as it, empty, blank
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(1, 16, 2))
        h, w = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
        cases.append((height, width, h, w, int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)),
                      float(rng.choice([0.3, 0.7]))))
    for height, width, h, w, top, left, density in cases:
        crop = rng.random((h, w)) < density
        image = np.zeros((height, width), np.uint8, order="F")
        image[top:top + h, left:left + w] = crop
        want = mask_utils.encode(image)
        assert encode_crop(crop, top, left, height, width) == {"size": want["size"], "counts": want["counts"].decode()}
    with pytest.raises(ValueError, match="does not fit"):
        encode_crop(np.ones((3, 3), bool), 8, 0, 10, 10)


def test_encoded_masks_and_unions_decode_in_pycocotools_and_results_carry_them():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 7, 5)) < 0.5
    rles = encode_masks(masks)
    assert all(isinstance(r["counts"], str) for r in rles) and encode_masks(masks[:0]) == []
    assert (mask_utils.decode(rles).transpose(2, 0, 1) == masks).all()
    assert (mask_utils.decode(union_rle(rles)) == masks.any(0)).all()
    results = detection_results(4, [1, 2, 1], [0.9, 0.5, 0.1], boxes=[[1, 2, 4, 6]] * 3, segmentations=rles)
    assert results[1] == {"image_id": 4, "category_id": 2, "score": 0.5, "bbox": [1.0, 2.0, 3.0, 4.0],
                          "segmentation": rles[1]}
