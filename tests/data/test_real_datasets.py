"""The real datasets of ../shared/data load with the right counts, classes, boxes and mask values.

Expected values are read independently: JSON via ``json``, masks via PIL, instance masks via pycocotools'
``COCO.annToMask`` on the original file, VOC boxes from the XML text.
"""

from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resdense.data import CocoDetection, CocoSemantic, MaskDataset, VocDetection
from resdense.errors import DataError

# pycocotools' own annToMask (the reference here) trips numpy 2's __array__ copy deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv/monitor"]
CAMVID = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
          "Bicyclist"]


def _self_eval(coco, iou_type: str) -> float:
    """AP of the ground truth scored against itself (1.0 iff the GT index is sound)."""
    anns = [a for a in coco.dataset["annotations"] if not a["iscrowd"]]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             **({"bbox": a["bbox"]} if iou_type == "bbox" else {"segmentation": coco.annToRLE(a)})} for a in anns]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])  # AP50


def test_labelme_coco_refuses_annotation_id_zero(shared_data):
    root = shared_data / "labelme_coco"
    with pytest.raises(DataError, match=r"annotation id 0 .*annotations\[0\]"):
        CocoDetection(root, root / "annotations.json")


def test_labelme_coco(shared_data):
    root = shared_data / "labelme_coco"
    raw = json.loads((root / "annotations.json").read_text())
    ds = CocoDetection(root, root / "annotations.json", masks=True, renumber_ann_ids=True)
    # Category 0 '_background_' has no annotations: not a class; ids 1..20 keep their order as labels 1..20.
    assert ds.num_classes == 20 and ds.class_names == VOC_CLASSES
    assert ds.cat_id_to_label == {i: i for i in range(1, 21)} and ds.label_to_cat_id[15] == 15
    assert len(ds) == 3 and ds.image_ids == [0, 1, 2]
    with contextlib.redirect_stdout(io.StringIO()):
        ref = COCO(str(root / "annotations.json"))
    total = 0
    for i in range(len(ds)):
        image, t = ds[i]
        info = raw["images"][i]
        assert t["image_id"] == info["id"]
        assert image.shape == (3, info["height"], info["width"]) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert t["orig_size"].tolist() == [info["height"], info["width"]] == t["size"].tolist()
        anns = [a for a in raw["annotations"] if a["image_id"] == info["id"]]
        x, y, w, h = np.array([a["bbox"] for a in anns], dtype=np.float32).T
        torch.testing.assert_close(t["boxes"], torch.from_numpy(np.stack([x, y, x + w, y + h], 1)))
        assert t["labels"].tolist() == [a["category_id"] for a in anns]
        torch.testing.assert_close(t["area"], torch.tensor([a["area"] for a in anns], dtype=torch.float32))
        expected = np.stack([ref.annToMask(a) for a in anns])
        assert t["masks"].dtype == torch.uint8
        np.testing.assert_array_equal(t["masks"].numpy(), expected)
        total += len(anns)
    assert total == 12
    # The in-memory ground truth keeps all 12 annotations, ids renumbered from 1, and scores itself perfectly.
    assert sorted(ds.coco.getAnnIds()) == list(range(1, 13))
    assert _self_eval(ds.coco, "bbox") == pytest.approx(1.0)
    assert _self_eval(ds.coco, "segm") == pytest.approx(1.0)


def test_labelme_coco_semantic(shared_data):
    root = shared_data / "labelme_coco"
    ds = CocoSemantic(root, root / "annotations.json", renumber_ann_ids=True)
    assert ds.num_classes == 21 and ds.class_names[0] == "background" and ds.class_names[15] == "person"
    image, mask = ds[0]
    assert mask.dtype == torch.int64 and mask.shape == image.shape[1:]
    # image 0 holds two persons (label 15) and one bottle (label 5), all disjoint from 0 elsewhere.
    assert set(mask.unique().tolist()) <= {0, 5, 15, 255}
    assert {5, 15} <= set(mask.unique().tolist())


def test_membrane(shared_data):
    root = shared_data / "membrane"
    ds = MaskDataset(root / "images", root / "masks", ["membrane", "cell"], value_map={0: 0, 255: 1})
    assert len(ds) == 30 and ds.num_classes == 2 and ds.ignore_index == 255
    for i in (0, 17):
        image, mask = ds[i]
        raw = np.asarray(Image.open(ds.image_paths[i]))
        raw_mask = np.asarray(Image.open(ds.mask_paths[i]))
        assert image.shape == (3, 512, 512)  # grayscale -> RGB: three equal channels
        expected = torch.from_numpy(raw.astype(np.float32) / 255).expand(3, -1, -1)
        torch.testing.assert_close(image, expected)
        np.testing.assert_array_equal(mask.numpy(), (raw_mask == 255).astype(np.int64))
        assert set(mask.unique().tolist()) == {0, 1}


def test_membrane_without_value_map_names_the_value(shared_data):
    root = shared_data / "membrane"
    # 255 is the default ignore_index: without value_map the cells would silently vanish. Refused.
    with pytest.raises(DataError, match=r"masks/0\.png: mask values are only 0 and 255 .*value_map=\{0: 0, 255: 1\}"):
        MaskDataset(root / "images", root / "masks", ["membrane", "cell"])
    # With another ignore_index, 255 is simply out of range: the error names the file and the value.
    ds = MaskDataset(root / "images", root / "masks", ["membrane", "cell"], ignore_index=100)
    with pytest.raises(DataError, match=r"masks/0\.png: mask value\(s\) 255 are outside the classes 0\.\.1"):
        ds[0]


def test_camvid(shared_data):
    root = shared_data / "camvid"
    ds = MaskDataset(root / "images", root / "masks", CAMVID, ignore_index=11)
    assert len(ds) == 101 and ds.num_classes == 11
    values = set()
    for i in (0, 50, 100):
        image, mask = ds[i]
        assert image.shape == (3, 360, 480) and mask.shape == (360, 480)
        raw = np.asarray(Image.open(ds.mask_paths[i]))
        np.testing.assert_array_equal(mask.numpy(), raw.astype(np.int64))
        rgb = np.asarray(Image.open(ds.image_paths[i]).convert("RGB"))
        torch.testing.assert_close(image, torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255))
        values |= set(mask.unique().tolist())
    assert values <= set(range(12)) and 11 in values


def test_raccoon(shared_data):
    root = shared_data / "raccoon"
    ds = VocDetection(root / "images", root / "annotations")
    assert len(ds) == 200 and ds.class_names == ["raccoon"] and ds.num_classes == 1
    assert len(ds.coco.getAnnIds()) == 217
    assert sum(len(r.boxes) for r in ds._records) == 217
    i = [p.name for p in ds.image_paths].index("raccoon-1.jpg")
    image, t = ds[i]
    xml = ET.parse(root / "annotations" / "raccoon-1.xml").getroot()
    b = [float(xml.find(f"object/bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
    # VOC is 1-based inclusive: xmin/ymin shift by one pixel to 0-based edges.
    torch.testing.assert_close(t["boxes"], torch.tensor([[b[0] - 1, b[1] - 1, b[2], b[3]]]))
    assert t["labels"].tolist() == [1] and image.shape == (3, 417, 650)
    # Grayscale photos come out as RGB with equal channels.
    gray = [k for k, p in enumerate(ds.image_paths) if Image.open(p).mode == "L"]
    assert len(gray) == 3
    g, _ = ds[gray[0]]
    assert g.shape[0] == 3 and torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert _self_eval(ds.coco, "bbox") == pytest.approx(1.0)
