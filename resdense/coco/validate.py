"""The one validation of a COCO ground-truth dict, shared by the datasets and the evaluation.

Everything is checked in one pass and reported as :class:`Problem` s (one line each, starting with the source),
never raised: the datasets raise the first as a ``DataError`` (``resdense data check`` lists them all), the
evaluation raises the first as an ``EvaluationError`` and words the kinds it summarises (orphan ids, id 0,
duplicate ids) its own way. Refused, because pycocotools would score them silently wrong or crash: annotation id
0 (``COCOeval.evaluateImg`` stores the matched GT id as the match flag, so ``0`` reads as "unmatched") and
duplicate annotation ids (collapsed by the id index), unless ``renumber_ann_ids``; annotations of an image or a
category that is not listed; boxes that are not 4 finite numbers or have a negative size; a non-finite area.
What the datasets then repair or drop for training (boxes outside their image, zero-size boxes, short polygons)
is theirs (``resdense.data.coco_parse``).

The rules below are written once, per value, and word every message. The annotations are not walked value by value,
though: their columns (:class:`~resdense.coco.table.AnnotationTable`) are screened whole, with numpy, and only what
the screen cannot vouch for goes through the rules, in file order, so the problems are the same, in the same order,
as a walk would give.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .rle import rle_counts
from .table import AREA_NUMBER, AnnotationTable, int_array

__all__ = ["Problem", "CheckedAnnotation", "CheckedCoco", "check_ground_truth", "check_segmentation", "id_list",
           "is_number", "POLYGON_LIMIT"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Per image field: (valid?, what is wrong otherwise).
_IMAGE_FIELDS = {
    # A control character (a newline...) in a name would split the one-line messages that quote its path.
    "file_name": (lambda v: isinstance(v, str) and bool(v) and not _CONTROL.search(v),
                  "is missing, empty or holds a control character"),
    "height": (lambda v: _is_int(v) and v > 0, "is not a positive integer"),
    "width": (lambda v: _is_int(v) and v > 0, "is not a positive integer"),
}


# pycocotools rasterises polygons at 5x resolution in C ints, with memory in proportion to the edges' lengths: the
# window where polygon points may lie (the image and its size again on each side) is capped at this many pixels,
# so that a point of a file claiming a huge image cannot overflow those ints or exhaust the memory.
POLYGON_LIMIT = 2**20


@dataclass(frozen=True)
class Problem:
    """One thing wrong. ``kind`` groups problems a caller may summarise (``"structure"``, ``"category"``,
    ``"image"``, ``"annotation id"``, ``"id 0"``, ``"duplicate ids"``, ``"annotation"``, ``"orphan"``,
    ``"unknown category"``); ``values`` holds the ids concerned (the orphan's image id, the unknown category id,
    the duplicated annotation ids)."""

    kind: str
    message: str
    values: tuple = ()


@dataclass(frozen=True)
class CheckedAnnotation:
    """An annotation that passed: ``index`` in the file, ``id`` as in the file (for messages), ``new_id`` (its id,
    or 1..N when renumbered), the annotation dict itself (not copied), its ``bbox`` as floats ``(x, y, w, h)`` and,
    when ``segmentation`` was checked, the segmentation :func:`check_segmentation` returned (``[]``: no polygon of
    3 or more points)."""

    index: int
    id: object
    new_id: object
    ann: dict
    bbox: tuple[float, float, float, float]
    segmentation: object = None
    segmentation: object = None


@dataclass
class CheckedCoco:
    """What :func:`check_ground_truth` found: the valid categories and images by id (file order), the annotations
    that passed, and every problem. ``ok`` when there is none.

    The annotations are the columns of ``table`` (:class:`~resdense.coco.table.AnnotationTable`); ``passed`` (int64
    ``[M]``) are the positions of those that passed, whose ``table`` values (image and category ids, boxes, crowd
    flags) are all numbers then (:meth:`~resdense.coco.table.AnnotationTable.set_row`), and ``new_ids`` (``[M]``,
    int64 unless an id is not one) their ids, or 1..N when renumbered. ``annotations`` views them as
    :class:`CheckedAnnotation` s."""

    source: str
    categories: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    table: AnnotationTable | None = None
    passed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    new_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    segmentations: dict = field(default_factory=dict)  # file index -> checked segmentation, where checked

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def annotations(self) -> Sequence[CheckedAnnotation]:
        return _CheckedAnnotations(self)

    def add(self, kind: str, message: str, values: tuple = ()) -> None:
        self.problems.append(Problem(kind, f"{self.source}: {message}", values))


class _CheckedAnnotations(Sequence):
    def __init__(self, checked: CheckedCoco) -> None:
        self.checked = checked

    def __len__(self) -> int:
        return len(self.checked.passed)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        c, t = self.checked, self.checked.table
        i = int(c.passed[k])
        new_id = c.new_ids[k]
        return CheckedAnnotation(i, t.id_of(i), new_id.item() if isinstance(new_id, np.generic) else new_id,
                                 t.fetch(i), tuple(t.bboxes[i].tolist()), c.segmentations.get(i))


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite real number (not a bool; an integer too large for a float is not finite)."""
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def id_list(ids: Sequence, limit: int = 8) -> str:
    """``3, 7, 9`` or ``3, 7, ... (25 in all)``: enough to find the problem without flooding the terminal."""
    s = ", ".join(str(i) for i in ids[:limit])
    return s + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def check_ground_truth(data, source: str, *, renumber_ann_ids: bool = False,
                       image_fields: Sequence[str] = ("file_name", "height", "width"),
                       annotation_fields: Sequence[str] = (), annotations: AnnotationTable | None = None
                       ) -> CheckedCoco:
    """Validate a COCO instances dict (``images``, ``annotations``, ``categories``).

    Args:
        data: the loaded JSON (anything: a top level that is not an object is a problem too).
        source: names the data at the start of every message (a file name, ``"ground truth"``).
        renumber_ann_ids: give annotations the ids 1..N (file order, in ``CheckedAnnotation.new_id``) instead of
            refusing id 0, duplicate or non-integer ids. Nothing else in COCO refers to annotation ids.
        image_fields: image fields that must be valid besides ``id``: ``file_name`` (a non-empty string),
            ``height`` and ``width`` (positive integers).
        annotation_fields: annotation fields required besides ``image_id``, ``category_id`` and ``bbox``:
            ``area`` (a finite number), ``segmentation`` (present, and valid for its image's size as
            :func:`check_segmentation` says: needs the image fields ``height`` and ``width``).
        annotations: the table of the annotations when it is already built (a file decoded by
            :func:`~resdense.coco.io.walk_instances`); ``data["annotations"]`` is not read then.
    """
    out = CheckedCoco(source)
    if not _check_structure(data, annotations is not None, out):
        return out
    _check_categories(data["categories"], out)
    _check_images(data["images"], image_fields, out)
    table = annotations if annotations is not None else AnnotationTable.of_list(data["annotations"],
                                                                                segmentations=False)
    out.table = table
    if not renumber_ann_ids:
        _check_annotation_ids(table, out)
    ok = _screen_annotations(table, annotation_fields, out)
    _check_unscreened(table, ok, annotation_fields, out)
    out.passed = np.flatnonzero(ok)
    out.new_ids = np.arange(1, len(table) + 1)[out.passed] if renumber_ann_ids else _ids(table, out.passed)
    return out


