"""A folder of images and a folder of label masks, paired by file stem."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from resdense.errors import ConfigError, DataError

from .common import SkipBadImages, check_choice
from .image_io import IMAGE_EXTENSIONS, MASK_EXTENSIONS, read_image, read_mask, to_image_tensor
from .split_names import SplitArg, name_keys, select_split
from .transforms import as_segmentation_transform

__all__ = ["MaskDataset", "pair_by_stem", "find_mask_suffix"]

logger = logging.getLogger(__name__)


def _files(folder: Path, exts: tuple[str, ...], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder not found")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in exts and not p.name.startswith("."):
            if p.stem in out:
                raise DataError(f"{p}: two {what} files share the stem {p.stem!r} ({out[p.stem].name}, {p.name})")
            out[p.stem] = p
    return out


def pair_by_stem(images_dir, masks_dir, mask_suffix: str = "") -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Pair ``images_dir/<stem>.*`` with ``masks_dir/<stem><mask_suffix>.*``.

    Returns:
        ``(pairs, images_without_mask, masks_without_image)``, each sorted by stem.
    """
    images = _files(Path(images_dir), IMAGE_EXTENSIONS, "image")
    masks_raw = _files(Path(masks_dir), MASK_EXTENSIONS, "mask")
    masks = {}
    for stem, p in masks_raw.items():
        if mask_suffix and stem.endswith(mask_suffix):
            stem = stem[: -len(mask_suffix)]
        masks[stem] = p
    pairs = [(images[s], masks[s]) for s in sorted(images) if s in masks]
    return pairs, [images[s] for s in sorted(images) if s not in masks], [masks[s] for s in sorted(masks)
                                                                            if s not in images]


def find_mask_suffix(images_dir, masks_dir) -> str:
    """The suffix that mask stems add to image stems (``""``, ``"_mask"`` for ``a.jpg`` / ``a_mask.png``, ...).

    Every way of reading a mask stem as an image stem plus a suffix is a candidate; the one that pairs the most
    masks with images wins.

    Raises:
        DataError: no mask is named after an image, or several suffixes pair equally many (e.g. a folder holding
            ``a_color.png`` and ``a_instanceIds.png`` for ``a.png``): the message lists them; pass the suffix.
    """
    images = set(_files(Path(images_dir), IMAGE_EXTENSIONS, "image"))
    masks = _files(Path(masks_dir), MASK_EXTENSIONS, "mask")
    score: dict[str, int] = {}
    for stem in masks:
        for cut in range(len(stem), 0, -1):
            if stem[:cut] in images:
                score[stem[cut:]] = score.get(stem[cut:], 0) + 1
    if not score:
        example = f" (e.g. image {min(images)!r}, mask {min(masks)!r})" if images and masks else ""
        raise DataError(f"{masks_dir}: no mask is named like an image of {images_dir}, with or without a suffix"
                        f"{example}")
    best = max(score.values())
    tops = sorted(s for s, n in score.items() if n == best)
    if len(tops) > 1:
        raise DataError(f"{masks_dir}: the mask names fit several suffixes ({', '.join(map(repr, tops))}, each "
                        f"pairing {best} image(s)); give mask_suffix")
    return tops[0]


def _select(pairs, lonely_images, split: SplitArg, images_dir) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """The pairs and mask-less images that ``split`` names (an image of the split without a mask stays an error)."""
    entries = sorted([(image, mask) for image, mask in pairs] + [(image, None) for image in lonely_images],
                     key=lambda e: e[0].stem)
    keep = [entries[i] for i in select_split([name_keys(e[0].name) for e in entries], split, str(images_dir))]
    return [e for e in keep if e[1] is not None], [image for image, mask in keep if mask is None]


