"""Same files, same answer as torchvision's ``CocoDetection`` + ``wrap_dataset_for_transforms_v2``."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torchvision.datasets import CocoDetection as TorchvisionCoco
from torchvision.datasets import wrap_dataset_for_transforms_v2
from torchvision.transforms.v2 import functional as F

from resdense.data import CocoDetection

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _reference(images, ann):
    with contextlib.redirect_stdout(io.StringIO()):
        ds = TorchvisionCoco(str(images), str(ann))
    return wrap_dataset_for_transforms_v2(ds, target_keys={"boxes", "labels", "masks", "image_id"})


def _compare(ours, ref, label_to_cat_id):
    assert len(ours) == len(ref)
    for i in range(len(ours)):
        image, t = ours[i]
        ref_image, rt = ref[i]
        ref_image = F.to_dtype(F.to_image(ref_image), torch.float32, scale=True).as_subclass(torch.Tensor)
        torch.testing.assert_close(image, ref_image, atol=1e-6, rtol=0)
        assert t["image_id"] == rt["image_id"]
        torch.testing.assert_close(t["boxes"], rt["boxes"].as_subclass(torch.Tensor))
        cat_ids = torch.tensor([label_to_cat_id[k] for k in t["labels"].tolist()], dtype=torch.int64)
        assert torch.equal(cat_ids, rt["labels"])
        assert torch.equal(t["masks"], rt["masks"].as_subclass(torch.Tensor).to(torch.uint8))


def test_shapes_parity_with_torchvision(shapes):
    split = shapes.val
    ours = CocoDetection(split.images, split.instances, masks=True)
    _compare(ours, _reference(split.images, split.instances), ours.label_to_cat_id)


def test_labelme_parity_with_torchvision(shared_data):
    root = shared_data / "labelme_coco"
    ours = CocoDetection(root, root / "annotations.json", masks=True, renumber_ann_ids=True)
    _compare(ours, _reference(root, root / "annotations.json"), ours.label_to_cat_id)