def _check_structure(data, has_table: bool, out: CheckedCoco) -> bool:
    """Whether ``data`` is an object with the lists ``images``, ``annotations`` (unless ``has_table``) and
    ``categories``; each one wrong is added to ``out``."""
    if not isinstance(data, Mapping):
        out.add("structure", f"top level is a {type(data).__name__}, expected a COCO object with 'images'")
        return False
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list) and not (key == "annotations" and has_table):
            found = "missing or not a list" if key not in data else f"a {type(data[key]).__name__}, expected a list"
            out.add("structure", f"field '{key}' is {found}")
    return not out.problems


def _check_unscreened(table: AnnotationTable, ok: np.ndarray, annotation_fields: Sequence[str],
                      out: CheckedCoco) -> None:
    """Run the rules on the annotations the screen could not vouch for (and every segmentation, where asked),
    updating ``ok``, the table's rows and ``out``."""
    check_segm = "segmentation" in annotation_fields
    # What the screen cannot vouch for goes through the rules, in file order; segmentations (only where asked:
    # the evaluation's ground truth) are checked one by one, in the same order.
    for i in (range(len(table)) if check_segm else np.flatnonzero(~ok).tolist()):
        a = table.fetch(i)
        if not isinstance(a, Mapping):
            out.add("annotation", f"annotations[{i}] is a {type(a).__name__}, expected an object")
            continue
        problem = None if ok[i] else _annotation_problem(a, annotation_fields, out)
        if problem is None and check_segm:
            im = out.images[a["image_id"]]
            segm, wrong = check_segmentation(a["segmentation"], im["height"], im["width"])
            if wrong:
                problem = "annotation", f"field 'segmentation' {wrong}", ()
            else:
                out.segmentations[i] = segm
        if problem is None:
            if not ok[i]:
                ok[i] = True
                table.set_row(i, a, [float(v) for v in a["bbox"]])
        else:
            ok[i] = False
            kind, message, values = problem
            out.add(kind, f"annotation id {table.id_of(i)}: {message}", values)


