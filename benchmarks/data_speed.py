"""Data loading speed: resdense ``CocoDetection`` + ``detection_transforms`` vs torchvision's ``CocoDetection`` +
``wrap_dataset_for_transforms_v2`` + v2 transforms, on the same files, in one run.

Both pipelines do the same work per image: decode a 512x512 JPEG, parse its COCO targets (and decode its instance
masks when asked), random resized crop to 512x512 (scale 0.25-1), horizontal flip, colour jitter, drop boxes that
the crop removed, return a float32 [3, 512, 512] image in [0, 1]. Single process, one thread each, best of 3 rounds
that alternate the two pipelines.

    .venv/bin/python benchmarks/data_speed.py [--images 48] [--size 512]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import tempfile
import time
import warnings

import torch
from torchvision.datasets import CocoDetection as TorchvisionCoco
from torchvision.datasets import wrap_dataset_for_transforms_v2
from torchvision.transforms import v2

from resdense.data import CocoDetection, detection_transforms, make_shapes


def torchvision_pipeline(images, ann, size: int, masks: bool):
    tf = v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(0.2, 0.2, 0.2)], p=0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.SanitizeBoundingBoxes(min_size=2),
    ])
    with contextlib.redirect_stdout(io.StringIO()):
        ds = TorchvisionCoco(str(images), str(ann), transforms=tf)
    keys = {"boxes", "labels", "image_id"} | ({"masks"} if masks else set())
    return wrap_dataset_for_transforms_v2(ds, target_keys=keys)


def resdense_pipeline(images, ann, size: int, masks: bool):
    return CocoDetection(images, ann, transforms=detection_transforms(train=True, size=size, seed=0), masks=masks)


def rates(datasets, repeats: int = 3) -> list[float]:
    """Best-of-``repeats`` img/s of each dataset, the pipelines timed in turn in every round so that a change in
    machine load (this CPU is shared) hits both alike."""
    for ds in datasets:
        for i in range(min(4, len(ds))):  # warm-up (imports, caches)
            ds[i]
    best = [float("inf")] * len(datasets)
    for _ in range(repeats):
        for k, ds in enumerate(datasets):
            t0 = time.perf_counter()
            for i in range(len(ds)):
                ds[i]
            best[k] = min(best[k], time.perf_counter() - t0)
    return [len(ds) / t for ds, t in zip(datasets, best, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # pycocotools vs numpy 2 noise
    with tempfile.TemporaryDirectory() as tmp:
        shapes = make_shapes(tmp, n_train=args.images, n_val=0, size=args.size, seed=0)
        split = shapes.train
        print(f"{args.images} COCO images of {args.size}x{args.size} (make_shapes), training transforms to "
              f"{args.size}x{args.size}; {platform.processor() or platform.machine()}, torch threads 1")
        print(f"{'pipeline':<12} {'torchvision img/s':>18} {'resdense img/s':>15} {'speed-up':>9}")
        for masks in (False, True):
            ref, ours = rates([torchvision_pipeline(split.images, split.instances, args.size, masks),
                               resdense_pipeline(split.images, split.instances, args.size, masks)])
            name = "masks on" if masks else "boxes only"
            print(f"{name:<12} {ref:>18.1f} {ours:>15.1f} {ours / ref:>8.2f}x")


if __name__ == "__main__":
    main()
