"""Validation and parsing of a COCO instances file, shared by the datasets and ``resdense data check``.

Everything is checked in one pass and collected: the datasets raise the first error (and say how many more there
are), ``data check`` prints them all. Problems that are common in real data and have one obvious repair (a box
poking out of its image, a zero-area box, a polygon of fewer than 3 points) are repaired or dropped and counted, in
the spirit of detectron2's ``load_coco_json``; problems that would make pycocotools score silently wrong (annotation
id 0 or duplicated, see ``COCOeval.evaluateImg`` where ``dtm == 0`` means "unmatched") are refused.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


def load_json(path: str | os.PathLike) -> dict:
    """Read a COCO JSON file; a missing file or invalid JSON is a one-line :class:`DataError`."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is a {type(data).__name__}, expected a COCO object with 'images'")
    return data


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _id_list(ids: list[int], limit: int = 8) -> str:
    s = ", ".join(str(i) for i in ids[:limit])
    return s + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def parse_coco(data: dict, source: str, *, renumber_ann_ids: bool = False, check_segms: bool = True) -> ParsedCoco:
    """Validate a COCO instances dict and split it into per-image training records.

    Args:
        data: the loaded JSON.
        source: file name used in every message.
        renumber_ann_ids: renumber annotation ids 1..N (in file order) instead of refusing id 0 or duplicates.
            Annotation ids are referenced by nothing else in COCO, so this is safe for evaluation.
        check_segms: validate ``segmentation`` fields (polygons of odd length are errors, polygons of fewer than
            3 points are dropped with a warning).
    """
    errors: list[str] = []
    warns: list[str] = []
    src = source
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            errors.append(f"{src}: field '{key}' is {found}, expected a list")
    if errors:
        return ParsedCoco(src, [], [], {}, {}, {}, errors, warns)

    # -- categories ------------------------------------------------------------------------------------------
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        cid = c.get("id") if isinstance(c, dict) else None
        if not _is_int(cid):
            errors.append(f"{src}: categories[{i}]: field 'id' = {cid!r} is not an integer")
            continue
        if cid in cats:
            errors.append(f"{src}: categories[{i}]: duplicate category id {cid}")
            continue
        name = c.get("name")
        cats[cid] = str(name) if name is not None else str(cid)
    used = {a.get("category_id") for a in data["annotations"] if isinstance(a, dict)}
    kept = sorted(cid for cid in cats if not (cats[cid] in BACKGROUND_NAMES and cid not in used))
    skipped = sorted(set(cats) - set(kept))
    if skipped:
        logger.info("%s: category %s treated as background (no annotations), not a class", src,
                    ", ".join(f"{c} {cats[c]!r}" for c in skipped))
    cat_id_to_label = {cid: k + 1 for k, cid in enumerate(kept)}
    label_to_cat_id = {k: cid for cid, k in cat_id_to_label.items()}
    class_names = [cats[cid] for cid in kept]

    # -- images ----------------------------------------------------------------------------------------------
    images: dict[int, dict] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            errors.append(f"{src}: images[{i}] is a {type(im).__name__}, expected an object")
            continue
        iid = im.get("id")
        if not _is_int(iid):
            errors.append(f"{src}: images[{i}]: field 'id' = {iid!r} is not an integer")
            continue
        if iid in images:
            errors.append(f"{src}: images[{i}]: duplicate image id {iid}")
            continue
        bad = False
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            errors.append(f"{src}: image id {iid}: field 'file_name' = {im.get('file_name')!r} is missing or empty")
            bad = True
        for k in ("height", "width"):
            v = im.get(k)
            if not _is_int(v) or v <= 0:
                errors.append(f"{src}: image id {iid}: field '{k}' = {v!r} is not a positive integer")
                bad = True
        if not bad:
            images[iid] = im

    # -- annotation ids --------------------------------------------------------------------------------------
    anns = data["annotations"]
    ids = [a.get("id") if isinstance(a, dict) else None for a in anns]
    new_ids = ids
    if renumber_ann_ids:
        new_ids = list(range(1, len(anns) + 1))
    else:
        bad_type = [i for i, v in enumerate(ids) if not _is_int(v) and isinstance(anns[i], dict)]
        for i in bad_type[:20]:
            errors.append(f"{src}: annotations[{i}]: field 'id' = {ids[i]!r} is not an integer")
        zero = [i for i, v in enumerate(ids) if v == 0 and _is_int(v)]
        if zero:
            errors.append(f"{src}: annotation id 0 (annotations[{_id_list(zero)}]): pycocotools treats id 0 as "
                          "'unmatched' and scores it wrong; renumber ids from 1 (renumber_ann_ids=True)")
        seen: dict[int, int] = {}
        dups: list[int] = []
        for v in ids:
            if _is_int(v):
                seen[v] = seen.get(v, 0) + 1
        dups = sorted(v for v, n in seen.items() if n > 1)
        if dups:
            errors.append(f"{src}: duplicate annotation ids {_id_list(dups)}: pycocotools keeps only one of each "
                          "and scores wrong; make ids unique (renumber_ann_ids=True)")

    # -- annotations -----------------------------------------------------------------------------------------
    per_image: dict[int, list] = {iid: [] for iid in images}
    clean_anns: list[dict] = []
    clipped, emptied, degenerate, short_polys, no_segm, filled_area = [], [], [], [], [], []
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            errors.append(f"{src}: annotations[{i}] is a {type(a).__name__}, expected an object")
            continue
        aid = new_ids[i]
        where = f"{src}: annotation id {ids[i]}"
        iid, cid = a.get("image_id"), a.get("category_id")
        if iid not in images:
            errors.append(f"{where}: field 'image_id' = {iid!r} is not in images")
            continue
        if cid not in cats:
            errors.append(f"{where}: field 'category_id' = {cid!r} is not in categories "
                          f"(ids {_id_list(sorted(cats))})")
            continue
        if cid not in cat_id_to_label:
            errors.append(f"{where}: field 'category_id' = {cid} is the background category {cats[cid]!r}")
            continue
        if "bbox" not in a:
            errors.append(f"{where}: field 'bbox' is missing")
            continue
        bbox = a["bbox"]
        if (not isinstance(bbox, list | tuple) or len(bbox) != 4
                or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
            errors.append(f"{where}: field 'bbox' = {bbox!r} is not 4 finite numbers [x, y, w, h]")
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w < 0 or h < 0:
            errors.append(f"{where}: field 'bbox' = {bbox!r} has a negative width or height "
                          "(COCO boxes are [x, y, width, height])")
            continue
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1):
            errors.append(f"{where}: field 'iscrowd' = {crowd!r} is not 0 or 1")
            continue
        im = images[iid]
        W, H = im["width"], im["height"]
        if w == 0 or h == 0:
            degenerate.append(ids[i])
            continue
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(W)), min(y + h, float(H))
        if x0 >= x1 or y0 >= y1:
            emptied.append(ids[i])
            continue
        segm = a.get("segmentation")
        if check_segms and segm is not None:
            segm, problem = _check_segm(segm, H, W)
            if problem:
                errors.append(f"{where}: field 'segmentation' {problem}")
                continue
            if segm == []:
                short_polys.append(ids[i])
                segm = None
        if segm is None:
            no_segm.append(ids[i])
        if x < -CLIP_TOLERANCE or y < -CLIP_TOLERANCE or x + w > W + CLIP_TOLERANCE or y + h > H + CLIP_TOLERANCE:
            clipped.append(ids[i])
        area = a.get("area")
        if not isinstance(area, int | float) or isinstance(area, bool) or not math.isfinite(area):
            area = (x1 - x0) * (y1 - y0)
            filled_area.append(ids[i])
        clean = dict(a, id=aid, bbox=[x0, y0, x1 - x0, y1 - y0], area=float(area), iscrowd=int(crowd))
        if segm is None:
            clean.pop("segmentation", None)
        else:
            clean["segmentation"] = segm
        clean_anns.append(clean)
        per_image[iid].append((clean, cat_id_to_label[cid]))

    if clipped:
        warns.append(f"{src}: {len(clipped)} box(es) extend outside their image by more than {CLIP_TOLERANCE:g} px "
                     f"and were clipped (annotation ids {_id_list(clipped)})")
    if emptied:
        warns.append(f"{src}: {len(emptied)} box(es) lie entirely outside their image and were dropped "
                     f"(annotation ids {_id_list(emptied)})")
    if degenerate:
        warns.append(f"{src}: {len(degenerate)} degenerate box(es) with zero width or height were dropped "
                     f"(annotation ids {_id_list(degenerate)})")
    if short_polys:
        warns.append(f"{src}: {len(short_polys)} annotation(s) whose polygons all have fewer than 3 points have no "
                     f"mask (annotation ids {_id_list(short_polys)})")
    if filled_area:
        logger.info("%s: %d annotation(s) without 'area' got their box area", src, len(filled_area))

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
    dataset = {k: v for k, v in data.items() if k not in ("annotations", "categories", "images")}
    dataset["images"] = list(images.values())
    dataset["categories"] = [copy.copy(c) for c in data["categories"]
                             if isinstance(c, dict) and c.get("id") in cat_id_to_label]
    dataset["annotations"] = clean_anns
    return ParsedCoco(src, records, class_names, cat_id_to_label, label_to_cat_id, dataset, errors, warns)


