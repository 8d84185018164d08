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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resdense.coco.io import CocoFileError, gc_paused, loads, read_json, read_text, walk_instances
from resdense.coco.table import (
    AREA_NUMBER,
    AREA_OTHER,
    SEGM_OTHER,
    SEGM_POLYGONS,
    SEGM_RLE_COUNTS,
    SEGM_RLE_STRING,
    AnnotationTable,
    int_array,
)
from resdense.coco.validate import (
    POLYGON_LIMIT,
    CheckedCoco,
    check_ground_truth,
    check_segmentation,
    id_list,
    is_number,
)
from resdense.errors import DataError

from .coco_store import AnnotationStore, Records

logger = logging.getLogger(__name__)

# Category names that annotation tools (labelme, CVAT exports) emit for "no object"; torchvision reserves label 0
# for background, so such a category without annotations is not a class.
BACKGROUND_NAMES = frozenset({"_background_", "__background__", "background"})
# A box may overshoot its image by this many pixels before it is worth a warning (float round-off in exporters).
CLIP_TOLERANCE = 1.0


@dataclass
class ParsedCoco:
    """The validated content of one COCO file: the images and their kept annotations in ``store`` (crowd regions
    kept, boxes clipped), ``records`` viewing them per image, and what was wrong (``errors``) or repaired
    (``warnings``)."""

    source: str
    store: AnnotationStore
    class_names: list[str]
    cat_id_to_label: dict[int, int]
    label_to_cat_id: dict[int, int]
    errors: list[str]
    warnings: list[str]

    @property
    def records(self) -> Records:
        return Records(self.store)


def load_json(path: str | os.PathLike):
    """Read a COCO JSON file; a missing file or invalid JSON is a one-line :class:`DataError`."""
    try:
        return read_json(path)
    except CocoFileError as err:
        raise DataError(str(err)) from None


def parse_coco_file(path: str | os.PathLike, *, renumber_ann_ids: bool = False) -> ParsedCoco:
    """:func:`parse_coco` of a file, with the least memory: its annotations are decoded a chunk at a time straight
    into their table (:func:`~resdense.coco.io.walk_instances`), so that they never all exist as Python objects,
    with the cyclic garbage collector paused (:func:`~resdense.coco.io.gc_paused`). A missing file or invalid JSON is
    a one-line :class:`DataError`."""
    try:
        text = read_text(path)
        with gc_paused():
            table = AnnotationTable(None, segmentations=True)
            walked = walk_instances(text, table.add)
            if walked is None:  # not an object with an annotations array: json answers (or refuses) the whole text
                del table
                data = loads(text, path)
                del text
                return parse_coco(data, str(path), renumber_ann_ids=renumber_ann_ids)
            fields, pieces = walked
            table.fetch = pieces.fetch
            del text, pieces, walked  # the text is held by the table until it is released
            return parse_coco(fields, str(path), renumber_ann_ids=renumber_ann_ids, annotations=table.finish())
    except CocoFileError as err:
        raise DataError(str(err)) from None


def parse_coco(data, source: str, *, renumber_ann_ids: bool = False,
               annotations: AnnotationTable | None = None) -> ParsedCoco:
    """Validate a COCO instances dict and store it per image for training.

    Args:
        data: the loaded JSON.
        source: file name used in every message.
        renumber_ann_ids: renumber annotation ids 1..N (in file order) instead of refusing id 0 or duplicates.
            Annotation ids are referenced by nothing else in COCO, so this is safe for evaluation.
        annotations: the table of ``data``'s annotations, when it is built already (``data["annotations"]`` is
            not read then).

    Polygons of odd length and malformed RLE are errors; polygons of fewer than 3 points are dropped with a warning.
    """
    if annotations is None and isinstance(data, Mapping) and isinstance(data.get("annotations"), list):
        annotations = AnnotationTable.of_list(data["annotations"], segmentations=True)
    checked = check_ground_truth(data, source, renumber_ann_ids=renumber_ann_ids, annotations=annotations)
    errors = [p.message for p in checked.problems]
    if any(p.kind == "structure" for p in checked.problems):
        return ParsedCoco(source, AnnotationStore.empty(), [], {}, {}, errors, [])
    names, cat_id_to_label = _classes(checked)
    label_to_cat_id = {k: cid for cid, k in cat_id_to_label.items()}
    repairs = _Repairs()
    coco = {k: v for k, v in data.items() if k not in ("annotations", "categories", "images")}
    coco["categories"] = [copy.copy(c) for cid, c in checked.categories.items() if cid in cat_id_to_label]
    store = _training_store(checked, names, cat_id_to_label, repairs, errors, coco)
    return ParsedCoco(source, store, [names[c] for c in cat_id_to_label], cat_id_to_label, label_to_cat_id, errors,
                      repairs.warnings(source))


