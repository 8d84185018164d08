"""Folders of instance-id PNGs (Penn-Fudan ``PedMasks``, Cityscapes ``*_instanceIds.png``, nuclei and annotation
tools' exports), converted once to COCO in memory and served exactly like :class:`CocoDetection`.

A mask holds one integer per pixel: 0 is background, every other value one instance. Each instance becomes a COCO
annotation with a compressed-RLE segmentation (``pycocotools.mask.encode``), its pixel count as ``area`` and its
tight pixel box as ``bbox``, so the dataset, ``resdense data convert`` and the evaluation share one ground truth.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from resdense.errors import ConfigError, DataError
from resdense.files import make_dir, write_text, write_with

from .coco import CocoDetection
from .coco_parse import BACKGROUND_NAMES, parse_coco
from .common import check_choice, warn
from .image_io import image_size, read_mask
from .masks import find_mask_suffix, pair_by_stem
from .split_names import SplitArg, name_keys, select_split

__all__ = [
    "InstanceMaskDataset",
    "InstanceFolder",
    "read_instance_folder",
    "read_instance_ids",
    "write_instance_png",
    "connected_instances",
    "derive_instance_folder",
    "DerivedInstances",
    "ID_RULES",
]

logger = logging.getLogger(__name__)

ID_RULES = ("plain", "cityscapes")
# Modes that store one integer per pixel: binary, 8-bit grey or palette indices, 16-bit and 32-bit grey.
_ID_MODES = ("1", "L", "P", "I;16", "I;16B", "I;16L", "I;16N", "I")
# Cityscapes *_instanceIds.png: class_id * 1000 + k for objects; smaller values are stuff classes and crowd groups.
_CITYSCAPES_DIVISOR = 1000

ClassesArg = Sequence[str] | Mapping[int, str]


def read_instance_ids(path) -> np.ndarray:
    """The instance ids of a mask file, ``[H, W]`` integers >= 0 (``uint8``, ``uint16`` or ``int32``).

    Raises:
        DataError: missing or unreadable file; a colour (RGB/RGBA/LA) or float mask, naming the file and mode;
            a negative id.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
    except FileNotFoundError:
        raise DataError(f"{path}: mask file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: not a readable mask ({type(err).__name__}: {err})") from None
    if mode not in _ID_MODES:
        raise DataError(f"{path}: instance mask of mode {mode} is refused; save instance ids as L (up to 255), "
                        "I;16 (up to 65535) or I: one integer per pixel, 0 = background")
    ids = read_mask(path)
    if ids.dtype.kind == "i" and ids.size and ids.min() < 0:
        raise DataError(f"{path}: instance id {int(ids.min())} is negative; ids are integers >= 0 (0 = background)")
    return ids


def write_instance_png(path, ids: np.ndarray) -> Path:
    """Write instance ids ``[H, W]`` as a PNG of the smallest mode that holds them (L up to 255, else I;16).

    Raises:
        DataError: ids outside ``0..65535`` (PNG holds at most 16 bits per grey pixel).
    """
    ids = np.asarray(ids)
    top = int(ids.max()) if ids.size else 0
    if (ids.size and int(ids.min()) < 0) or top > 65535:
        raise DataError(f"{path}: instance ids {int(ids.min())}..{top} do not fit a PNG (0..65535)")
    arr = ids.astype(np.uint8 if top <= 255 else np.uint16)
    return write_with(path, partial(Image.fromarray(arr).save, format="PNG"), "instance mask")


def _class_ids(classes: ClassesArg) -> dict[int, str]:
    """``classes`` as ``{class id: name}`` sorted by id (a list names ids 1..K in order)."""
    if isinstance(classes, Mapping):
        out = {}
        for key, name in classes.items():
            cid = int(key) if isinstance(key, str) and key.strip().isdigit() else key
            if isinstance(cid, bool) or not isinstance(cid, int) or cid < 1:
                raise ConfigError(f"classes: key {key!r} is not a class id >= 1 (0 is background)")
            out[cid] = str(name)
    elif isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ConfigError(f"classes = {classes!r} is neither a list of names nor a mapping {{class id: name}}")
    else:
        out = {i + 1: str(n) for i, n in enumerate(classes)}
    names = list(out.values())
    if not names:
        raise ConfigError("classes is empty; name the object classes (0 is background and needs no name)")
    if len(set(names)) != len(names):
        raise ConfigError(f"classes = {names!r} has duplicates")
    for name in names:
        if name in BACKGROUND_NAMES:
            raise ConfigError(f"classes names {name!r}: list the object classes only (mask value 0 is background)")
    return dict(sorted(out.items()))