def _check_segm(segm, H: int, W: int):
    """Return ``(segmentation, problem)``; polygons of fewer than 3 points are removed (``[]`` if none remain)."""
    if isinstance(segm, list):
        if not segm:
            return [], None
        if all(isinstance(v, int | float) for v in segm):  # a single flat polygon not wrapped in a list
            segm = [segm]
        polys = []
        for j, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                     for v in poly):
                return None, f"polygon {j} is not a list of numbers"
            if len(poly) % 2:
                return None, f"polygon {j} has an odd number of coordinates ({len(poly)}); expected x, y pairs"
            if len(poly) >= 6:
                polys.append(poly)
        return polys, None
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not isinstance(size, list) or len(size) != 2 or counts is None:
            return None, "is an RLE without 'size' [h, w] and 'counts'"
        if list(size) != [H, W]:
            return None, f"RLE size {size} differs from the image size [{H}, {W}]"
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts):
                return None, "RLE 'counts' holds a value that is not a non-negative integer"
            if sum(counts) != H * W:
                return None, f"RLE 'counts' sum to {sum(counts)}, not height x width = {H * W}"
        elif not isinstance(counts, str | bytes):
            return None, f"RLE 'counts' is a {type(counts).__name__}, expected a list or a string"
        return segm, None
    return None, f"is a {type(segm).__name__}, expected polygons (list) or RLE (dict)"


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
            if (c / name).exists():
                return c
    return ann_file.parent
