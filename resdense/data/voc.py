"""Pascal VOC XML annotations, converted once to COCO in memory and served like :class:`CocoDetection`."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from resdense.errors import ConfigError, DataError

from .coco import CocoDetection
from .coco_parse import parse_coco
from .image_io import IMAGE_EXTENSIONS, image_size
from .split_names import SplitArg

__all__ = ["VocDetection", "voc_to_coco", "parse_voc_xml", "find_voc_image", "voc_size"]


def _text(node, tag: str, xml: Path, required: bool = True) -> str | None:
    el = node.find(tag)
    if el is None or el.text is None or not el.text.strip():
        if required:
            raise DataError(f"{xml}: field <{tag}> is missing or empty")
        return None
    return el.text.strip()


def _number(node, tag: str, xml: Path) -> float:
    s = _text(node, tag, xml)
    try:
        return float(s)
    except ValueError:
        raise DataError(f"{xml}: field <{tag}> = {s!r} is not a number") from None


def voc_size(w: str | None, h: str | None) -> tuple[int, int] | None:
    """``(width, height)`` of a ``<size>`` whose fields are positive whole numbers, else None (then the image's
    own size is used). ``isdecimal``, not ``isdigit``: ``int()`` refuses digits such as ``²``."""
    if w and h and w.isdecimal() and h.isdecimal() and int(w) > 0 and int(h) > 0:
        return int(w), int(h)
    return None


def find_voc_image(images_dir: Path, filename: str | None, xml: Path) -> str:
    """The image file of an annotation: its ``<filename>`` when that exists, else the XML's stem with an image
    extension, else the ``<filename>`` as written (the dataset then reports it missing)."""
    if filename and os.path.exists(images_dir / filename):  # False, not OSError, for a name too long for a file
        return filename
    for ext in IMAGE_EXTENSIONS:  # <filename> is often stale (renamed files); the XML stem is the usual key
        if (images_dir / (xml.stem + ext)).exists():
            return xml.stem + ext
    return filename or xml.stem + ".jpg"


def parse_voc_xml(xml: Path) -> tuple:
    """One VOC file -> ``(xml, filename, width, height, [(name, [xmin, ymin, xmax, ymax], difficult), ...])``."""
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, LookupError) as err:  # LookupError: an encoding declaration Python does not know
        raise DataError(f"{xml}: not valid XML ({err})") from None
    objs = []
    for obj in root.findall("object"):
        name = _text(obj, "name", xml)
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{xml}: object {name!r} has no <bndbox>")
        coords = [_number(box, k, xml) for k in ("xmin", "ymin", "xmax", "ymax")]
        difficult = _text(obj, "difficult", xml, required=False) in ("1", "true")
        objs.append((name, coords, difficult))
    size = root.find("size")
    w = h = None
    if size is not None:
        w, h = _text(size, "width", xml, False), _text(size, "height", xml, False)
    return xml, _text(root, "filename", xml, required=False), w, h, objs


def voc_to_coco(images_dir, annotations_dir, classes: Sequence[str] | None = None,
                use_difficult: bool = False) -> dict:
    """Read every ``*.xml`` of ``annotations_dir`` into a COCO dict.

    VOC pixel coordinates are 1-based and inclusive; they become 0-based xyxy edges by subtracting 1 from
    ``xmin``/``ymin`` (as detectron2's ``load_voc_instances`` does). ``difficult`` objects become ``iscrowd=1``
    (ignored by COCO evaluation, not training targets) unless ``use_difficult``. Image ids are 1..N in file-name
    order; category ids are 1..K in ``classes`` order (sorted names found when ``classes`` is None).
    """
    images_dir, annotations_dir = Path(images_dir), Path(annotations_dir)
    if not annotations_dir.is_dir():
        raise DataError(f"{annotations_dir}: annotation folder not found")
    xmls = sorted(annotations_dir.glob("*.xml"))
    if not xmls:
        raise DataError(f"{annotations_dir}: no .xml annotation files")
    parsed = [parse_voc_xml(xml) for xml in xmls]
    names = sorted({o[0] for *_, objs in parsed for o in objs}) if classes is None else [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise ConfigError(f"classes = {list(classes)!r} has duplicates")
    cat = {n: i + 1 for i, n in enumerate(names)}
    images, anns = [], []
    for image_id, (xml, filename, w, h, objs) in enumerate(parsed, start=1):
        file_name = find_voc_image(images_dir, filename, xml)
        size = voc_size(w, h)
        if size is None:
            hh, ww = image_size(images_dir / file_name)  # VOC exports with <size> 0 exist; trust the file
            size = ww, hh
        images.append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1], "xml": str(xml)})
        for name, (x0, y0, x1, y1), difficult in objs:
            if name not in cat:
                raise DataError(f"{xml}: object class {name!r} is not in classes {names}")
            x0, y0 = x0 - 1.0, y0 - 1.0
            crowd = int(difficult and not use_difficult)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat[name], "iscrowd": crowd,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": max(x1 - x0, 0.0) * max(y1 - y0, 0.0)})
    return {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": n} for n, i in cat.items()]}


class VocDetection(CocoDetection):
    """Pascal VOC XML folder -> ``(image, target)`` pairs, exactly as :class:`CocoDetection` serves them.

    Args:
        images_dir: folder of the images.
        annotations_dir: folder of ``*.xml`` files (one per image).
        classes: class names in label order (label k = ``classes[k-1]``); ``None``: the sorted names found.
        transforms, empty, bad_images: as in :class:`CocoDetection`.
        split: serve only the images this split names: a text file of names (image file name or stem, which is
            the VOC id, one per line, ``#`` comments: ``ImageSets/Main/train.txt`` works as it is) or a list of
            them. Image ids stay those of the whole folder (1..N in XML file order), so a split's ids match the
            full set's. ``None``: every image.
        use_difficult: train on ``difficult`` objects too (otherwise they are ignored regions, like COCO crowd).

    ``coco`` is built in memory from the XML, so the same evaluators work. The target has no ``masks``.
    """

    def __init__(self, images_dir, annotations_dir, classes: Sequence[str] | None = None, transforms=None,
                 empty: str = "keep", *, use_difficult: bool = False, split: SplitArg | None = None,
                 bad_images: str = "raise") -> None:
        self.annotations_dir = Path(annotations_dir)
        data = voc_to_coco(images_dir, annotations_dir, classes, use_difficult)
        parsed = parse_coco(data, str(annotations_dir))
        self._init_from(images_dir, parsed, transforms, False, empty, bad_images, split)
