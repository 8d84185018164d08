"""CocoDetection on a COCO-shaped file of 2,000 images (``synthetic_coco``): its targets and its ``coco`` are what
pycocotools makes of the same file. Exactness, not timing (``benchmarks/data_speed.py`` times train2017 scale)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from resdense.data import CocoDetection
from resdense.data.coco_parse import parse_coco, parse_coco_file

from .synthetic_coco import placeholder_images, synthetic_instances

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2
SIZES = [(96, 128), (128, 96), (64, 80)]  # small images keep mask decoding cheap; the annotations are COCO's shape


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco2k")
    stats = synthetic_instances(root / "instances.json", 2000, seed=3, sizes=SIZES)
    assert stats["crowd"] > 0  # crowd regions (uncompressed RLE) are part of the file
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCO(str(root / "instances.json"))
    return root / "instances.json", placeholder_images(root / "instances.json", root / "images"), reference


def _expected(reference: COCO, image_id: int, label_of: dict) -> dict:
    """The training target pycocotools' annotations give: non-crowd objects in file order, boxes xyxy clipped to
    the image, masks from annToMask."""
    im = reference.imgs[image_id]
    anns = [a for a in reference.imgToAnns[image_id] if not a["iscrowd"]]
    x, y, w, h = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4).T
    boxes = np.stack([np.maximum(x, 0), np.maximum(y, 0), np.minimum(x + w, im["width"]),
                      np.minimum(y + h, im["height"])], axis=1).astype(np.float32)
    masks = [reference.annToMask(a) for a in anns]
    return {"boxes": boxes, "labels": np.asarray([label_of[a["category_id"]] for a in anns], dtype=np.int64),
            "area": np.asarray([a["area"] for a in anns], dtype=np.float32),
            "masks": np.stack(masks) if masks else np.zeros((0, im["height"], im["width"]), np.uint8)}


def test_targets_are_what_pycocotools_gives(generated):
    path, images, reference = generated
    ds = CocoDetection(images, path, masks=True)
    assert ds.image_ids == reference.getImgIds()  # every image, in file order
    assert ds.class_names == [reference.cats[c]["name"] for c in sorted(reference.cats)]
    crowded = {a["image_id"] for a in reference.dataset["annotations"] if a["iscrowd"]}
    picks = [0, 1, len(ds) - 1] + [ds.image_ids.index(i) for i in sorted(crowded)[:3]]
    for index in picks:
        _, target = ds[index]
        expected = _expected(reference, target["image_id"], ds.cat_id_to_label)
        for key, value in expected.items():
            np.testing.assert_array_equal(target[key].numpy(), value, err_msg=f"{key} of sample {index}")
        assert not target["iscrowd"].any()


def test_coco_is_the_files_ground_truth(generated):
    path, images, reference = generated
    coco = CocoDetection(images, path).coco
    assert coco.getImgIds() == reference.getImgIds() and sorted(coco.cats) == sorted(reference.cats)
    assert [a["id"] for a in coco.dataset["annotations"]] == [a["id"] for a in reference.dataset["annotations"]]
    for image_id in reference.getImgIds()[:40]:
        ours, theirs = coco.imgToAnns[image_id], reference.imgToAnns[image_id]
        assert [(a["id"], a["category_id"], a["iscrowd"], a["area"]) for a in ours] == \
               [(a["id"], a["category_id"], a["iscrowd"], a["area"]) for a in theirs]
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(coco.annToMask(a), reference.annToMask(b))  # polygons and crowd RLE


def test_a_file_and_its_dict_parse_alike(generated):
    path, _, _ = generated
    streamed = parse_coco_file(path)
    loaded = parse_coco(json.loads(path.read_text()), str(path))
    assert (streamed.errors, streamed.warnings) == (loaded.errors, loaded.warnings) == ([], [])
    a, b = streamed.store, loaded.store
    for name in ("image_id", "start", "mid", "end", "ann_id", "label", "bbox", "area", "kind"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for row in range(0, len(a.kind), 97):
        h, w = 100, 100
        sa, sb = a.segm(row, h, w), b.segm(row, h, w)
        assert type(sa) is type(sb)
        if isinstance(sa, list):
            assert all(np.array_equal(p, q) for p, q in zip(sa, sb, strict=True))
        else:
            assert sa == sb