def _ids(t: AnnotationTable, rows: np.ndarray) -> np.ndarray:
    """The ``id`` of annotations ``rows``: int64, or objects where some is not an int64 (``10**20``, ``"x"``)."""
    odd = np.flatnonzero(~t.id_plain[rows])
    if not odd.size:
        return t.ids[rows]
    ids = t.ids[rows].astype(object)
    for j in odd.tolist():
        ids[j] = t.id_of(int(rows[j]))
    return ids


def _members(values: np.ndarray, keys) -> np.ndarray:
    """bool ``[n]``: each int64 value is one of ``keys`` (integers)."""
    keys = int_array(list(keys))
    if keys.dtype == object:  # integers beyond int64: none of the int64 values is one of those
        keys = np.asarray([k for k in keys.tolist() if -2**63 <= k < 2**63], dtype=np.int64)
    return np.isin(values, keys)


def _screen_annotations(t: AnnotationTable, fields: Sequence[str], out: CheckedCoco) -> np.ndarray:
    """bool ``[n]``: where :func:`_annotation_problem` certainly finds nothing (plain values that pass)."""
    box = t.bboxes
    ok = t.is_dict & t.bbox_plain & np.isfinite(box).all(axis=1) & (box[:, 2] >= 0) & (box[:, 3] >= 0)
    ok &= t.image_plain & _members(t.image_ids, out.images)
    ok &= t.category_plain & _members(t.category_ids, out.categories)
    ok &= t.crowd_plain
    if "area" in fields:
        ok &= (t.area_kind == AREA_NUMBER) & np.isfinite(t.areas)
    if "segmentation" in fields:
        ok &= t.has_segmentation
    return ok


def _check_categories(categories: list, out: CheckedCoco) -> None:
    for i, c in enumerate(categories):
        cid = c.get("id") if isinstance(c, Mapping) else None
        if not _is_int(cid):
            out.add("category", f"categories[{i}]: field 'id' = {cid!r} is not an integer")
        elif cid in out.categories:
            out.add("category", f"categories[{i}]: duplicate category id {cid}")
        else:
            out.categories[cid] = c


