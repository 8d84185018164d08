"""Albumentations pipelines for detection and segmentation, and the glue that keeps targets matched.

A detection sample goes through albumentations as ``image``, ``bboxes`` (pascal_voc = xyxy pixels), ``masks``
(``[N, H, W]``) and two label fields: ``labels`` and the instance's index. Albumentations drops boxes that a crop
cuts away (``min_area``, ``min_visibility``) but transforms every mask, so the surviving indices select the masks,
areas and crowd flags of the surviving boxes: boxes, labels and masks can never drift apart.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from resdense.backbones import IMAGENET_MEAN, IMAGENET_STD
from resdense.coco.packing import PackedMasks, pack_masks, unpack_masks
from resdense.errors import ConfigError

from .image_io import to_image_tensor

__all__ = [
    "DetectionTransform",
    "SegmentationTransform",
    "detection_transforms",
    "segmentation_transforms",
    "as_detection_transform",
    "as_segmentation_transform",
    "seed_transforms",
]

def _transform_list(transforms) -> list:
    if transforms is None:
        return []
    if isinstance(transforms, A.BaseCompose):
        return list(transforms.transforms)
    if isinstance(transforms, A.BasicTransform):
        return [transforms]
    return list(transforms)


class DetectionTransform:
    """Apply albumentations transforms to a detection sample and return tensors.

    Args:
        transforms: albumentations transforms (a list, or a ``Compose`` whose transforms are taken; its own
            ``bbox_params`` are replaced by ours).
        min_area: boxes smaller than this many pixels after the transforms are dropped (with their masks).
        min_visibility: boxes keeping less than this fraction of their area after a crop are dropped.
        boxes_from_masks: when instance masks are present, replace each box by the tight box of its transformed
            mask and drop instances whose mask became empty. Use it with rotations, where the transformed box of a
            non-rectangular object is loose (detectron2 recomputes boxes after crops for the same reason).
        normalize: subtract ``mean`` and divide by ``std`` (off by default: torchvision detectors normalise inside
            ``GeneralizedRCNNTransform``, so normalising here too would be a silent double normalisation).
        mean, std: per-channel statistics in ``[0, 1]`` units.
        seed: seed of albumentations' random generator (``None``: drawn from the global state).

    Call: ``(image uint8 [H, W, 3], target)`` with numpy ``boxes [N, 4]`` xyxy, ``labels [N]``, ``area [N]``,
    ``iscrowd [N]`` and optionally ``masks uint8 [N, H, W]`` (or :class:`~resdense.coco.PackedMasks`) ->
    ``(image float32 [3, H', W'], target)`` with the same
    keys as tensors (``boxes`` float32, ``labels``/``iscrowd`` int64, ``area`` float32, ``masks`` uint8).
    """

    def __init__(
        self,
        transforms=None,
        *,
        min_area: float = 1.0,
        min_visibility: float = 0.0,
        boxes_from_masks: bool = False,
        normalize: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int | None = None,
    ) -> None:
        self.boxes_from_masks = boxes_from_masks
        self.normalize = normalize
        self.mean, self.std = tuple(mean), tuple(std)
        bbox_params = A.BboxParams(
            format="pascal_voc", label_fields=["labels", "instance"], clip=True, min_area=min_area,
            min_visibility=min_visibility, filter_invalid_bboxes=True,
        )
        ops = _transform_list(transforms)
        if normalize:
            ops.append(A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0))
        with warnings.catch_warnings():
            # An evaluation pipeline may have no geometric op at all; albumentations warns about the unused bbox
            # processor then, which is noise here.
            warnings.filterwarnings("ignore", message="Got processor for bboxes")
            # Instance masks are binary: nearest-neighbour keeps them binary, and lets us bit-pack them (resdense.coco.packing).
            self.compose = A.Compose(ops, bbox_params=bbox_params, seed=seed, mask_interpolation=cv2.INTER_NEAREST)
        # Bit-packing 8 instance masks per channel is exact when every op only moves mask pixels (nearest
        # interpolation) and fills borders with 0; an op filling masks with another value gets the plain path.
        self._pack = all(not getattr(op, "fill_mask", 0) for op in ops)

    def __call__(self, image: np.ndarray, target: dict) -> tuple[torch.Tensor, dict]:
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        data = {"image": image, "bboxes": boxes, "labels": np.asarray(target["labels"]), "instance": np.arange(n)}
        masks = target.get("masks")
        if isinstance(masks, PackedMasks) and not self._pack:
            masks = unpack_masks(masks.array, np.arange(masks.n))
        if masks is not None and n:
            if isinstance(masks, PackedMasks):
                data["mask"] = masks.array
            elif self._pack:
                data["mask"] = pack_masks(np.asarray(masks))
            else:
                data["masks"] = np.asarray(masks)
        out = self.compose(**data)
        keep = np.asarray(out["instance"], dtype=np.int64).reshape(-1)
        new_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(target["labels"], dtype=np.int64)[keep]
        area = np.asarray(target.get("area", _box_area(boxes)), dtype=np.float32)[keep]
        iscrowd = np.asarray(target.get("iscrowd", np.zeros(n)), dtype=np.int64)[keep]
        img = out["image"]
        result: dict = {}
        if masks is not None:
            if not n:
                m = np.zeros((0, *img.shape[:2]), np.uint8)
            elif self._pack:
                m = unpack_masks(np.asarray(out["mask"]), keep)
            else:
                m = np.asarray(out["masks"])[keep]
            if self.boxes_from_masks:
                tight, nonempty = _mask_boxes(m)
                new_boxes, m, labels, iscrowd = tight[nonempty], m[nonempty], labels[nonempty], iscrowd[nonempty]
            # The pixel count of the transformed mask is the transformed area (what COCO's 'area' means).
            area = m.sum(axis=(1, 2), dtype=np.int64).astype(np.float32)
            result["masks"] = torch.from_numpy(np.ascontiguousarray(m, dtype=np.uint8))
        else:
            # No masks: scale the annotated area by how much the box grew or shrank (exact for resizes and flips).
            old = _box_area(boxes[keep])
            area = area * np.divide(_box_area(new_boxes), old, out=np.ones_like(old), where=old > 0)
        result.update(
            boxes=torch.from_numpy(np.ascontiguousarray(new_boxes)),
            labels=torch.from_numpy(labels),
            area=torch.from_numpy(area.astype(np.float32)),
            iscrowd=torch.from_numpy(iscrowd),
        )
        if self.normalize:
            tensor = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))
        else:
            tensor = to_image_tensor(img)
        return tensor, result

    @property
    def packs_masks(self) -> bool:
        """Whether instance masks travel bit-packed (every op warps masks by nearest neighbour and fills with 0)."""
        return self._pack

    def __repr__(self) -> str:
        return f"DetectionTransform({self.compose.transforms!r}, normalize={self.normalize})"


def _box_area(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)


def _mask_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight xyxy boxes ``[N, 4]`` of binary masks ``[N, H, W]`` (pixel edges, like torchvision's
    ``masks_to_boxes`` + 1 on the far side) and a ``[N]`` bool of non-empty masks."""
    n = len(masks)
    boxes = np.zeros((n, 4), np.float32)
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    nonempty = rows.any(axis=1)
    for i in np.flatnonzero(nonempty):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes, nonempty