def _classes(checked: CheckedCoco) -> tuple[dict[int, str], dict[int, int]]:
    """Category names by id, and category id -> label 1..K of the categories that are classes (sorted ids)."""
    names = {cid: str(c["name"]) if c.get("name") is not None else str(cid) for cid, c in checked.categories.items()}
    background = {cid for cid in names if names[cid] in BACKGROUND_NAMES}
    if background:  # a background-named category is a class when some annotation (valid or not) uses it
        background -= _used_categories(checked.table)
    kept = sorted(cid for cid in names if cid not in background)
    skipped = sorted(background)
    if skipped:
        logger.info("%s: category %s treated as background (no annotations), not a class", checked.source,
                    ", ".join(f"{c} {names[c]!r}" for c in skipped))
    return names, {cid: k + 1 for k, cid in enumerate(kept)}


def _used_categories(t: AnnotationTable) -> set:
    """The ``category_id`` values of every annotation object."""
    used = set(np.unique(t.category_ids[t.category_plain]).tolist())
    for i in np.flatnonzero(~t.category_plain).tolist():
        a = t.fetch(i)
        if isinstance(a, dict):
            try:
                used.add(a.get("category_id"))
            except TypeError:  # unhashable: it names no category
                pass
    return used


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


def _training_store(checked: CheckedCoco, names: dict, cat_id_to_label: dict, repairs: _Repairs,
                    errors: list[str], coco: dict) -> AnnotationStore:
    """The validated annotations as training targets, all at once: a background category is refused (an error),
    a zero-size box or one outside its image is dropped, a box poking out of its image is clipped, short polygons
    are removed and a missing area is the box's (each counted in ``repairs``); malformed segmentations are errors.
    Errors are appended in file order. ``coco``: the categories and other top-level fields of the store's COCO
    dict."""
    t, passed = checked.table, checked.passed
    images = list(checked.images.values())
    rows = positions(list(checked.images), t.image_ids[passed])
    W = np.asarray([im["width"] for im in images], dtype=np.float64)[rows]
    H = np.asarray([im["height"] for im in images], dtype=np.float64)[rows]
    cat_ids = list(checked.categories)
    labels = np.asarray([cat_id_to_label.get(c, 0) for c in cat_ids], dtype=np.int64)
    labels = labels[positions(cat_ids, t.category_ids[passed])] if len(cat_ids) else np.zeros(len(passed), np.int64)
    refused: dict[int, str] = {}
    for j in np.flatnonzero(labels == 0).tolist():
        i = int(passed[j])
        cid = int(t.category_ids[i]) if t.category_plain[i] else t.fetch(i)["category_id"]
        refused[j] = (f"{checked.source}: annotation id {t.id_of(i)}: field 'category_id' = {cid} is the background "
                      f"category {names[cid]!r}")
    alive = labels > 0
    x, y, w, h = t.bboxes[passed].T
    degenerate = alive & ((w == 0) | (h == 0))
    alive &= ~degenerate
    x0, y0 = np.maximum(x, 0.0), np.maximum(y, 0.0)
    x1, y1 = np.minimum(x + w, W), np.minimum(y + h, H)
    emptied = alive & ((x0 >= x1) | (y0 >= y1))
    alive &= ~emptied
    short = np.zeros(len(passed), bool)
    for j in np.flatnonzero(alive & _segmentation_for_rules(t, passed, H, W)).tolist():
        i = int(passed[j])
        segm, problem = check_segmentation(t.fetch(i).get("segmentation"), int(H[j]), int(W[j]))
        if problem:
            refused[j] = f"{checked.source}: annotation id {t.id_of(i)}: field 'segmentation' {problem}"
            alive[j] = False
        else:
            t.set_segmentation(i, segm)
            short[j] = segm == []
    errors.extend(refused[j] for j in sorted(refused))
    tol = CLIP_TOLERANCE
    clipped = alive & ((x < -tol) | (y < -tol) | (x + w > W + tol) | (y + h > H + tol))
    area_ok, areas = _areas(t, passed)
    filled = alive & ~area_ok
    areas = np.where(area_ok, areas, (x1 - x0) * (y1 - y0))
    for what, mask in (("degenerate", degenerate), ("emptied", emptied), ("short_polys", short & alive),
                       ("clipped", clipped), ("filled_area", filled)):
        getattr(repairs, what).extend(t.id_of(i) for i in passed[mask].tolist())
    t.release()  # the rules are done with the file's objects
    keep = np.flatnonzero(alive)
    return AnnotationStore(
        images, rows[keep], ann_ids=checked.new_ids[keep], labels=labels[keep],
        bboxes=np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[keep], areas=areas[keep],
        iscrowd=t.iscrowd[passed[keep]], segms=t, segm_rows=passed[keep],
        label_to_cat_id={k: c for c, k in cat_id_to_label.items()}, coco=coco)


