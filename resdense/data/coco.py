"""COCO instance annotations as a torchvision-style detection dataset."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from resdense.coco.io import build_coco
from resdense.coco.packing import pack_segms
from resdense.coco.rle import decode_segms
from resdense.errors import DataError

from .coco_parse import ParsedCoco, parse_coco_file, raise_first
from .coco_store import ImageRecord, Records
from .common import SkipBadImages, check_choice, warn
from .image_io import read_image, to_image_tensor
from .split_names import SplitArg, name_keys, select_split
from .transforms import DetectionTransform, as_detection_transform

__all__ = ["CocoDetection", "CocoSource"]

logger = logging.getLogger(__name__)


def _missing(images_dir: Path, names: list[str]) -> np.ndarray:
    """bool ``[n]``: ``images_dir / name`` does not exist. One listing of ``images_dir`` answers for the names of
    files directly in it (no system call per image: train2017 has 118k); links and other names are looked up."""
    try:
        with os.scandir(images_dir) as entries:
            present = {e.name for e in entries if not e.is_symlink()}
    except OSError:
        present = set()
    root = str(images_dir)
    return np.fromiter((n not in present and not os.path.exists(os.path.join(root, n)) for n in names), bool,
                       len(names))


class CocoSource(SkipBadImages, Dataset):
    """Parsing, validation, the empty-image policy and the lazily built ``coco`` shared by the COCO datasets.

    Annotations live in the parse's :class:`~resdense.data.coco_store.AnnotationStore` (flat arrays, so that
    DataLoader workers share them without copy-on-write growth); ``_rows`` are the store's images this dataset
    serves, ``_records`` views them.
    """

    def _setup(self, images_dir, parsed: ParsedCoco, *, empty: str, bad_images: str,
               split: SplitArg | None = None) -> None:
        check_choice("empty", empty, ("keep", "drop"))
        check_choice("bad_images", bad_images, ("raise", "skip"))
        raise_first(parsed)
        for w in parsed.warnings:
            warn(w)
        self.images_dir = Path(images_dir)
        self.empty, self.bad_images = empty, bad_images
        self.class_names = list(parsed.class_names)
        self.num_classes = len(self.class_names)
        self.cat_id_to_label = dict(parsed.cat_id_to_label)
        self.label_to_cat_id = dict(parsed.label_to_cat_id)
        self._store = store = parsed.store
        self._source = parsed.source
        self._coco = None
        rows = np.arange(len(store))
        if split is not None:
            rows = rows[select_split([name_keys(n) for n in store.file_names], split, parsed.source)]
        self._coco_rows = rows  # the evaluation ground truth: every image of the split
        missing = _missing(self.images_dir, [store.file_names[r] for r in rows.tolist()])
        if missing.any():
            first_row = int(rows[np.argmax(missing)])
            first = self.images_dir / store.file_names[first_row]
            if bad_images == "raise":
                raise DataError(f"{first}: image file not found (image id {int(store.image_id[first_row])}; "
                                f"{int(missing.sum())} of {len(rows)} images missing; bad_images='skip' drops them)")
            warn(f"{parsed.source}: skipped {int(missing.sum())} image(s) whose file is missing, e.g. {first}")
            rows = rows[~missing]
        if empty == "drop":
            n = len(rows)
            rows = rows[store.n_targets(rows) > 0]
            if n - len(rows):
                logger.info("%s: dropped %d image(s) without training annotations (empty='drop')",
                            parsed.source, n - len(rows))
        self._rows = rows
        self._records = Records(store, rows)
        self.image_ids = store.image_id[rows].tolist()

    @property
    def coco(self):
        """pycocotools ``COCO`` of the validated ground truth (crowd kept, boxes clipped, all images of the split),
        built on first use (:meth:`~resdense.data.coco_store.AnnotationStore.coco_dataset`)."""
        if self._coco is None:
            self._coco = build_coco(self._store.coco_dataset(self._coco_rows))
        return self._coco

    def __getstate__(self) -> dict:
        # Workers do not need the COCO index; rebuilding it on demand keeps DataLoader start-up cheap.
        state = self.__dict__.copy()
        state["_coco"] = None
        return state

    def __len__(self) -> int:
        return len(self._records)

    @property
    def image_paths(self) -> list[Path]:
        return [self.images_dir / self._store.file_names[r] for r in self._rows.tolist()]

    def _read(self, rec: ImageRecord) -> np.ndarray:
        path = self.images_dir / rec.file_name
        img = read_image(path)
        h, w = img.shape[:2]
        if (h, w) != (rec.height, rec.width):
            hint = " (the JSON has the size before EXIF rotation)" if (w, h) == (rec.height, rec.width) else ""
            raise DataError(f"{path}: image is {w}x{h} (width x height) but the annotation file says "
                            f"{rec.width}x{rec.height} for image id {rec.image_id}{hint}")
        return img


class CocoDetection(CocoSource):
    """COCO instances file -> ``(image, target)`` pairs for torchvision detectors.

    Args:
        images_dir: folder that the images' ``file_name`` fields are relative to.
        ann_file: COCO instances JSON.
        transforms: a :class:`~resdense.data.DetectionTransform` (see :func:`detection_transforms`), albumentations
            transforms (wrapped in one), or any callable ``(image uint8 [H, W, 3], target of numpy) -> (image,
            target)``. ``None``: the image as a ``[0, 1]`` tensor.
        masks: also return instance masks decoded from polygons or RLE (decoded only when asked for).
        empty: ``"keep"`` images without (non-crowd) annotations, with empty targets, or ``"drop"`` them.
        renumber_ann_ids: accept annotation id 0 / duplicate ids by renumbering them 1..N (refused otherwise,
            because pycocotools silently mis-scores them).
        bad_images: ``"raise"`` on a missing or unreadable image, or ``"skip"`` it with a counted warning.
        split: serve only the images this split names: a text file of names (an image's ``file_name``, or its stem,
            one per line, ``#`` comments) or a list of them; ``coco`` then holds only those images. The order
            stays the file's. ``None``: every image.

    Construction reads the file once and keeps its annotations in flat arrays (a train2017-sized file costs what
    pycocotools' ``COCO()`` costs, or less: ``benchmarks/data_speed.py``); ``coco`` is built on first use, from
    them, with the fields evaluation reads (other annotation fields are not kept).

    Item: ``image`` float32 ``[3, H, W]`` in ``[0, 1]`` (never mean/std-normalised unless the transform says so)
    and ``target`` with ``boxes`` float32 ``[N, 4]`` xyxy pixels, ``labels`` int64 ``[N]`` in ``1..K``, ``masks``
    uint8 ``[N, H, W]`` (``masks=True``), ``image_id`` int, ``area`` float32 ``[N]``, ``iscrowd`` int64 ``[N]``
    (zeros: crowd regions are not training targets but stay in :attr:`coco` for evaluation), ``orig_size`` and
    ``size`` int64 ``[2]`` (H, W) of the file and of the returned image.

    Attributes: ``num_classes`` (K), ``class_names``, ``cat_id_to_label``, ``label_to_cat_id``, ``coco``,
    ``image_ids`` (dataset order), ``image_paths``.
    """

    task = "detection"

    def __init__(self, images_dir, ann_file, transforms=None, masks: bool = False, empty: str = "keep", *,
                 renumber_ann_ids: bool = False, split: SplitArg | None = None, bad_images: str = "raise") -> None:
        self.ann_file = Path(ann_file)
        parsed = parse_coco_file(ann_file, renumber_ann_ids=renumber_ann_ids)
        self._init_from(images_dir, parsed, transforms, masks, empty, bad_images, split)

    def _init_from(self, images_dir, parsed: ParsedCoco, transforms, masks, empty, bad_images, split) -> None:
        self._setup(images_dir, parsed, empty=empty, bad_images=bad_images, split=split)
        self.masks = bool(masks)
        self.transforms = as_detection_transform(transforms)
        if self.masks:
            n = self._store.n_box_masks(self._rows)
            if n:
                warn(f"{parsed.source}: {n} annotation(s) have no usable segmentation; their mask is the filled box")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        return self._with_policy(index % len(self), self._load)

    def _load(self, index: int) -> tuple[torch.Tensor, dict]:
        rec = self._records[index]
        img = self._read(rec)
        boxes = rec.boxes.copy()
        target = {"boxes": boxes, "labels": rec.labels.copy(), "area": rec.areas.copy(),
                  "iscrowd": np.zeros(len(boxes), dtype=np.int64)}
        if self.masks:
            try:
                if isinstance(self.transforms, DetectionTransform) and self.transforms.packs_masks:
                    # Decoded straight into 8-instances-per-byte planes: one warp instead of N downstream.
                    target["masks"] = pack_segms(rec.segms, rec.height, rec.width, boxes)
                else:
                    masks = decode_segms(rec.segms, rec.height, rec.width, boxes)
                    target["masks"] = np.ascontiguousarray(masks)
            except DataError as err:
                raise DataError(f"{self._source}: image id {rec.image_id}: {err}") from None
        if self.transforms is not None:
            image, target = self.transforms(img, target)
        else:
            image = to_image_tensor(img)
        target = {k: torch.as_tensor(v) for k, v in target.items()}
        target["image_id"] = rec.image_id
        target["orig_size"] = torch.tensor([rec.height, rec.width], dtype=torch.int64)
        target["size"] = torch.tensor(image.shape[-2:], dtype=torch.int64)
        return image, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, {self.num_classes} classes, masks={self.masks}, "
                f"transforms={self.transforms!r})")
