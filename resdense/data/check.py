"""Validate a dataset on disk and list every problem in one pass (``resdense data check``).

The checks are the datasets' own (same parser, same messages), run without stopping at the first problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resdense.errors import ConfigError, DataError

from .coco_parse import images_root_for, load_json, parse_coco
from .image_io import image_size, read_image, read_mask
from .instance_masks import read_instance_folder
from .masks import pair_by_stem
from .voc import find_voc_image, parse_voc_xml, voc_size

__all__ = ["check_path", "CheckReport", "DataLayout", "find_layouts", "pick_layout", "LAYOUT_KINDS",
           "INSTANCE_FOLDERS"]

LAYOUT_KINDS = ("coco", "voc", "masks", "instances")
# A mask folder holds class ids (semantic) or instance ids; the two look alike, so instance folders are told apart by
# name: images in one of the first folders beside instance masks in one of the second (Penn-Fudan: PNGImages +
# PedMasks). ``instances=True`` reads the semantic names (images/ + masks/) as instance ids too.
INSTANCE_FOLDERS = (("images", "PNGImages", "JPEGImages"), ("instances", "instance_masks", "PedMasks"))


@dataclass
class CheckReport:
    """Outcome of :func:`check_path`.

    Attributes:
        checked: what was checked, e.g. ``["coco: train/instances.json (300 images, 12 annotations)"]``.
        problems: one line each; the data cannot be loaded as it is.
        warnings: one line each; the datasets repair or drop these and warn.
    """

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_path(path, *, images_dir=None, masks_dir=None, num_classes: int | None = None,
               ignore_index: int = 255, decode: bool = False, instances: bool = False) -> CheckReport:
    """Detect what ``path`` holds and validate it.

    ``path`` may be a COCO JSON file, a folder with ``*.json`` (COCO), ``Annotations``/``annotations`` of XML (VOC),
    ``images`` + ``masks`` (mask folder), an instance-mask folder (see :func:`find_layouts`), or a folder of such
    folders (e.g. ``train``/``val``, one level down).

    Args:
        images_dir: image folder of a COCO file (guessed from the file's location when omitted), or of the mask
            folder ``masks_dir``.
        masks_dir: check this mask folder (with ``images_dir``) instead of looking into ``path``.
        num_classes: check mask values against ``0..num_classes-1`` / ``ignore_index`` (else only report them).
        ignore_index: the mask value allowed besides the classes.
        decode: decode every image fully (slower; finds corrupt data past the header).
        instances: read ``images`` + ``masks`` folders as instance ids, not class ids.
    """
    report = CheckReport()
    if masks_dir is not None:
        layout = mask_layout(images_dir, masks_dir)
        _check_masks(layout.images, layout.path, num_classes, ignore_index, decode, report)
        return report
    path = Path(path)
    if not path.exists():
        report.problems.append(f"{path}: no such file or folder")
        return report
    if path.is_file():
        if path.suffix.lower() != ".json":
            report.problems.append(f"{path}: not a COCO .json file (give a folder for masks or VOC)")
        else:
            _check_coco(path, images_dir, decode, report)
        return report
    options = (num_classes, ignore_index, decode, instances)
    found = _check_folder(path, images_dir, *options, report)
    if not found:
        for sub in sorted(p for p in path.iterdir() if p.is_dir()):
            found |= _check_folder(sub, None, *options, report)
    if not found:
        report.problems.append(f"{path}: found no {_WHAT} here or one level down")
    return report


_WHAT = "COCO .json, VOC Annotations/, images/ + masks/ or instance-mask (e.g. PNGImages/ + PedMasks/) folders"


@dataclass(frozen=True)
class DataLayout:
    """One dataset found on disk by :func:`find_layouts`.

    Attributes:
        kind: ``"coco"`` (``path`` is the JSON file), ``"voc"`` (``path`` is the folder of XML files),
            ``"masks"`` or ``"instances"`` (``path`` is the folder of class-id or instance-id masks).
        images: the image folder (``None`` for COCO: its images are found from the file names it lists).
    """

    kind: str
    path: Path
    images: Path | None = None


def find_layouts(folder, instances: bool = False) -> list[DataLayout]:
    """The datasets directly in ``folder``: every ``*.json`` (COCO), an ``Annotations``/``annotations`` folder of
    XML (VOC; images in ``JPEGImages``, ``images`` or ``folder`` itself), ``images`` + ``masks``, ``JPEGImages`` +
    ``SegmentationClass``, or a folder ``X`` beside ``X`` + one of :data:`MASK_FOLDER_SUFFIXES` (``train`` +
    ``trainannot``: mask folders of class ids; with ``instances``, ``images`` + ``masks`` holds instance ids), and
    ``images``, ``PNGImages`` or ``JPEGImages`` + ``instances``, ``instance_masks`` or ``PedMasks`` (instance ids,
    :data:`INSTANCE_FOLDERS`). Used by ``resdense data check``, ``split``, ``convert`` and ``resdense new``; mask
    folders named otherwise are given with ``--images DIR --masks DIR``."""
    folder = Path(folder)
    found = [DataLayout("coco", js) for js in sorted(folder.glob("*.json"))]
    for ann in ("Annotations", "annotations"):
        if (folder / ann).is_dir() and any((folder / ann).glob("*.xml")):
            imgs = next((folder / d for d in ("JPEGImages", "images") if (folder / d).is_dir()), folder)
            found.append(DataLayout("voc", folder / ann, imgs))
            break
    for imgs, masks in (("images", "masks"), ("JPEGImages", "SegmentationClass")):
        if (folder / imgs).is_dir() and (folder / masks).is_dir():
            kind = "instances" if instances and masks == "masks" else "masks"
            found.append(DataLayout(kind, folder / masks, folder / imgs))
    image_dirs, instance_dirs = INSTANCE_FOLDERS
    imgs = next((folder / d for d in image_dirs if (folder / d).is_dir()), None)
    for masks in instance_dirs:
        if imgs is not None and (folder / masks).is_dir():
            found.append(DataLayout("instances", folder / masks, imgs))
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        for suffix in MASK_FOLDER_SUFFIXES:  # SegNet's train/ + trainannot/, test/ + testannot/, ...
            if (folder / f"{sub.name}{suffix}").is_dir():
                found.append(DataLayout("masks", folder / f"{sub.name}{suffix}", sub))
                break
    return found


# A folder X of images beside a folder X<suffix> of its masks (SegNet's CamVid: train/ + trainannot/).
MASK_FOLDER_SUFFIXES = ("annot", "_annot", "_masks", "_labels", "labels")


def mask_layout(images_dir, masks_dir) -> DataLayout:
    """The mask folder a user names (``--images DIR --masks DIR``), both checked to be folders."""
    for name, d in (("images", images_dir), ("masks", masks_dir)):
        if d is None or not Path(d).is_dir():
            raise DataError(f"{d}: no such folder (--{name})" if d is not None else
                            "--images and --masks go together: give both folders")
    return DataLayout("masks", Path(masks_dir), Path(images_dir))


def pick_layout(path, kind: str | None = None, instances: bool = False,
                among: tuple[str, ...] = LAYOUT_KINDS) -> DataLayout:
    """The one dataset at ``path`` (a COCO file, or a folder as :func:`find_layouts` reads it).

    Args:
        kind: choose this kind where ``path`` holds several datasets.
        instances: read ``images/`` + ``masks/`` as instance ids.
        among: the kinds the caller can use; others found beside them are not candidates.

    Raises:
        ConfigError: ``kind`` is not one of ``among``.
        DataError: nothing found, or several datasets and no ``kind`` to choose (the message lists them).
    """
    if kind is not None and kind not in among:
        raise ConfigError(f"kind = {kind!r} is not one of {', '.join(map(repr, among))}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"{path}: not a COCO .json file (give a folder for masks or VOC)")
        found = [DataLayout("coco", path)]
    else:
        found = find_layouts(path, instances or kind == "instances")
    found = [lay for lay in found if lay.kind in among and kind in (None, lay.kind)]
    if not found:
        if kind is not None:
            what, hint = f"{kind} dataset", ""
        elif among == LAYOUT_KINDS:
            what, hint = _WHAT, ""
        else:
            what = f"{' or '.join(among)} dataset"
            hint = ("; a folder of instance ids is found by its name or read with instances=True (--instances)"
                    if "instances" in among and not instances else "")
        raise DataError(f"{path}: found no {what} here{hint}")
    if len(found) > 1:
        listed = ", ".join(f"{lay.kind} {lay.path}" for lay in found)
        raise DataError(f"{path}: holds several datasets ({listed}); give the .json file, or choose with kind")
    return found[0]


def _check_folder(folder: Path, images_dir, num_classes, ignore_index, decode, instances, report) -> bool:
    layouts = find_layouts(folder, instances)
    for layout in layouts:
        if layout.kind == "coco":
            _check_coco(layout.path, images_dir, decode, report)
        elif layout.kind == "voc":
            _check_voc(layout.path, layout.images, decode, report)
        elif layout.kind == "instances":
            _check_instances(layout.images, layout.path, decode, report)
        else:
            _check_masks(layout.images, layout.path, num_classes, ignore_index, decode, report)
    return bool(layouts)


def _check_image(path: Path, expect_hw, decode: bool, report: CheckReport, what: str) -> None:
    try:
        h, w = read_image(path).shape[:2] if decode else image_size(path)
    except DataError as err:
        report.problems.append(str(err))
        return
    if expect_hw is not None and (h, w) != tuple(expect_hw):
        report.problems.append(f"{path}: image is {w}x{h} (width x height) but {what} says "
                               f"{expect_hw[1]}x{expect_hw[0]}")


def _check_coco(js: Path, images_dir, decode: bool, report: CheckReport) -> None:
    try:
        data = load_json(js)
    except DataError as err:
        report.problems.append(str(err))
        return
    parsed = parse_coco(data, str(js))
    report.problems.extend(parsed.errors)
    report.warnings.extend(parsed.warnings)
    if not isinstance(data, dict):  # the top level is not a COCO object: reported by parse_coco
        return
    images = data.get("images") if isinstance(data.get("images"), list) else []
    valid = parsed.store.images  # the entries that passed (the others are among the problems)
    root = Path(images_dir) if images_dir is not None else images_root_for(js, [im["file_name"] for im in valid])
    for im in valid:
        hw = (im["height"], im["width"])
        _check_image(root / im["file_name"], hw, decode, report, f"{js.name} (image id {im['id']})")
    n_ann = len(data["annotations"]) if isinstance(data.get("annotations"), list) else 0
    report.checked.append(f"coco: {js} ({len(images)} images in {root}, {n_ann} annotations, "
                          f"{len(parsed.class_names)} classes)")


def _check_voc(ann_dir: Path, images_dir: Path, decode: bool, report: CheckReport) -> None:
    xmls = sorted(ann_dir.glob("*.xml"))
    n_obj = 0
    for xml in xmls:
        try:
            _, filename, w, h, objs = parse_voc_xml(xml)
        except DataError as err:
            report.problems.append(str(err))
            continue
        n_obj += len(objs)
        image = images_dir / find_voc_image(images_dir, filename, xml)
        size = voc_size(w, h)
        if size is None:
            report.warnings.append(f"{xml}: <size> = {w!r}x{h!r} is missing or invalid; the image's size is used")
        _check_image(image, size[::-1] if size else None, decode, report, xml.name)
        for name, (x0, y0, x1, y1), _ in objs:
            if x1 <= x0 or y1 <= y0:
                report.warnings.append(f"{xml}: object {name!r} has a degenerate box "
                                       f"xmin={x0:g} ymin={y0:g} xmax={x1:g} ymax={y1:g} (dropped)")
            elif size and (x0 < 0 or y0 < 0 or x1 > size[0] + 1 or y1 > size[1] + 1):
                report.warnings.append(f"{xml}: object {name!r} box {x0:g},{y0:g},{x1:g},{y1:g} extends outside "
                                       f"the {w}x{h} image (clipped)")
    report.checked.append(f"voc: {ann_dir} ({len(xmls)} files, {n_obj} objects, images in {images_dir})")


def _check_masks(images_dir: Path, masks_dir: Path, num_classes, ignore_index, decode, report) -> None:
    try:
        pairs, lonely_images, lonely_masks = pair_by_stem(images_dir, masks_dir)
    except DataError as err:
        report.problems.append(str(err))
        return
    for p in lonely_images:
        report.problems.append(f"{p}: no mask for this image in {masks_dir}")
    for p in lonely_masks:
        report.warnings.append(f"{p}: mask without an image in {images_dir}")
    values: set[int] = set()
    for image, mask_path in pairs:
        try:
            mask = read_mask(mask_path)
        except DataError as err:
            report.problems.append(str(err))
            continue
        _check_image(image, mask.shape, decode, report, f"its mask {mask_path.name}")
        vals = np.unique(mask)
        values.update(int(v) for v in vals)
        if num_classes is not None:
            bad = [int(v) for v in vals if not (0 <= v < num_classes) and v != ignore_index]
            if bad:
                report.problems.append(f"{mask_path}: mask value(s) {', '.join(map(str, bad[:8]))} are outside the "
                                       f"classes 0..{num_classes - 1} and not ignore_index={ignore_index}")
    shown = ", ".join(map(str, sorted(values)[:20])) + (" ..." if len(values) > 20 else "")
    report.checked.append(f"masks: {images_dir} + {masks_dir} ({len(pairs)} pairs; mask values {{{shown}}})")


def _check_instances(images_dir: Path, masks_dir: Path, decode: bool, report: CheckReport) -> None:
    try:
        found = read_instance_folder(images_dir, masks_dir, bad_images="skip")
    except DataError as err:
        report.problems.append(str(err))
        return
    report.problems.extend(found.problems)
    per_image = np.bincount([a["image_id"] for a in found.data["annotations"]] or [0])
    if decode:
        for im in found.data["images"]:
            _check_image(images_dir / im["file_name"], (im["height"], im["width"]), True, report,
                         f"its mask {im['mask_file']}")
    report.checked.append(f"instances: {images_dir} + {masks_dir} ({len(found.data['images'])} images, "
                          f"{found.num_instances} instances, at most {int(per_image.max())} in one image; "
                          f"mask suffix {found.mask_suffix!r})")