@dataclass
class InstanceFolder:
    """What :func:`read_instance_folder` found.

    Attributes:
        data: COCO instances dict (image ids 1..N over the whole folder in stem order, RLE segmentations, each
            annotation's ``instance_id`` = its value in the mask, each image's ``mask_file``).
        mask_suffix, class_mask_suffix: the suffixes used (given or detected).
        problems: one line per image left out (``bad_images="skip"``).
        left_out: instances whose class is not in ``classes``, counted by class id.
    """

    data: dict
    mask_suffix: str
    class_mask_suffix: str | None = None
    problems: list[str] = field(default_factory=list)
    left_out: Counter = field(default_factory=Counter)

    @property
    def num_instances(self) -> int:
        return len(self.data["annotations"])


def _entries(images_dir: Path, masks_dir: Path, suffix: str) -> list[tuple[Path, Path | None]]:
    pairs, lonely_images, lonely_masks = pair_by_stem(images_dir, masks_dir, suffix)
    if lonely_masks:
        logger.info("%s: %d mask(s) without an image are ignored, e.g. %s", masks_dir, len(lonely_masks),
                    lonely_masks[0].name)
    return sorted([*pairs, *((image, None) for image in lonely_images)], key=lambda e: e[0].stem)


def _instances(ids: np.ndarray, class_map: np.ndarray | None, id_rule: str, single: int | None,
               known: Mapping[int, str], left_out: Counter) -> list[tuple[int, int, dict]]:
    """``(instance id, class id, compressed RLE)`` of each instance of one mask, in id order."""
    from scipy import ndimage  # heavy import (0.2 s), needed only where instance masks are read

    h, w = ids.shape
    # COCO RLE runs down columns: the transposed ids, C-contiguous, hold the pixels in that order.
    ids_t = np.ascontiguousarray(ids.T)
    class_t = None if class_map is None else np.ascontiguousarray(class_map.T)
    values = None
    labels = ids_t
    if ids_t.size and int(ids_t.max()) > 65535:  # find_objects lists every id up to the largest: number them first
        values, inverse = np.unique(ids_t, return_inverse=True)
        if values[0] != 0:  # no background pixel: number the instances from 1 all the same
            values, inverse = np.concatenate(([0], values)), inverse + 1
        labels = inverse.reshape(ids_t.shape)
    first = _CITYSCAPES_DIVISOR if id_rule == "cityscapes" else 1
    out = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        v = index if values is None else int(values[index])
        if box is None or v < first:
            continue
        inside = labels[box] == index
        if id_rule == "cityscapes":
            cid = v // _CITYSCAPES_DIVISOR
        elif class_t is not None:
            cid = int(np.bincount(class_t[box][inside]).argmax())  # the class of most of its pixels; ties: smaller
        else:
            cid = single
        if cid not in known:
            left_out[cid] += 1
            continue
        out.append((v, cid, _rle(inside, box, h, w)))
    return out


def _rle(inside: np.ndarray, box: tuple[slice, slice], h: int, w: int) -> dict:
    """Compressed RLE of an instance given by its pixels ``inside`` the box ``(columns, rows)`` of an ``h x w``
    image: the runs of its column-major pixel indices, byte for byte what ``mask_utils.encode`` gives for the whole
    mask, at the cost of the box instead of the image."""
    cols, rows = box
    i = np.flatnonzero(inside)
    pos = (cols.start + i // inside.shape[1]) * h + rows.start + i % inside.shape[1]
    gaps = np.flatnonzero(np.diff(pos) != 1)
    starts = np.concatenate((pos[:1], pos[gaps + 1]))
    ends = np.concatenate((pos[gaps], pos[-1:])) + 1
    counts = np.empty(2 * len(starts) + 1, np.int64)  # background run, object run, ..., background run
    counts[0] = starts[0]
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[1::2] = ends - starts
    counts[-1] = h * w - ends[-1]
    runs = counts.tolist()
    if runs[-1] == 0:
        runs.pop()
    return mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)


