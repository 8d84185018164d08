"""Collation and reproducible, per-worker-distinct augmentation."""

from __future__ import annotations

import torch
from torch.utils.data import Subset

from resdense.data import (
    CocoDetection,
    MaskDataset,
    detection_transforms,
    make_loader,
    segmentation_transforms,
)


def _det(shapes, train=True):
    tf = detection_transforms(train=train, size=96)
    return CocoDetection(shapes.train.images, shapes.train.instances, transforms=tf, masks=True)


def test_detection_collate_lists(shapes):
    images, targets = next(iter(make_loader(_det(shapes, train=False), batch_size=3)))
    assert isinstance(images, list) and len(images) == 3 and all(i.shape[0] == 3 for i in images)
    assert [t["image_id"] for t in targets] == [1, 2, 3]
    assert all(t["masks"].shape[0] == t["boxes"].shape[0] for t in targets)


def test_segmentation_batches_stack(shapes):
    ds = MaskDataset(shapes.train.images, shapes.train.masks, 4, transforms=segmentation_transforms(size=64))
    images, masks = next(iter(make_loader(ds, batch_size=4, shuffle=True)))
    assert images.shape == (4, 3, 64, 64) and masks.shape == (4, 64, 64) and masks.dtype == torch.int64


def _epoch(loader):
    return [(torch.stack(i) if isinstance(i, list) else i, [t["boxes"] for t in ts]) for i, ts in loader]


def test_same_seed_same_batches_in_process(shapes):
    ds = _det(shapes)
    a = _epoch(make_loader(ds, batch_size=4, shuffle=True, seed=5))
    b = _epoch(make_loader(ds, batch_size=4, shuffle=True, seed=5))
    c = _epoch(make_loader(ds, batch_size=4, shuffle=True, seed=6))
    for (ia, ba), (ib, bb) in zip(a, b, strict=True):
        torch.testing.assert_close(ia, ib)
        for x, y in zip(ba, bb, strict=True):
            torch.testing.assert_close(x, y)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c, strict=True))


def test_workers_are_seeded_apart_and_reproducibly(shapes):
    # The same image four times, one per batch, over two workers: worker 0 loads batches 0 and 2, worker 1
    # loads 1 and 3. Forked copies of one unseeded generator would give batches 0 and 1 the same augmentation.
    ds = Subset(_det(shapes), [0, 0, 0, 0])
    runs = []
    for _ in range(2):
        loader = make_loader(ds, batch_size=1, num_workers=2, seed=11, persistent_workers=False)
        runs.append([images[0] for images, _ in loader])
    assert not torch.equal(runs[0][0], runs[0][1])
    for x, y in zip(*runs, strict=True):
        torch.testing.assert_close(x, y)
