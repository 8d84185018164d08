"""Our RLE string decoder and bit-packed mask decoding are bit-exact with pycocotools."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from resdense.coco.packing import pack_segms, unpack_masks
from resdense.coco.rle import decode_segms, rle_counts
from resdense.data import CocoDetection, DetectionTransform
from resdense.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _unpacked(p):
    return unpack_masks(p.array, np.arange(p.n))


def test_random_masks_roundtrip_exactly():
    rng = np.random.default_rng(0)
    for t in range(40):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        n = int(rng.integers(0, 21))  # up to three packed channels
        masks = (rng.random((n, h, w)) < rng.random()).astype(np.uint8)
        if n > 2:
            masks[0], masks[1] = 1, 0  # a full and an empty mask
        segms = []
        for k, m in enumerate(masks):
            rle = mask_utils.encode(np.asfortranarray(m))
            if k % 2:  # odd instances as str counts (as in JSON files), even ones as bytes
                rle["counts"] = rle["counts"].decode()
            segms.append(rle)
        for rle, m in zip(segms, masks, strict=True):
            flat = m.T.reshape(-1).astype(np.int64)  # column-major, as COCO runs are
            bounds = np.r_[0, np.flatnonzero(np.diff(flat)) + 1, len(flat)]
            runs = np.diff(bounds).tolist()
            expected = runs if flat[0] == 0 else [0, *runs]  # COCO starts with a (possibly empty) run of zeros
            assert rle_counts(rle).tolist() == expected, t
        np.testing.assert_array_equal(_unpacked(pack_segms(segms, h, w)), masks.reshape(n, h, w))


def test_polygons_and_boxes_match_pycocotools(shared_data):
    import json

    data = json.loads((shared_data / "labelme_coco" / "annotations.json").read_text())
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in data["images"]:
        anns = by_image[im["id"]]
        segms = [a["segmentation"] for a in anns] + [None]  # None: the filled box
        boxes = [(0, 0, 0, 0)] * len(anns) + [(10, 20, 30, 45)]
        ref = decode_segms(segms, im["height"], im["width"], boxes)
        np.testing.assert_array_equal(_unpacked(pack_segms(segms, im["height"], im["width"], boxes)), ref)
        expected = np.stack([mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(s, im["height"],
                                                                                      im["width"])))
                             for s in segms[:-1]])
        np.testing.assert_array_equal(ref[:-1], expected)


def test_truncated_rle_string_is_a_data_error():
    rle = mask_utils.encode(np.asfortranarray(np.eye(8, dtype=np.uint8)))
    with pytest.raises(DataError, match="covers"):
        pack_segms([{"size": [8, 8], "counts": rle["counts"][:-2]}], 8, 8)


def test_dataset_packed_path_equals_plain_path(shapes):
    def ops():  # fresh op objects: albumentations ops carry their own random generators
        return [A.RandomResizedCrop(size=(96, 96), scale=(0.3, 1.0), p=1), A.Rotate(limit=25, p=1),
                A.HorizontalFlip(p=0.5)]

    packed = CocoDetection(shapes.train.images, shapes.train.instances, DetectionTransform(ops(), seed=1),
                           masks=True)
    plain_tf = DetectionTransform(ops(), seed=1)
    plain_tf._pack = False
    plain = CocoDetection(shapes.train.images, shapes.train.instances, plain_tf, masks=True)
    assert packed.transforms.packs_masks and not plain.transforms.packs_masks
    for i in range(len(packed)):
        (ia, ta), (ib, tb) = packed[i], plain[i]
        torch.testing.assert_close(ia, ib)
        assert torch.equal(ta["masks"], tb["masks"]) and torch.equal(ta["labels"], tb["labels"])