def _read_class_map(path: Path, shape: tuple[int, int], image: Path) -> np.ndarray:
    class_map = read_mask(path)
    if class_map.shape != shape:
        raise DataError(f"{path}: class mask is {class_map.shape[1]}x{class_map.shape[0]} (width x height) but its "
                        f"image {image} is {shape[1]}x{shape[0]}")
    if class_map.dtype.kind == "i" and class_map.size and class_map.min() < 0:
        raise DataError(f"{path}: class id {int(class_map.min())} is negative")
    return class_map


def read_instance_folder(images_dir, masks_dir, classes: ClassesArg = ("person",), *, class_masks_dir=None,
                         id_rule: str = "plain", mask_suffix: str | None = None, class_mask_suffix: str | None = None,
                         split: SplitArg | None = None, bad_images: str = "raise") -> InstanceFolder:
    """Read a folder of images and a folder of instance-id masks into a COCO instances dict.

    Args:
        images_dir: folder of images.
        masks_dir: folder of instance masks (L, P, I;16 or I; see :func:`read_instance_ids`), one per image,
            named like it plus ``mask_suffix``.
        classes: object class names: a list names class ids 1..K, a mapping ``{class id: name}`` names any ids
            (Cityscapes: ``{24: "person", 26: "car"}``). Labels are 1..K in class-id order; category ids are the
            class ids.
        class_masks_dir: folder of class-id masks beside the instance masks (0 background, ``k`` the class id):
            an instance takes the class most of its pixels have (ties: the smaller id). ``None``: with
            ``id_rule="plain"`` every instance is the single class of ``classes``.
        id_rule: ``"plain"`` (every id > 0 is an instance) or ``"cityscapes"`` (id = ``class_id * 1000 + k``;
            ids below 1000 are stuff classes or crowd groups and are not instances).
        mask_suffix, class_mask_suffix: what mask stems add to image stems (``"_mask"`` for Penn-Fudan);
            ``None`` detects it (:func:`~resdense.data.masks.find_mask_suffix`).
        split: read only the images a split names (see :mod:`resdense.data.split_names`); image ids stay those
            of the whole folder.
        bad_images: ``"raise"`` the first problem, or ``"skip"`` the image and list it in ``problems``.

    Instances whose class is not in ``classes`` (majority class 0, a void value such as 255, a Cityscapes class
    that is not listed) are left out and counted in ``left_out``.

    Raises:
        ConfigError: bad ``classes`` / ``id_rule``, several classes with nothing that tells them apart.
        DataError (``bad_images="raise"``): an image without mask, an unreadable or colour mask, a mask or class
            mask whose size differs from its image's (naming both files and sizes).
    """
    check_choice("id_rule", id_rule, ID_RULES)
    check_choice("bad_images", bad_images, ("raise", "skip"))
    known = _class_ids(classes)
    _check_class_source(known, class_masks_dir, id_rule)
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    suffix = find_mask_suffix(images_dir, masks_dir) if mask_suffix is None else mask_suffix
    entries = _entries(images_dir, masks_dir, suffix)
    ids_of = {image: i for i, (image, _) in enumerate(entries, start=1)}
    if split is not None:
        entries = [entries[i] for i in select_split([name_keys(e[0].name) for e in entries], split, str(images_dir))]
    class_masks, csuffix = _class_masks(images_dir, class_masks_dir, class_mask_suffix)
    found = InstanceFolder({"images": [], "annotations": [],
                            "categories": [{"id": cid, "name": n} for cid, n in known.items()]}, suffix, csuffix)
    single = next(iter(known)) if len(known) == 1 else None
    for image, mask in entries:
        try:
            h, w, instances = _image_instances(image, mask, masks_dir, suffix, class_masks_dir, class_masks,
                                               id_rule=id_rule, single=single, known=known, left_out=found.left_out)
        except DataError as err:
            if bad_images == "raise":
                raise
            found.problems.append(str(err))
            continue
        _add_image(found.data, ids_of[image], image, mask, (h, w), instances)
    return found


def _check_class_source(known: dict[int, str], class_masks_dir, id_rule: str) -> None:
    """Refuse two sources of classes, or several classes with no source that tells them apart."""
    if class_masks_dir is not None and id_rule == "cityscapes":
        raise ConfigError("class_masks_dir and id_rule='cityscapes' both give classes; choose one")
    if class_masks_dir is None and id_rule == "plain" and len(known) > 1:
        raise ConfigError(f"classes names {len(known)} classes but nothing gives an instance its class: pass "
                          "class_masks_dir (class-id masks) or id_rule='cityscapes'")


