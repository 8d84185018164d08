"""The one loader system (the engine's ResumableSampler + SeededDataset + Task.collate): collation, and
reproducible, per-worker-distinct augmentation."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from resdense.data import CocoDetection, MaskDataset, detection_transforms, segmentation_transforms
from resdense.engine import DetectionTask, ResumableSampler, SeededDataset, SegmentationTask


def _det(shapes, train=True):
    tf = detection_transforms(train=train, size=96)
    return CocoDetection(shapes.train.images, shapes.train.instances, transforms=tf, masks=True)


def _loader(ds, task, batch_size, seed=0, shuffle=True, num_workers=0, n=None):
    sampler = ResumableSampler(n or len(ds), seed=seed, shuffle=shuffle, batch_size=batch_size)
    return DataLoader(SeededDataset(ds), batch_size=batch_size, sampler=sampler, collate_fn=task.collate,
                      num_workers=num_workers)


def test_detection_batches_are_lists_of_own_sized_images(shapes):
    batch = next(iter(_loader(_det(shapes, train=False), DetectionTask(["a"]), 3, shuffle=False)))
    assert batch.indices == [0, 1, 2]
    assert isinstance(batch.inputs, list) and len(batch.inputs) == 3 and all(i.shape[0] == 3 for i in batch.inputs)
    assert [t["image_id"] for t in batch.targets] == [1, 2, 3]
    assert all(t["masks"].shape[0] == t["boxes"].shape[0] for t in batch.targets)


def test_segmentation_batches_stack(shapes):
    ds = MaskDataset(shapes.train.images, shapes.train.masks, 4, transforms=segmentation_transforms(size=64))
    batch = next(iter(_loader(ds, SegmentationTask(4), 4)))
    assert batch.inputs.shape == (4, 3, 64, 64) and batch.targets.shape == (4, 64, 64)
    assert batch.targets.dtype == torch.int64


def _epoch(loader):
    return [(torch.stack(b.inputs), [t["boxes"] for t in b.targets]) for b in loader]


def test_same_seed_same_batches_in_process(shapes):
    ds, task = _det(shapes), DetectionTask(["a"])
    a = _epoch(_loader(ds, task, 4, seed=5))
    b = _epoch(_loader(ds, task, 4, seed=5))
    c = _epoch(_loader(ds, task, 4, seed=6))
    for (ia, ba), (ib, bb) in zip(a, b, strict=True):
        torch.testing.assert_close(ia, ib)
        for x, y in zip(ba, bb, strict=True):
            torch.testing.assert_close(x, y)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c, strict=True))


def test_workers_are_seeded_apart_and_reproducibly(shapes):
    # The same image four times, one per batch, over two workers: worker 0 loads batches 0 and 2, worker 1
    # loads 1 and 3. Forked copies of one unseeded generator would give batches 0 and 1 the same augmentation.
    from torch.utils.data import Subset

    ds = Subset(_det(shapes), [0, 0, 0, 0])
    runs = []
    for _ in range(2):
        loader = _loader(ds, DetectionTask(["a"]), 1, seed=11, num_workers=2)
        runs.append([b.inputs[0] for b in loader])
    assert not torch.equal(runs[0][0], runs[0][1])
    for x, y in zip(*runs, strict=True):
        torch.testing.assert_close(x, y)