class SegmentationTransform:
    """Apply albumentations transforms to an ``(image, mask)`` pair, normalise, and return tensors.

    Args:
        transforms: albumentations transforms (list or ``Compose``). Masks are warped with nearest-neighbour
            interpolation by albumentations; give padding/rotation ops ``fill_mask=ignore_index``.
        normalize: subtract ``mean`` / divide by ``std`` (the backbone weights' statistics, ``[0, 1]`` units).
        mean, std: per-channel statistics; default ImageNet.
        seed: seed of albumentations' random generator.

    Call: ``(image uint8 [H, W, 3], mask int [H, W])`` -> ``(image float32 [3, H', W'], mask int64 [H', W'])``.
    """

    def __init__(self, transforms=None, *, normalize: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, seed: int | None = None) -> None:
        self.normalize = normalize
        self.mean, self.std = tuple(mean), tuple(std)
        ops = _transform_list(transforms)
        if normalize:
            ops.append(A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0))
        self.compose = A.Compose(ops, seed=seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # OpenCV warps uint8/uint16 masks but not int64; class indices and 255 fit in uint8 almost always.
        small = mask.dtype == np.uint8 or (mask.size and mask.min() >= 0 and mask.max() <= 255)
        mask = mask.astype(np.uint8 if small else np.uint16, copy=False)
        out = self.compose(image=image, mask=mask)
        img = out["image"]
        if self.normalize:
            tensor = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))
        else:
            tensor = to_image_tensor(img)
        return tensor, torch.from_numpy(np.asarray(out["mask"]).astype(np.int64))

    def __repr__(self) -> str:
        return f"SegmentationTransform({self.compose.transforms!r}, normalize={self.normalize})"