def _class_masks(images_dir: Path, class_masks_dir, class_mask_suffix: str | None) -> tuple[dict, str | None]:
    """The class mask of each image (``{image path: class mask path}``) and their suffix; ``({}, None)`` without
    ``class_masks_dir``."""
    if class_masks_dir is None:
        return {}, None
    csuffix = find_mask_suffix(images_dir, class_masks_dir) if class_mask_suffix is None else class_mask_suffix
    return dict(pair_by_stem(images_dir, class_masks_dir, csuffix)[0]), csuffix


def _image_instances(image: Path, mask: Path | None, masks_dir: Path, suffix: str, class_masks_dir,
                     class_masks: dict, *, id_rule: str, single: int | None, known: dict[int, str],
                     left_out: Counter) -> tuple[int, int, list]:
    """One image's height, width and instances ``(id, class id, RLE)``; a missing or mismatched mask raises
    :class:`DataError`."""
    if mask is None:
        raise DataError(f"{image}: no instance mask for this image in {masks_dir} (mask_suffix {suffix!r})")
    if class_masks_dir is not None and image not in class_masks:
        raise DataError(f"{image}: no class mask for this image in {class_masks_dir}")
    h, w = image_size(image)
    ids = read_instance_ids(mask)
    if ids.shape != (h, w):
        raise DataError(f"{mask}: instance mask is {ids.shape[1]}x{ids.shape[0]} (width x height) but its "
                        f"image {image} is {w}x{h}")
    class_map = _read_class_map(class_masks[image], (h, w), image) if class_masks_dir is not None else None
    return h, w, _instances(ids, class_map, id_rule, single, known, left_out)


