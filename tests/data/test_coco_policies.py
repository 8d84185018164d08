"""Crowd, empty-image and difficult-object policies, and CocoSemantic's rendering rules."""

from __future__ import annotations

import numpy as np
import torch

from resdense.data import CocoDetection, CocoSemantic, VocDetection

from .conftest import make_coco, write_image


def _anns():
    sq = [[5, 6, 15, 6, 15, 18, 5, 18]]
    return [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 6, 10, 12], "area": 120, "segmentation": sq},
        # class 2 overlaps class 1 on x 12..15, y 10..18
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [12, 10, 8, 8], "area": 64,
         "segmentation": [[12, 10, 20, 10, 20, 18, 12, 18]]},
        # a crowd region (RLE) on image 1, and image 2 holds only a crowd box
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [40, 0, 10, 10], "area": 100, "iscrowd": 1,
         "segmentation": {"size": [40, 60], "counts": [40 * 40] + [10, 30] * 9 + [10, 30 + 400]}},
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 1},
    ]


def test_crowd_is_not_a_target_but_stays_in_coco(tmp_path):
    ds = CocoDetection(tmp_path / "img", make_coco(tmp_path, _anns()), masks=True)
    _, t = ds[0]
    assert t["labels"].tolist() == [1, 2] and t["iscrowd"].tolist() == [0, 0]
    assert t["masks"].shape == (2, 40, 60)
    crowd = ds.coco.loadAnns(ds.coco.getAnnIds(iscrowd=True))
    assert sorted(a["id"] for a in crowd) == [3, 4]
    _, t2 = ds[1]
    assert t2["boxes"].shape == (0, 4) and t2["masks"].shape == (0, 40, 60)


def test_empty_policy(tmp_path):
    ann = make_coco(tmp_path, _anns())
    assert CocoDetection(tmp_path / "img", ann, empty="keep").image_ids == [1, 2]
    dropped = CocoDetection(tmp_path / "img", ann, empty="drop")
    assert dropped.image_ids == [1]  # image 2 has only a crowd region
    assert sorted(dropped.coco.getImgIds()) == [1, 2]  # evaluation ground truth keeps every image


def test_semantic_rendering_overlap_and_crowd_are_ignored(tmp_path):
    ds = CocoSemantic(tmp_path / "img", make_coco(tmp_path, _anns()))
    assert ds.class_names == ["background", "a", "b"] and ds.num_classes == 3
    _, mask = ds[0]
    expected = np.zeros((40, 60), np.int64)
    expected[6:18, 5:15] = 1
    expected[10:18, 12:20] = 2
    expected[10:18, 12:15] = 255  # two classes claim these pixels
    expected[0:10, 40:50] = 255  # crowd RLE (column-major runs: 10 rows of columns 40..49)
    np.testing.assert_array_equal(mask.numpy(), expected)
    _, mask2 = ds[1]
    assert mask2[1:6, 1:6].eq(255).all() and mask2.eq(255).sum() == 25  # crowd box without segmentation


def test_voc_difficult_objects_are_ignored_regions(tmp_path):
    write_image(tmp_path / "img" / "a.jpg", 30, 40)
    (tmp_path / "ann").mkdir()
    obj = ("<object><name>{}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>2</ymin><xmax>{}</xmax>"
           "<ymax>12</ymax></bndbox></object>")
    (tmp_path / "ann" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>40</width><height>30</height></size>"
        + obj.format("dog", 0, 1, 10) + obj.format("cat", 1, 20, 30) + "</annotation>")
    ds = VocDetection(tmp_path / "img", tmp_path / "ann")
    assert ds.class_names == ["cat", "dog"]
    _, t = ds[0]
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 1, 10, 12]]))
    assert t["labels"].tolist() == [2]
    crowd = ds.coco.loadAnns(ds.coco.getAnnIds(iscrowd=True))
    assert [(a["category_id"], a["bbox"]) for a in crowd] == [(1, [19.0, 1.0, 11.0, 11.0])]
    ds_all = VocDetection(tmp_path / "img", tmp_path / "ann", classes=["dog", "cat"], use_difficult=True)
    assert ds_all[0][1]["labels"].tolist() == [1, 2]