def as_detection_transform(transforms) -> Callable | None:
    """Wrap albumentations transforms in :class:`DetectionTransform`; pass any other callable through."""
    if transforms is None or (callable(transforms) and not isinstance(transforms, A.BaseCompose | A.BasicTransform)):
        return transforms
    if isinstance(transforms, A.BaseCompose | A.BasicTransform | list | tuple):
        return DetectionTransform(transforms)
    raise ConfigError(f"transforms = {transforms!r} is neither callable nor albumentations transforms")


def as_segmentation_transform(transforms) -> Callable | None:
    """Wrap albumentations transforms in :class:`SegmentationTransform` (with ImageNet normalisation)."""
    if transforms is None or (callable(transforms) and not isinstance(transforms, A.BaseCompose | A.BasicTransform)):
        return transforms
    if isinstance(transforms, A.BaseCompose | A.BasicTransform | list | tuple):
        return SegmentationTransform(transforms)
    raise ConfigError(f"transforms = {transforms!r} is neither callable nor albumentations transforms")


def _check_size(size) -> None:
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise ConfigError(f"size = {size!r} is not a positive integer (or None)")


# The ops both presets share, in the order they run (the order fixes which random draws each op takes).
def _crop_and_flip(size: int | None, scale: tuple[float, float], hflip: float) -> list:
    ops: list = []
    if size is not None:
        ops.append(A.RandomResizedCrop(size=(size, size), scale=scale, ratio=(3 / 4, 4 / 3)))
    if hflip:
        ops.append(A.HorizontalFlip(p=hflip))
    return ops


def _jitter(amount: float) -> list:
    return [A.ColorJitter(brightness=amount, contrast=amount, saturation=amount, hue=0.0, p=0.5)] if amount else []


def _eval_resize(size: int | None) -> list:
    return [A.LongestMaxSize(max_size=size)] if size is not None else []