def _check_images(images: list, fields: Sequence[str], out: CheckedCoco) -> None:
    if _images_plain(images, fields):
        out.images = {im["id"]: im for im in images}
        return
    for i, im in enumerate(images):
        if not isinstance(im, Mapping):
            out.add("image", f"images[{i}] is a {type(im).__name__}, expected an object")
            continue
        iid = im.get("id")
        if not _is_int(iid):
            out.add("image", f"images[{i}]: field 'id' = {iid!r} is not an integer")
            continue
        if iid in out.images:
            out.add("image", f"images[{i}]: duplicate image id {iid}", (iid,))
            continue
        bad = False
        for k in fields:
            valid, wrong = _IMAGE_FIELDS[k]
            if not valid(im.get(k)):
                out.add("image", f"image id {iid}: field '{k}' = {im.get(k)!r} {wrong}")
                bad = True
        if not bad:
            out.images[iid] = im


def _images_plain(images: list, fields: Sequence[str]) -> bool:
    """Whether every image passes in the plain form (dicts, unique int ids, the fields valid): one pass per field
    instead of one per image."""
    if not set(map(type, images)) <= {dict}:
        return False
    ids = [im.get("id") for im in images]
    if not set(map(type, ids)) <= {int} or len(set(ids)) != len(ids):
        return False
    for k in fields:
        values = [im.get(k) for im in images]
        if k == "file_name" and not (set(map(type, values)) <= {str} and all(values)
                                     and not _CONTROL.search("".join(values))):
            return False
        if k in ("height", "width") and not (set(map(type, values)) <= {int} and min(values, default=1) > 0):
            return False
    return True


def _check_annotation_ids(t: AnnotationTable, out: CheckedCoco) -> None:
    ids = np.sort(t.ids)
    if t.id_plain.all() and not (ids == 0).any() and not (ids[1:] == ids[:-1]).any():
        return  # plain ints, unique, no 0: nothing to report
    ids = [t.id_of(i) for i in range(len(t))]
    mapping = t.is_dict.copy()
    for i in np.flatnonzero(~mapping).tolist():
        mapping[i] = isinstance(t.fetch(i), Mapping)
    bad_type = [i for i, v in enumerate(ids) if not _is_int(v) and mapping[i]]
    for i in bad_type[:20]:
        out.add("annotation id", f"annotations[{i}]: field 'id' = {ids[i]!r} is not an integer")
    zero = [i for i, v in enumerate(ids) if _is_int(v) and v == 0]
    if zero:
        out.add("id 0", f"annotation id 0 (annotations[{id_list(zero)}]): pycocotools treats id 0 as 'unmatched' "
                "and scores it wrong; renumber ids from 1 (renumber_ann_ids=True)", (0,))
    seen: dict = {}
    for v in ids:
        if _is_int(v):
            seen[v] = seen.get(v, 0) + 1
    dups = sorted(v for v, n in seen.items() if n > 1)
    if dups:
        out.add("duplicate ids", f"duplicate annotation ids {id_list(dups)}: pycocotools keeps only one of each and "
                "scores wrong; make ids unique (renumber_ann_ids=True)", tuple(dups))


def _is_key(value, mapping: Mapping) -> bool:
    try:
        return value in mapping
    except TypeError:  # unhashable: a list where an id should be
        return False


def _key(value):
    """``value``, or its ``repr`` where it cannot be a key (a list): callers put problem values in sets."""
    return value if getattr(type(value), "__hash__", None) is not None else repr(value)