class MaskDataset(SkipBadImages, Dataset):
    """Semantic segmentation from ``images_dir`` + ``masks_dir``, paired by file stem.

    Masks may be L (8-bit), P (palette: read as indices, never as colours), I;16 (16-bit) or, with
    ``color_map``, RGB. Every mask value must be a class index ``0..K-1`` or ``ignore_index`` after ``value_map``.

    Args:
        images_dir: folder of images (jpg, png, bmp, tif, webp). Grayscale/RGBA become RGB.
        masks_dir: folder of masks named like the images (plus ``mask_suffix``).
        classes: class names (their number is K) or K itself.
        ignore_index: label excluded from losses and metrics; must lie outside ``0..K-1``.
        value_map: raw mask value -> class index (or ``ignore_index``), e.g. ``{0: 0, 255: 1}`` for 0/255 binary
            masks; raw values missing from the map are an error naming the file and the value.
        transforms: a :class:`~resdense.data.SegmentationTransform` (see :func:`segmentation_transforms`),
            albumentations transforms (wrapped, ImageNet-normalised) or a callable ``(image uint8 [H, W, 3],
            mask [H, W]) -> (image, mask)``. ``None``: ``[0, 1]`` image tensor and int64 mask.
        color_map: ``{(r, g, b): class index}`` for RGB colour masks.
        mask_suffix: suffix of mask stems, e.g. ``"_mask"`` for ``a.jpg`` / ``a_mask.png``.
        split: serve only the images this split names: a text file of image names (file name or stem, one per
            line, ``#`` comments; VOC ``ImageSets`` / mmseg style) or a list of names. The order stays the sorted
            order of the stems; images outside the split need no mask. ``None``: every image.
        bad_images: ``"raise"`` or ``"skip"`` (counted warning) on unreadable files.

    Item: ``image`` float32 ``[3, H, W]``, ``mask`` int64 ``[H, W]``.
    Attributes: ``num_classes``, ``class_names``, ``ignore_index``, ``image_paths``, ``mask_paths``.
    """

    task = "segmentation"

    def __init__(self, images_dir, masks_dir, classes: Sequence[str] | int, ignore_index: int = 255,
                 value_map: Mapping[int, int] | None = None, transforms=None, *,
                 color_map: Mapping[tuple[int, int, int], int] | None = None, mask_suffix: str = "",
                 split: SplitArg | None = None, bad_images: str = "raise") -> None:
        check_choice("bad_images", bad_images, ("raise", "skip"))
        if isinstance(classes, int) and not isinstance(classes, bool):
            if classes < 1:
                raise ConfigError(f"classes = {classes} must be at least 1")
            classes = [str(i) for i in range(classes)]
        self.class_names = [str(c) for c in classes]
        self.num_classes = K = len(self.class_names)
        if K == 0:
            raise ConfigError("classes is empty; give the class names (index order) or their number")
        if not isinstance(ignore_index, int) or 0 <= ignore_index < K:
            raise ConfigError(f"ignore_index = {ignore_index!r} lies inside the class range 0..{K - 1}; "
                              "use a value outside it, e.g. 255")
        self.ignore_index = ignore_index
        self.bad_images = bad_images
        # keys written as strings ('255': 1 in YAML or JSON) are the same mask values
        self.value_map = ({int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in value_map.items()}
                          if value_map is not None else None)
        self._lut = None
        if self.value_map is not None:
            for raw, cls in self.value_map.items():
                if not (isinstance(raw, int | np.integer) and 0 <= raw < 65536):
                    raise ConfigError(f"value_map key {raw!r} is not a mask value in 0..65535")
                if not (0 <= cls < K or cls == ignore_index):
                    raise ConfigError(f"value_map[{raw}] = {cls!r} is neither a class 0..{K - 1} nor "
                                      f"ignore_index={ignore_index}")
            # which raw values are mapped is kept apart from what they map to: any int may be the ignore_index
            lut, self._mapped = np.zeros(65536, dtype=np.int64), np.zeros(65536, dtype=bool)
            for raw, cls in self.value_map.items():
                lut[raw], self._mapped[raw] = cls, True
            self._lut = lut
        self.color_map = {tuple(int(c) for c in k): int(v) for k, v in color_map.items()} if color_map else None
        pairs, lonely_images, lonely_masks = pair_by_stem(images_dir, masks_dir, mask_suffix)
        if split is not None:
            pairs, lonely_images = _select(pairs, lonely_images, split, images_dir)
            lonely_masks = []  # masks outside the split are expected
        if lonely_images:
            raise DataError(f"{lonely_images[0]}: no mask for this image in {masks_dir} "
                            f"({len(lonely_images)} image(s) without mask)")
        if lonely_masks:
            logger.info("%s: %d mask(s) without an image are ignored, e.g. %s", masks_dir, len(lonely_masks),
                        lonely_masks[0].name)
        if not pairs:
            raise DataError(f"{images_dir}: no image/mask pairs found (masks looked for in {masks_dir})")
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        self.image_paths = [p for p, _ in pairs]
        self.mask_paths = [m for _, m in pairs]
        self.transforms = as_segmentation_transform(transforms)
        if self.value_map is None and self.color_map is None:
            self._check_not_binary_255(0)

    def _check_not_binary_255(self, index: int) -> None:
        """Refuse the classic silent error: a 0/255 binary mask read with ``ignore_index=255`` (all foreground
        would be ignored). Judged on the first mask: only background and ``ignore_index``, the latter on over a
        quarter of the pixels (VOC-style ignore borders are thin)."""
        raw = read_mask(self.mask_paths[index])
        vals = np.unique(raw)
        if set(vals.tolist()) == {0, self.ignore_index} and (raw == self.ignore_index).mean() > 0.25:
            raise DataError(f"{self.mask_paths[index]}: mask values are only 0 and {self.ignore_index} "
                            f"(= ignore_index, on {(raw == self.ignore_index).mean():.0%} of the pixels): a 0/255 "
                            f"binary mask? pass value_map={{0: 0, {self.ignore_index}: 1}}")

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_mask(self, index: int) -> np.ndarray:
        """The mask of sample ``index`` as class indices, validated (int64 ``[H, W]``, before transforms)."""
        path = self.mask_paths[index]
        raw = read_mask(path, self.color_map)
        if self._lut is not None:
            if raw.dtype.kind == "i" and raw.size and (raw.min() < 0 or raw.max() > 65535):
                raise DataError(f"{path}: mask value {int(raw.max())} is outside value_map's range 0..65535")
            mask = self._lut[raw]
            bad = ~self._mapped[raw]
            if bad.any():
                vals = np.unique(raw[bad])
                raise DataError(f"{path}: mask value(s) {', '.join(map(str, vals[:8].tolist()))} not in value_map "
                                f"(keys {sorted(self.value_map)})")
            return mask
        mask = raw.astype(np.int64, copy=False)
        K = self.num_classes
        if mask.size and (mask.max() >= K or mask.min() < 0):
            bad = ((mask >= K) | (mask < 0)) & (mask != self.ignore_index)
            if bad.any():
                vals = np.unique(mask[bad])
                hint = " (0/255 binary mask? pass value_map={0: 0, 255: 1})" if set(vals.tolist()) == {255} else ""
                raise DataError(f"{path}: mask value(s) {', '.join(map(str, vals[:8].tolist()))} are outside the "
                                f"classes 0..{K - 1} and not ignore_index={self.ignore_index}{hint}")
        return mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        return self._with_policy(index % len(self), self._load)

    def _load(self, index: int):
        img = read_image(self.image_paths[index])
        mask = self.load_mask(index)
        if mask.shape != img.shape[:2]:
            raise DataError(f"{self.mask_paths[index]}: mask is {mask.shape[1]}x{mask.shape[0]} (width x height) "
                            f"but its image {self.image_paths[index].name} is {img.shape[1]}x{img.shape[0]}")
        if self.transforms is not None:
            return self.transforms(img, mask)
        return to_image_tensor(img), torch.from_numpy(mask)

    def __repr__(self) -> str:
        return f"MaskDataset({len(self)} pairs, {self.num_classes} classes, ignore_index={self.ignore_index})"