def detection_transforms(
    train: bool = True,
    size: int | None = 512,
    *,
    scale: tuple[float, float] = (0.25, 1.0),
    hflip: float = 0.5,
    rotate: float = 0.0,
    color_jitter: float = 0.2,
    min_area: float = 4.0,
    min_visibility: float = 0.25,
    normalize: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int | None = None,
) -> DetectionTransform:
    """The detection preset.

    Training: a random crop covering ``scale`` of the image resized to ``size x size``, horizontal flip,
    optional rotation by up to ``rotate`` degrees (then boxes are recomputed from masks when masks are loaded),
    colour jitter. Evaluation: the longer side resized to ``size`` (aspect ratio kept); ``size=None`` keeps the
    image as it is. Boxes are clipped to the image; boxes under ``min_area`` pixels or keeping less than
    ``min_visibility`` of their area drop out together with their masks and labels.

    Images come out in ``[0, 1]`` without mean/std normalisation (torchvision detectors normalise internally);
    ``normalize=True`` applies ``mean``/``std``.
    """
    _check_size(size)
    if train:
        ops = _crop_and_flip(size, scale, hflip)
        if rotate:
            ops.append(A.Rotate(limit=rotate, border_mode=cv2.BORDER_CONSTANT, p=0.5))
        ops += _jitter(color_jitter)
    else:
        ops = _eval_resize(size)
    return DetectionTransform(ops, min_area=min_area if train else 0.0, min_visibility=min_visibility if train else 0.0,
                              boxes_from_masks=bool(train and rotate), normalize=normalize, mean=mean, std=std,
                              seed=seed)


def segmentation_transforms(
    train: bool = True,
    size: int | None = 512,
    *,
    scale: tuple[float, float] = (0.5, 1.0),
    hflip: float = 0.5,
    vflip: float = 0.0,
    rot90: float = 0.0,
    elastic: float = 0.0,
    rotate: float = 0.0,
    color_jitter: float = 0.2,
    pad_divisor: int = 32,
    ignore_index: int = 255,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int | None = None,
) -> SegmentationTransform:
    """The segmentation preset, normalised with the backbone weights' ``mean``/``std`` (ImageNet by default).

    Training: random crop covering ``scale`` of the image resized to ``size x size``, horizontal flip, optional
    vertical flip and 90-degree rotations (``vflip``, ``rot90``: for images without an up, such as microscopy), an
    elastic deformation with probability ``elastic`` (Ronneberger et al.'s augmentation for EM images: smooth
    displacements of about 3 px, albumentations' ``ElasticTransform(alpha=120, sigma=6)``, reflected borders),
    optional rotation (border pixels of the mask become ``ignore_index``), colour jitter. Evaluation: longer side resized to
    ``size`` (``None``: unchanged), then padded at the bottom/right to a multiple of ``pad_divisor`` (a U-Net needs
    sides divisible by its output stride) with mask value ``ignore_index``, so padding never counts in metrics.
    """
    _check_size(size)
    if train:
        ops = _crop_and_flip(size, scale, hflip)
        if vflip:
            ops.append(A.VerticalFlip(p=vflip))
        if rot90:
            ops.append(A.RandomRotate90(p=rot90))
        if elastic:
            ops.append(A.ElasticTransform(alpha=120, sigma=6, border_mode=cv2.BORDER_REFLECT_101, p=elastic))
        if rotate:
            ops.append(A.Rotate(limit=rotate, border_mode=cv2.BORDER_CONSTANT, fill_mask=ignore_index, p=0.5))
        ops += _jitter(color_jitter)
    else:
        ops = _eval_resize(size)
    if pad_divisor and pad_divisor > 1 and (not train or size is None):
        ops.append(A.PadIfNeeded(min_height=None, min_width=None, pad_height_divisor=pad_divisor,
                                 pad_width_divisor=pad_divisor, position="top_left",
                                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index))
    return SegmentationTransform(ops, normalize=normalize, mean=mean, std=std, seed=seed)


def _leaves(dataset) -> list:
    if isinstance(dataset, Subset):
        return _leaves(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [leaf for d in dataset.datasets for leaf in _leaves(d)]
    return [dataset]


def seed_transforms(dataset: Dataset, seed: int) -> None:
    """Seed the albumentations generators of a dataset's transforms.

    Albumentations 2 draws from its own ``numpy.random.Generator`` (fresh OS entropy unless seeded), not from the
    global numpy state, so seeding numpy alone would leave augmentations unreproducible.
    """
    for leaf in _leaves(dataset):
        compose = getattr(getattr(leaf, "transforms", None), "compose", None)
        if compose is not None and hasattr(compose, "set_random_seed"):
            compose.set_random_seed(seed)