def _annotation_problem(a: Mapping, fields: Sequence[str], out: CheckedCoco) -> tuple | None:
    """The first problem of one annotation as ``(kind, message, values)``, or None."""
    iid, cid = a.get("image_id"), a.get("category_id")
    for key, v in (("image_id", iid), ("category_id", cid)):
        if not isinstance(v, Hashable):
            return "annotation", f"field '{key}' = {v!r} is not an id", ()
    if not _is_key(iid, out.images):
        return "orphan", f"field 'image_id' = {iid!r} is not in images", (_key(iid),)
    if not _is_key(cid, out.categories):
        known = id_list(sorted(out.categories))
        return "unknown category", f"field 'category_id' = {cid!r} is not in categories (ids {known})", (_key(cid),)
    if "bbox" not in a:
        return "annotation", "field 'bbox' is missing", ()
    bbox = a["bbox"]
    if not isinstance(bbox, list | tuple | np.ndarray) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
        return "annotation", f"field 'bbox' = {bbox!r} is not 4 finite numbers [x, y, w, h]", ()
    if bbox[2] < 0 or bbox[3] < 0:
        return "annotation", (f"field 'bbox' = {bbox!r} has a negative width or height "
                              "(COCO boxes are [x, y, width, height])"), ()
    crowd = a.get("iscrowd", 0)
    if crowd not in (0, 1):
        return "annotation", f"field 'iscrowd' = {crowd!r} is not 0 or 1", ()
    if "area" in fields and not is_number(a.get("area")):
        return "annotation", f"field 'area' = {a.get('area')!r} is not a finite number", ()
    if "segmentation" in fields and "segmentation" not in a:
        return "annotation", "field 'segmentation' is missing", ()
    return None


def check_segmentation(segm, height: int, width: int):
    """Check one annotation's ``segmentation`` against its image size.

    Returns:
        ``(segmentation, problem)``: ``problem`` is None or what is wrong (polygons of odd length or not of
        numbers, a polygon point farther outside the image than the image's own size, or not finite, which
        pycocotools rasterises into a crash or garbage; an RLE without ``size`` / ``counts``, of another size, or
        whose counts, listed or compressed, do not cover the image); polygons of fewer than 3 points are removed
        from the returned segmentation (``[]`` if none remain).
    """
    if isinstance(segm, list):
        if not segm:
            return [], None
        if all(isinstance(v, int | float) for v in segm):  # a single flat polygon not wrapped in a list
            segm = [segm]
        polys = []
        xs, ys = min(width, POLYGON_LIMIT), min(height, POLYGON_LIMIT)
        for j, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                     for v in poly):
                return None, f"polygon {j} is not a list of numbers"
            if len(poly) % 2:
                return None, f"polygon {j} has an odd number of coordinates ({len(poly)}); expected x, y pairs"
            far = next(((x, y) for x, y in zip(poly[::2], poly[1::2], strict=True)
                        if not (-xs <= x <= 2 * xs and -ys <= y <= 2 * ys)), None)
            if far is not None:
                return None, (f"polygon {j} has the point ({far[0]!r}, {far[1]!r}), not finite or farther outside the "
                              f"{width}x{height} (width x height) image than its size")
            if len(poly) >= 6:
                polys.append(poly)
        return polys, None
    if isinstance(segm, dict):
        return _check_rle(segm, height, width)
    return None, f"is a {type(segm).__name__}, expected polygons (list) or RLE (dict)"


def _check_rle(segm: dict, height: int, width: int):
    size, counts = segm.get("size"), segm.get("counts")
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) for v in size) or counts is None:
        return None, "is an RLE without 'size' [h, w] and 'counts'"
    if list(size) != [height, width]:
        return None, f"RLE size {size} differs from the image size [{height}, {width}]"
    if isinstance(counts, str | bytes):
        try:
            counts = rle_counts(segm).tolist()
        except ValueError as err:
            return None, f"RLE 'counts' string does not decode ({err})"
    elif not isinstance(counts, list):
        return None, f"RLE 'counts' is a {type(counts).__name__}, expected a list or a string"
    if not all(_is_int(c) and c >= 0 for c in counts):
        return None, "RLE 'counts' holds a value that is not a non-negative integer"
    if sum(counts) != height * width:
        return None, f"RLE 'counts' sum to {sum(counts)}, not height x width = {height * width}"
    return segm, None
