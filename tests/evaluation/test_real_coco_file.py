"""coco_map on a real COCO export (labelme_coco: image id 0, category 0 ``_background_``, annotation id 0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from resdense.errors import EvaluationError
from resdense.evaluation import coco_map

from ._reference import as_array, reference_stats

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GT_FILE = DATA / "labelme_coco" / "annotations.json"

pytestmark = pytest.mark.skipif(not GT_FILE.is_file(), reason=f"shared dataset absent: {GT_FILE}")


def _renumbered() -> dict:
    gt = json.loads(GT_FILE.read_text())
    for i, ann in enumerate(gt["annotations"], start=1):
        ann["id"] = i
    return gt


def _detections(gt: dict, iou_type: str, seed: int = 0) -> list[dict]:
    """Every GT object detected with a shifted box / the GT polygon, plus shuffled scores; one false positive."""
    rng = np.random.default_rng(seed)
    out = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        shift = rng.uniform(-0.15, 0.15, 2) * (w, h)
        geometry = (
            {"bbox": [x + shift[0], y + shift[1], w, h]} if iou_type == "bbox" else {"segmentation": ann["segmentation"]}
        )
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": float(rng.random()),
                    **geometry})
    fp = {"image_id": 0, "category_id": 15, "score": 0.99}
    fp.update({"bbox": [0, 0, 30, 30]} if iou_type == "bbox" else {"segmentation": [[0, 0, 30, 0, 30, 30, 0, 30]]})
    return out + [fp]


def _as_rle(gt: dict, results: list[dict]) -> list[dict]:
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    return [
        dict(r, segmentation=mask_utils.merge(mask_utils.frPyObjects(r["segmentation"], *sizes[r["image_id"]])))
        for r in results
    ]


def test_annotation_id_zero_in_a_real_export_is_caught():
    with pytest.raises(EvaluationError, match=r"annotations.json'?: annotation id 0; .*renumber_ann_ids=True"):
        coco_map(str(GT_FILE), _detections(_renumbered(), "bbox"))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_renumbered_real_export_matches_pycocotools(iou_type, backend):
    gt = _renumbered()
    results = _detections(gt, iou_type)
    # pycocotools' loadRes reads compressed RLE only; coco_map also takes the polygons as they are.
    expected = reference_stats(gt, _as_rle(gt, results) if iou_type == "segm" else results, iou_type)
    got = as_array(coco_map(str(GT_FILE), results, iou_type, backend, renumber_ann_ids=True))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    assert 0 < got[0] < 1  # shifted boxes / one false positive: a non-trivial AP