def positions(keys: list, values: np.ndarray) -> np.ndarray:
    """int64 ``[n]``: where each of ``values`` (int64, each one of ``keys``) is in ``keys`` (distinct integers)."""
    k = int_array(keys)
    if k.dtype == object:
        where = {key: i for i, key in enumerate(keys)}
        return np.fromiter(map(where.__getitem__, values.tolist()), np.int64, len(values))
    order = np.argsort(k, kind="stable")
    return order[np.searchsorted(k[order], values)]


def _segmentation_for_rules(t: AnnotationTable, passed: np.ndarray, H: np.ndarray, W: np.ndarray) -> np.ndarray:
    """bool ``[M]``: the segmentations the per-value rules must see: those no column vouches for, and RLE whose
    size or counts do not fit the image."""
    kind = t.segm_kind[passed]
    size = t.rle_size[passed]
    fits = (size[:, 0] == H) & (size[:, 1] == W)
    counts_fit = ~t.rle_negative[passed] & (t.rle_sum[passed] == H.astype(np.int64) * W.astype(np.int64))
    # a compressed string's counts are only known decoded: the rules decode it (crowd regions: few)
    rle_ok = (kind == SEGM_RLE_COUNTS) & fits & counts_fit
    # polygons with a point outside the window check_segmentation allows (or not finite) get its message
    x0, y0, x1, y1 = t.poly_box[passed].T
    xs, ys = np.minimum(W, POLYGON_LIMIT), np.minimum(H, POLYGON_LIMIT)
    inside = (x0 >= -xs) & (x1 <= 2 * xs) & (y0 >= -ys) & (y1 <= 2 * ys)
    return ((kind == SEGM_OTHER) | (((kind == SEGM_RLE_STRING) | (kind == SEGM_RLE_COUNTS)) & ~rle_ok)
            | ((kind == SEGM_POLYGONS) & ~inside))


def _areas(t: AnnotationTable, passed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ok, area)``: where the ``area`` field is a finite number (``bool`` is not) and its value, float64 ``[M]``."""
    kind, area = t.area_kind[passed], t.areas[passed]
    ok = (kind == AREA_NUMBER) & np.isfinite(area)
    for j in np.flatnonzero(kind == AREA_OTHER).tolist():  # numpy scalars, strings ...
        v = t.fetch(int(passed[j])).get("area")
        if is_number(v):
            ok[j], area[j] = True, float(v)
    return ok, area


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
