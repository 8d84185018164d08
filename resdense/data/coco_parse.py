"""A COCO instances file as training records, shared by the datasets and ``resdense data check``.

The file is validated by the one COCO validation (:func:`resdense.coco.validate.check_ground_truth`, which the
evaluation uses too); everything is checked in one pass and collected: the datasets raise the first error (and say
how many more there are), ``data check`` prints them all. On top of it, what training needs: background categories
are not classes, and problems that are common in real data and have one obvious repair (a box poking out of its
image, a zero-area box, a polygon of fewer than 3 points) are repaired or dropped and counted, in the spirit of
detectron2's ``load_coco_json``.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resdense.coco.io import CocoFileError, read_json
from resdense.coco.validate import (
    CheckedAnnotation,
    CheckedCoco,
    check_ground_truth,
    check_segmentation,
    id_list,
    is_number,
)
from resdense.errors import DataError

logger = logging.getLogger(__name__)

# Category names that annotation tools (labelme, CVAT exports) emit for "no object"; torchvision reserves label 0
# for background, so such a category without annotations is not a class.
BACKGROUND_NAMES = frozenset({"_background_", "__background__", "background"})
# A box may overshoot its image by this many pixels before it is worth a warning (float round-off in exporters).
CLIP_TOLERANCE = 1.0


@dataclass
class ImageRecord:
    """One image and its validated annotations (non-crowd = training targets, crowd kept for semantics)."""

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray  # float32 [N, 4] xyxy, clipped to the image, non-crowd only
    labels: np.ndarray  # int64 [N], 1..K
    areas: np.ndarray  # float32 [N]
    segms: list  # N raw COCO segmentations (polygon lists or RLE dicts), None where absent
    crowd_segms: list = field(default_factory=list)  # (label, segmentation or xyxy box) of crowd annotations


@dataclass
class ParsedCoco:
    """The validated content of one COCO file."""

    source: str
    records: list[ImageRecord]
    class_names: list[str]
    cat_id_to_label: dict[int, int]
    label_to_cat_id: dict[int, int]
    dataset: dict  # cleaned COCO dict for pycocotools (clipped boxes, dropped annotations removed)
    errors: list[str]
    warnings: list[str]


def load_json(path: str | os.PathLike):
    """Read a COCO JSON file; a missing file or invalid JSON is a one-line :class:`DataError`."""
    try:
        return read_json(path)
    except CocoFileError as err:
        raise DataError(str(err)) from None


def parse_coco(data, source: str, *, renumber_ann_ids: bool = False, check_segms: bool = True) -> ParsedCoco:
    """Validate a COCO instances dict and split it into per-image training records.

    Args:
        data: the loaded JSON.
        source: file name used in every message.
        renumber_ann_ids: renumber annotation ids 1..N (in file order) instead of refusing id 0 or duplicates.
            Annotation ids are referenced by nothing else in COCO, so this is safe for evaluation.
        check_segms: validate ``segmentation`` fields (polygons of odd length are errors, polygons of fewer than
            3 points are dropped with a warning).
    """
    checked = check_ground_truth(data, source, renumber_ann_ids=renumber_ann_ids)
    errors = [p.message for p in checked.problems]
    if any(p.kind == "structure" for p in checked.problems):
        return ParsedCoco(source, [], [], {}, {}, {}, errors, [])
    names, cat_id_to_label = _classes(checked)
    repairs = _Repairs()
    per_image: dict[int, list] = {iid: [] for iid in checked.images}
    clean_anns: list[dict] = []
    for ca in checked.annotations:
        clean = _training_annotation(ca, checked, names, cat_id_to_label, check_segms, repairs, errors)
        if clean is not None:
            clean_anns.append(clean)
            per_image[clean["image_id"]].append((clean, cat_id_to_label[clean["category_id"]]))
    dataset = {k: v for k, v in data.items() if k not in ("annotations", "categories", "images")}
    dataset["images"] = list(checked.images.values())
    dataset["categories"] = [copy.copy(c) for cid, c in checked.categories.items() if cid in cat_id_to_label]
    dataset["annotations"] = clean_anns
    return ParsedCoco(source, _records(checked.images, per_image), [names[c] for c in cat_id_to_label],
                      cat_id_to_label, {k: cid for cid, k in cat_id_to_label.items()}, dataset, errors,
                      repairs.warnings(source))


def _classes(checked: CheckedCoco) -> tuple[dict[int, str], dict[int, int]]:
    """Category names by id, and category id -> label 1..K of the categories that are classes (sorted ids)."""
    names = {cid: str(c["name"]) if c.get("name") is not None else str(cid) for cid, c in checked.categories.items()}
    used = {ca.ann["category_id"] for ca in checked.annotations}
    kept = sorted(cid for cid in names if not (names[cid] in BACKGROUND_NAMES and cid not in used))
    skipped = sorted(set(names) - set(kept))
    if skipped:
        logger.info("%s: category %s treated as background (no annotations), not a class", checked.source,
                    ", ".join(f"{c} {names[c]!r}" for c in skipped))
    return names, {cid: k + 1 for k, cid in enumerate(kept)}


@dataclass
class _Repairs:
    """Annotation ids of what was repaired or dropped, for one counted warning each."""

    clipped: list = field(default_factory=list)
    emptied: list = field(default_factory=list)
    degenerate: list = field(default_factory=list)
    short_polys: list = field(default_factory=list)
    filled_area: list = field(default_factory=list)

    def warnings(self, src: str) -> list[str]:
        out = []
        for ids, what in ((self.clipped, f"box(es) extend outside their image by more than {CLIP_TOLERANCE:g} px "
                                         "and were clipped"),
                          (self.emptied, "box(es) lie entirely outside their image and were dropped"),
                          (self.degenerate, "degenerate box(es) with zero width or height were dropped"),
                          (self.short_polys, "annotation(s) whose polygons all have fewer than 3 points have no "
                                             "mask")):
            if ids:
                out.append(f"{src}: {len(ids)} {what} (annotation ids {id_list(ids)})")
        if self.filled_area:
            logger.info("%s: %d annotation(s) without 'area' got their box area", src, len(self.filled_area))
        return out


def _training_annotation(ca: CheckedAnnotation, checked: CheckedCoco, names: dict, cat_id_to_label: dict,
                         check_segms: bool, repairs: _Repairs, errors: list[str]) -> dict | None:
    """A validated annotation as a training target (box clipped to its image, area filled in), or None when it is
    dropped (counted in ``repairs``) or refused (appended to ``errors``)."""
    a, where = ca.ann, f"{checked.source}: annotation id {ca.id}"
    cid = a["category_id"]
    if cid not in cat_id_to_label:
        errors.append(f"{where}: field 'category_id' = {cid} is the background category {names[cid]!r}")
        return None
    im = checked.images[a["image_id"]]
    W, H = im["width"], im["height"]
    x, y, w, h = ca.bbox
    if w == 0 or h == 0:
        repairs.degenerate.append(ca.id)
        return None
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(W)), min(y + h, float(H))
    if x0 >= x1 or y0 >= y1:
        repairs.emptied.append(ca.id)
        return None
    segm = a.get("segmentation")
    if check_segms and segm is not None:
        segm, problem = check_segmentation(segm, H, W)
        if problem:
            errors.append(f"{where}: field 'segmentation' {problem}")
            return None
        if segm == []:
            repairs.short_polys.append(ca.id)
            segm = None
    if x < -CLIP_TOLERANCE or y < -CLIP_TOLERANCE or x + w > W + CLIP_TOLERANCE or y + h > H + CLIP_TOLERANCE:
        repairs.clipped.append(ca.id)
    area = a.get("area")
    if not is_number(area):
        area = (x1 - x0) * (y1 - y0)
        repairs.filled_area.append(ca.id)
    clean = dict(a, id=ca.new_id, bbox=[x0, y0, x1 - x0, y1 - y0], area=float(area),
                 iscrowd=int(a.get("iscrowd", 0)))
    if segm is None:
        clean.pop("segmentation", None)
    else:
        clean["segmentation"] = segm
    return clean


def _records(images: dict[int, dict], per_image: dict[int, list]) -> list[ImageRecord]:
    """One :class:`ImageRecord` per valid image: non-crowd annotations as targets, crowd ones kept apart."""
    records = []
    for iid, im in images.items():
        boxes, labels, areas, segms, crowd = [], [], [], [], []
        for a, label in per_image[iid]:
            x, y, w, h = a["bbox"]
            if a["iscrowd"]:
                crowd.append((label, a.get("segmentation", [x, y, x + w, y + h])))
                continue
            boxes.append((x, y, x + w, y + h))
            labels.append(label)
            areas.append(a["area"])
            segms.append(a.get("segmentation"))
        records.append(ImageRecord(
            image_id=iid, file_name=im["file_name"], height=im["height"], width=im["width"],
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=np.asarray(labels, dtype=np.int64),
            areas=np.asarray(areas, dtype=np.float32), segms=segms, crowd_segms=crowd,
        ))
    return records


def raise_first(parsed: ParsedCoco) -> None:
    """Raise the first error of a parse as one line, saying how many more there are."""
    if parsed.errors:
        more = len(parsed.errors) - 1
        tail = f" (and {more} more problem(s); run `resdense data check {parsed.source}` to list them)" if more else ""
        raise DataError(parsed.errors[0] + tail)


def images_root_for(ann_file: Path, file_names: list[str]) -> Path:
    """Guess the image folder of a COCO file: the first candidate holding its first image, else the file's folder."""
    candidates = [ann_file.parent, ann_file.parent / "images", ann_file.parent.parent / "images"]
    candidates += [ann_file.parent.parent / ann_file.stem.replace("instances_", "")]
    for name in file_names[:1]:
        for c in candidates:
            if os.path.exists(c / name):  # False, not OSError, for a name too long for a file
                return c
    return ann_file.parent
