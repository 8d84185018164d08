"""COCO instance annotations rendered to one semantic mask per image, for U-Net training on COCO data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from resdense.coco.rle import decode_segms
from resdense.errors import ConfigError, DataError

from .coco import CocoSource
from .coco_parse import parse_coco_file
from .image_io import to_image_tensor
from .split_names import SplitArg
from .transforms import as_segmentation_transform

__all__ = ["CocoSemantic"]


class CocoSemantic(CocoSource):
    """COCO instances file -> ``(image, mask)`` pairs.

    Class 0 is background and COCO category ``k`` (in id order) is class ``k``, so ``num_classes = K + 1`` and
    ``class_names[0] == "background"``. Pixels claimed by instances of two different classes, and crowd regions, are
    ``ignore_index`` (torchvision's segmentation reference does the same for overlaps): the label there is unknown.
    Annotations without a segmentation fill their box.

    Args:
        images_dir, ann_file, empty, renumber_ann_ids, split, bad_images: as in :class:`CocoDetection`.
        transforms: a :class:`~resdense.data.SegmentationTransform` (see :func:`segmentation_transforms`),
            albumentations transforms (wrapped, ImageNet-normalised), or a callable ``(image, mask) -> (image,
            mask)``. ``None``: image as ``[0, 1]`` tensor, mask as int64.
        ignore_index: label of ambiguous pixels; must not be a class index.

    Item: ``image`` float32 ``[3, H, W]``, ``mask`` int64 ``[H, W]`` in ``0..K`` or ``ignore_index``.
    """

    task = "segmentation"

    def __init__(self, images_dir, ann_file, transforms=None, ignore_index: int = 255, empty: str = "keep", *,
                 renumber_ann_ids: bool = False, split: SplitArg | None = None, bad_images: str = "raise") -> None:
        self.ann_file = Path(ann_file)
        parsed = parse_coco_file(ann_file, renumber_ann_ids=renumber_ann_ids)
        self._setup(images_dir, parsed, empty=empty, bad_images=bad_images, split=split)
        self.class_names = ["background", *self.class_names]
        self.num_classes = len(self.class_names)
        if not isinstance(ignore_index, int) or 0 <= ignore_index < self.num_classes:
            raise ConfigError(f"ignore_index = {ignore_index!r} collides with class indices 0..{self.num_classes - 1}"
                              "; use a value outside them, e.g. 255")
        self.ignore_index = ignore_index
        self.transforms = as_segmentation_transform(transforms)

    def render(self, index: int) -> np.ndarray:
        """The semantic mask of image ``index`` as ``int64 [H, W]`` (before transforms)."""
        try:
            return self._render(self._records[index])
        except DataError as err:
            raise DataError(f"{self._source}: image id {self._records[index].image_id}: {err}") from None

    def _render(self, rec) -> np.ndarray:
        h, w = rec.height, rec.width
        sem = np.zeros((h, w), dtype=np.int64)
        if len(rec.labels):
            inst = decode_segms(rec.segms, h, w, rec.boxes).astype(bool)
            for m, label in zip(inst, rec.labels, strict=True):
                clash = m & (sem != 0) & (sem != label)
                sem[m] = label
                sem[clash] = self.ignore_index
        crowd = rec.crowd_segms
        if crowd:
            sem[decode_segms(crowd, h, w, rec.crowd_boxes).any(axis=0)] = self.ignore_index
        return sem

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        return self._with_policy(index % len(self), self._load)

    def _load(self, index: int):
        img = self._read(self._records[index])
        mask = self.render(index)
        if self.transforms is not None:
            return self.transforms(img, mask)
        return to_image_tensor(img), torch.from_numpy(mask)
