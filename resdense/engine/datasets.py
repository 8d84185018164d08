"""The shipped datasets: one registration each in :data:`resdense.registry.DATASETS`.

=====================  ==================================================  ==========================
``data.dataset``       class (``data.train`` / ``data.val`` are its         task
                       keyword arguments)
=====================  ==================================================  ==========================
``mask``               :class:`resdense.data.MaskDataset`                  segmentation
``coco_semantic``      :class:`resdense.data.CocoSemantic`                 segmentation
``coco``               :class:`resdense.data.CocoDetection`                detection
``voc``                :class:`resdense.data.VocDetection`                 detection
``instance_masks``     :class:`resdense.data.InstanceMaskDataset`          detection
``imagefolder``        :class:`resdense.data.ImageFolder`                  classification
``shapes``             :func:`resdense.data.make_shapes` writes the         segmentation, detection
                       synthetic set first (``data.shapes``: its
                       arguments), then a ``MaskDataset`` or a
                       ``CocoDetection`` serves it (:func:`shapes_part`)
=====================  ==================================================  ==========================

A dataset class takes its split's keys and the task preset's transforms as ``transforms=`` (or ``transform=``, as
torchvision's folder datasets do). A user's module adds its own with :func:`resdense.register_dataset` and is named in
a recipe's ``imports:``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from resdense.data import (
    SHAPES_CLASSES,
    CocoDetection,
    CocoSemantic,
    ImageFolder,
    InstanceMaskDataset,
    MaskDataset,
    ShapesDataset,
    ShapesSplit,
    VocDetection,
    make_shapes,
)
from resdense.files import write_text
from resdense.registry import register_dataset

__all__ = ["SHAPES", "shapes_part", "shapes_class"]

SHAPES = "shapes"  # the dataset whose data section holds make_shapes' arguments (data.shapes)


def shapes_class(task: str) -> type[Dataset]:
    """The class that serves the shapes set to ``task`` (its ``data.train`` / ``data.val`` keys, paths aside)."""
    return MaskDataset if task == "segmentation" else CocoDetection


def _make_once(kwargs: Mapping[str, Any]) -> ShapesDataset:
    """``make_shapes(**kwargs)``, skipped when ``root`` already holds the set made with the same arguments (a
    marker file records them), so train and val, and later ``eval`` / ``predict`` runs, reuse one generation."""
    root = Path(kwargs["root"])
    marker = root / ".resdense_shapes.json"
    key = json.dumps({k: v for k, v in sorted(kwargs.items()) if k != "root"})
    if marker.exists() and marker.read_text() == key:
        splits = {}
        for name in ("train", "val"):
            d = root / name
            splits[name] = ShapesSplit(root=d, images=d / "images", masks=d / "masks",
                                       instances=d / "instances.json",
                                       num_images=len(list((d / "images").glob("*.jpg"))))
        if all(s.instances.exists() for s in splits.values()):
            return ShapesDataset(root=root, **splits)
    marker.unlink(missing_ok=True)
    made = make_shapes(**kwargs)
    write_text(marker, key)
    return made


def shapes_part(shapes: Mapping[str, Any], part: str, task: str, transforms=None, **kwargs: Any) -> Dataset:
    """The ``part`` (``"train"`` or ``"val"``) of the synthetic shapes set ``make_shapes(**shapes)``, made once per
    arguments, as a :class:`MaskDataset` (segmentation) or a :class:`CocoDetection` (detection); ``kwargs``: that
    class's other arguments."""
    split = _make_once(shapes).split(part)
    if task == "segmentation":
        return MaskDataset(split.images, split.masks, classes=["background", *SHAPES_CLASSES],
                           transforms=transforms, **kwargs)
    return CocoDetection(split.images, split.instances, transforms=transforms, **kwargs)


register_dataset("mask", MaskDataset, task="segmentation")
register_dataset("coco_semantic", CocoSemantic, task="segmentation")
register_dataset("coco", CocoDetection, task="detection")
register_dataset("voc", VocDetection, task="detection")
register_dataset("instance_masks", InstanceMaskDataset, task="detection")
register_dataset("imagefolder", ImageFolder, task="classification")
register_dataset(SHAPES, shapes_part, task=("segmentation", "detection"))