def _add_image(data: dict, image_id: int, image: Path, mask: Path, size: tuple[int, int], instances: list) -> None:
    """Append an image and its instances' annotations to the COCO dict ``data``."""
    h, w = size
    data["images"].append({"id": image_id, "file_name": image.name, "height": h, "width": w,
                           "mask_file": mask.name})
    for value, cid, rle in instances:
        data["annotations"].append({
            "id": len(data["annotations"]) + 1, "image_id": image_id, "category_id": cid, "iscrowd": 0,
            "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "instance_id": value})


class InstanceMaskDataset(CocoDetection):
    """A folder of images + a folder of instance-id masks -> ``(image, target)`` pairs, exactly as
    :class:`CocoDetection` serves the same instances from a COCO file (``masks=True``).

    Args:
        images_dir, masks_dir, classes, class_masks_dir, id_rule, mask_suffix, class_mask_suffix, split: as in
            :func:`read_instance_folder` (the default: one class, ``"person"``, and a detected suffix).
        transforms, empty: as in :class:`CocoDetection`.
        masks: return the instance masks (``False``: boxes only, for box detectors).
        bad_images: ``"raise"`` on an image without mask, an unreadable or colour mask or a size mismatch, or
            ``"skip"`` such images (one counted warning), and likewise for images unreadable when served.

    The masks are read once, when the dataset is built (RLE-encoded, a few MB for thousands of instances);
    ``coco`` is built in memory from them for the evaluators. Instances whose class is not in ``classes`` are left
    out with one counted warning.

    Item and attributes: as :class:`CocoDetection`, plus ``masks_dir``, ``mask_suffix`` and ``mask_paths``.
    """

    def __init__(self, images_dir, masks_dir, classes: ClassesArg = ("person",), transforms=None,
                 empty: str = "keep", *, masks: bool = True, class_masks_dir=None, id_rule: str = "plain",
                 mask_suffix: str | None = None, class_mask_suffix: str | None = None,
                 split: SplitArg | None = None, bad_images: str = "raise") -> None:
        check_choice("bad_images", bad_images, ("raise", "skip"))
        found = read_instance_folder(images_dir, masks_dir, classes, class_masks_dir=class_masks_dir,
                                     id_rule=id_rule, mask_suffix=mask_suffix, class_mask_suffix=class_mask_suffix,
                                     split=split, bad_images=bad_images)
        if found.problems:
            warn(f"{masks_dir}: skipped {len(found.problems)} image(s) that cannot be read as instances, e.g. "
                 f"{found.problems[0]}")
        if found.left_out:
            counts = ", ".join(f"class id {c}: {n}" for c, n in sorted(found.left_out.items()))
            warn(f"{masks_dir}: left out {sum(found.left_out.values())} instance(s) whose class is not in classes "
                 f"({counts})")
        self.masks_dir, self.mask_suffix = Path(masks_dir), found.mask_suffix
        self._mask_files = {im["id"]: im["mask_file"] for im in found.data["images"]}
        parsed = parse_coco(found.data, str(masks_dir))
        self._init_from(images_dir, parsed, transforms, masks, empty, bad_images, None)

    @property
    def mask_paths(self) -> list[Path]:
        return [self.masks_dir / self._mask_files[r.image_id] for r in self._records]


@dataclass(frozen=True)
class DerivedInstances:
    """What :func:`derive_instance_folder` wrote: ``masks`` holds ``<image stem>.png`` instance masks for the
    images of ``images``; ``counts`` is the number of instances per stem."""

    images: Path
    masks: Path
    counts: dict[str, int]


def connected_instances(mask, value: int = 255, out_png=None, *, min_area: int = 0) -> np.ndarray:
    """Instances as the connected regions of one mask value (cells between membranes, nuclei on background).

    Args:
        mask: a mask file (read with :func:`~resdense.data.read_mask`) or an integer array ``[H, W]``.
        value: the mask value whose regions are instances.
        out_png: also write the ids there (:func:`write_instance_png`).
        min_area: regions of fewer pixels are background.

    Returns:
        ``int32 [H, W]``: 0 background, regions numbered 1..N in raster order of their first pixel
        (4-connectivity: pixels touching only at a corner are separate regions).
    """
    for name, v in (("value", value), ("min_area", min_area)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ConfigError(f"{name} = {v!r} is not an integer >= 0")
    arr = read_mask(mask) if not isinstance(mask, np.ndarray) else mask
    n, labels = cv2.connectedComponents((arr == value).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if min_area > 0:
        keep = np.bincount(labels.reshape(-1), minlength=n) >= min_area
        keep[0] = False
        lut = np.zeros(n, np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = lut[labels]
    if out_png is not None:
        write_instance_png(out_png, labels)
    return labels


def derive_instance_folder(images_dir, masks_dir, out_dir, value: int = 255, *, min_area: int = 0,
                           mask_suffix: str = "") -> DerivedInstances:
    """Write :func:`connected_instances` of every mask of a semantic mask folder into ``out_dir`` as
    ``<image stem>.png``, for :class:`InstanceMaskDataset` (``images_dir``, ``out_dir``).

    A cache: when ``out_dir`` holds a derivation of the same masks (names, sizes, modification times) with the
    same ``value`` and ``min_area``, nothing is rewritten.
    """
    images_dir, masks_dir, out_dir = Path(images_dir), Path(masks_dir), Path(out_dir)
    pairs, lonely, _ = pair_by_stem(images_dir, masks_dir, mask_suffix)
    if lonely:
        raise DataError(f"{lonely[0]}: no mask for this image in {masks_dir} ({len(lonely)} image(s) without mask)")
    if not pairs:
        raise DataError(f"{images_dir}: no image/mask pairs found (masks looked for in {masks_dir})")
    key = {"masks_dir": str(masks_dir.resolve()), "value": value, "min_area": min_area,
           "masks": [[m.name, m.stat().st_size, m.stat().st_mtime_ns] for _, m in pairs]}
    marker = out_dir / ".resdense_derived.json"
    if marker.exists():
        try:
            cached = json.loads(marker.read_text())
        except (OSError, ValueError):
            cached = None
        if isinstance(cached, dict) and cached.get("key") == key:
            return DerivedInstances(images_dir, out_dir, cached["counts"])
    make_dir(out_dir)
    marker.unlink(missing_ok=True)
    counts = {}
    for image, mask in pairs:
        counts[image.stem] = int(connected_instances(mask, value, out_dir / f"{image.stem}.png",
                                                     min_area=min_area).max())
    write_text(marker, json.dumps({"key": key, "counts": counts}), "derivation marker")
    return DerivedInstances(images_dir, out_dir, counts)
