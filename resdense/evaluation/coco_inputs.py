"""Loading and validating COCO ground truth and results before any engine sees them.

pycocotools accepts several inputs that silently give a wrong mAP (a NaN box matches everything; annotation id 0
is taken for "unmatched"; duplicate ids drop annotations; a ``bbox`` field on segm results makes areas box areas)
and crashes on others (empty results). Every check here turns one of those into a one-line
:class:`~resdense.errors.EvaluationError` that names what was found. Both functions return fresh containers, so the
engines (which write ``ignore``, ``rle``, ``area`` ... into the dicts they get) never touch the caller's data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from resdense.coco.io import CocoFileError, read_json
from resdense.coco.rle import segm_to_rle
from resdense.coco.validate import Problem, check_ground_truth, check_segmentation, id_list
from resdense.errors import EvaluationError

logger = logging.getLogger(__name__)

_MAX_LISTED = 10


def _listed(values: Iterable[Any]) -> str:
    """``[3, 7, 9]`` or ``[3, 7, ... (25 in all)]``: enough to find the problem without flooding the terminal."""
    values = sorted(set(values), key=lambda v: (str(type(v)), v))
    return f"[{id_list([repr(v) for v in values], _MAX_LISTED)}]"


def _read_json(path: str | os.PathLike, what: str) -> Any:
    try:
        return read_json(path)
    except CocoFileError as err:
        problem = "does not exist" if err.missing else f"is not valid JSON: {err.detail}"
        raise EvaluationError(f"{what} file {str(path)!r} {problem}") from None


def load_ground_truth(gt: Any, iou_type: str, *, renumber_ann_ids: bool = False) -> dict:
    """Return a validated copy of a COCO ground-truth dataset.

    Args:
        gt: a path to a COCO JSON file, a COCO dict, or a ``COCO`` object (pycocotools or faster-coco-eval).
        iou_type: ``"bbox"`` or ``"segm"``; segm needs ``segmentation`` on every annotation and image sizes.
        renumber_ann_ids: renumber annotations 1..N (in file order) instead of refusing id 0 or duplicate ids.

    Returns:
        ``{"images", "annotations", "categories"}`` with new lists and shallow-copied annotation dicts.
    """
    source = "ground truth"
    if isinstance(gt, (str, os.PathLike)):
        source = f"ground truth {str(gt)!r}"
        dataset = _read_json(gt, "ground truth")
    elif isinstance(gt, Mapping):
        dataset = gt
    elif isinstance(getattr(gt, "dataset", None), Mapping):  # pycocotools.coco.COCO or faster_coco_eval COCO
        dataset = gt.dataset
    else:
        raise EvaluationError(
            f"ground truth must be a path, a COCO dict or a COCO object, got {type(gt).__name__}"
        )
    checked = check_ground_truth(
        dataset, source, renumber_ann_ids=renumber_ann_ids,
        # bbox needs no image sizes: pycocotools reads them only to decode segmentations.
        image_fields=("height", "width") if iou_type == "segm" else (),
        annotation_fields=("area", "segmentation") if iou_type == "segm" else ("area",),
    )
    if not checked.ok:
        raise _ground_truth_error(checked.problems, source)
    if renumber_ann_ids:
        logger.debug("renumbered %d ground-truth annotation ids to 1..N", len(checked.annotations))
    annotations = [dict(a.ann, id=a.new_id) for a in checked.annotations]
    if iou_type == "segm":  # as checked: polygons of fewer than 3 points (which pycocotools misreads) removed
        for ann, a in zip(annotations, checked.annotations, strict=True):
            im = checked.images[ann["image_id"]]
            ann["segmentation"] = a.segmentation if a.segmentation != [] else _empty_rle(im["height"], im["width"])
    return {"images": list(dataset["images"]), "annotations": annotations, "categories": list(dataset["categories"])}


def _empty_rle(height: int, width: int) -> dict:
    return {"size": [height, width], "counts": [height * width]}


def _ground_truth_error(problems: list[Problem], source: str) -> EvaluationError:
    """The first problem, with the ids of all problems of its kind where evaluation lists them together."""
    kind = problems[0].kind
    values = [v for p in problems if p.kind == kind for v in p.values]
    if kind in ("id 0", "duplicate ids"):
        problem = "annotation id 0" if kind == "id 0" else f"duplicate annotation ids {_listed(values)}"
        # pycocotools stores the matched annotation id as the match flag, so id 0 reads as "unmatched" (its true
        # positives become false positives), and duplicate ids collapse in the id -> annotation index.
        return EvaluationError(
            f"{source}: {problem}; COCO evaluation needs unique non-zero annotation ids "
            "(pass renumber_ann_ids=True to renumber them 1..N)"
        )
    if kind == "orphan":
        return EvaluationError(f"{source}: annotations refer to image ids absent from 'images': {_listed(values)}")
    if kind == "unknown category":
        return EvaluationError(
            f"{source}: annotations refer to category ids absent from 'categories': {_listed(values)}"
        )
    return EvaluationError(problems[0].message)


def load_results(results: Any, gt: dict, iou_type: str) -> list[dict]:
    """Return validated, normalised copies of COCO results for ``iou_type``.

    Args:
        results: a path to a results JSON file or a sequence of result dicts with ``image_id``, ``category_id``,
            ``score`` and ``bbox`` (xywh) or ``segmentation`` (RLE, compressed or not, or polygons).
        gt: the dataset returned by :func:`load_ground_truth`.
        iou_type: ``"bbox"`` or ``"segm"``.

    Returns:
        New dicts holding only what the engine needs. Segm results are compressed RLE and carry no ``bbox``, so the
        engines take their area from the mask (pycocotools takes a box area whenever ``bbox`` is present).
    """
    source = "results"
    if isinstance(results, (str, os.PathLike)):
        source = f"results {str(results)!r}"
        results = _read_json(results, "results")
    if isinstance(results, (str, bytes, Mapping)) or not isinstance(results, Sequence):
        raise EvaluationError(f"{source} must be a list of result dicts, got {type(results).__name__}")
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    _check_keys(results, ("image_id", "category_id", "score", geometry), f"{source} entry", by_index=True)
    image_ids, cat_ids = _result_ids(results, gt, source)
    scores = _result_scores(results, source)
    if iou_type == "bbox":
        boxes = _check_boxes([r["bbox"] for r in results], range(len(results)), source, "entry")
        return [
            {"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(image_ids, cat_ids, boxes.tolist(), scores.tolist(), strict=True)
        ]
    return _segm_results(results, gt, image_ids, cat_ids, scores, source)


def _result_ids(results: Sequence, gt: dict, source: str) -> tuple[list, list]:
    """The results' image and category ids as plain values; ids that are not hashable or not in ``gt`` raise."""
    # Plain ints: numpy / torch scalars hash differently from the GT's ints (torch) or trip json (numpy).
    image_ids = [_plain(r["image_id"]) for r in results]
    cat_ids = [_plain(r["category_id"]) for r in results]
    for key, ids in (("image_id", image_ids), ("category_id", cat_ids)):
        bad = next((i for i, v in enumerate(ids) if not isinstance(v, Hashable)), None)
        if bad is not None:
            raise EvaluationError(f"{source} entry {bad}: {key!r} = {ids[bad]!r} is not an id")

    unknown_images = set(image_ids) - {img["id"] for img in gt["images"]}
    if unknown_images:
        raise EvaluationError(f"{source}: image ids absent from the ground truth: {_listed(unknown_images)}")
    unknown_cats = set(cat_ids) - {c["id"] for c in gt["categories"]}
    if unknown_cats:
        raise EvaluationError(f"{source}: category ids absent from the ground truth: {_listed(unknown_cats)}")
    return image_ids, cat_ids


def _result_scores(results: Sequence, source: str) -> np.ndarray:
    """The results' scores as float64; a score that is not a finite number raises."""
    try:
        scores = np.asarray([r["score"] for r in results], dtype=np.float64)
    except (TypeError, ValueError):
        raise EvaluationError(f"{source}: every 'score' must be a number") from None
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise EvaluationError(
            f"{source}: {bad.size} non-finite score(s), first at entry {int(bad[0])}: {scores[bad[0]]}"
        )
    return scores


def _segm_results(results: Sequence, gt: dict, image_ids: list, cat_ids: list, scores: np.ndarray,
                  source: str) -> list[dict]:
    """Segm results with compressed-RLE masks at their image's size, without ``bbox``."""
    if any("bbox" in r for r in results):
        logger.debug("segm results: ignoring their 'bbox' field so that areas come from the masks")
    sizes = {img["id"]: [int(img["height"]), int(img["width"])] for img in gt["images"]}
    return [
        {
            "image_id": image_id,
            "category_id": cat_id,
            "segmentation": _compressed_rle(r["segmentation"], sizes[image_id], source, i),
            "score": s,
        }
        for i, (r, image_id, cat_id, s) in enumerate(zip(results, image_ids, cat_ids, scores.tolist(), strict=True))
    ]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _check_keys(items: Sequence[Any], keys: Sequence[str], what: str, *, by_index: bool = False) -> None:
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise EvaluationError(f"{what} {i} is a {type(item).__name__}, not a dict")
        for key in keys:
            if key not in item:
                where = f"{i}" if by_index or "id" not in item else f"with id {item['id']!r}"
                raise EvaluationError(f"{what} {where} has no {key!r} field")


def _check_boxes(boxes: list, names: Iterable[Any], source: str, name_kind: str) -> np.ndarray:
    """Boxes as a float64 [N, 4] xywh array; refuses wrong lengths, NaN/inf and negative sizes."""
    names = list(names)
    if not boxes:
        return np.zeros((0, 4), dtype=np.float64)
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 2 or arr.shape[1] != 4:
        for name, box in zip(names, boxes, strict=True):
            if not isinstance(box, Sequence) or len(box) != 4:
                raise EvaluationError(f"{source} {name_kind} {name!r}: 'bbox' must be [x, y, w, h], got {box!r}")
        raise EvaluationError(f"{source}: every 'bbox' must hold 4 numbers")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        # pycocotools scores a NaN box as a match of every ground truth (NaN comparisons are all False).
        raise EvaluationError(
            f"{source}: {int((~finite).sum())} box(es) with NaN/inf, first at {name_kind} {names[i]!r}: {boxes[i]!r}"
        )
    negative = (arr[:, 2:] < 0).any(axis=1)
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        raise EvaluationError(
            f"{source}: {int(negative.sum())} box(es) with negative width/height (boxes are [x, y, w, h]), "
            f"first at {name_kind} {names[i]!r}: {boxes[i]!r}"
        )
    return arr


def _compressed_rle(seg: Any, size: list[int], source: str, index: int) -> dict:
    """A result mask as compressed RLE of its image's size (pycocotools' loadRes only reads compressed RLE)."""
    h, w = size
    if isinstance(seg, Mapping):
        if "counts" not in seg or "size" not in seg:
            raise EvaluationError(f"{source} entry {index}: RLE 'segmentation' needs 'size' and 'counts'")
        given = seg["size"]
        try:
            same = [int(v) for v in given] == size
        except (TypeError, ValueError, OverflowError):
            same = False
        if not same:
            shown = list(given) if isinstance(given, list | tuple) else repr(given)
            raise EvaluationError(
                f"{source} entry {index}: mask size {shown} != image {size} (height, width); "
                "masks must be pasted into the original image"
            )
        seg = dict(seg, size=size)
    elif not isinstance(seg, list) or not seg:
        raise EvaluationError(
            f"{source} entry {index}: 'segmentation' must be RLE or a list of polygons, got {type(seg).__name__}"
        )
    checked, problem = check_segmentation(seg, h, w)
    if problem is None and checked == []:
        problem = "has no polygon of 3 or more points"
    if problem is not None:
        raise EvaluationError(f"{source} entry {index}: 'segmentation' {problem}")
    return segm_to_rle(checked, h, w)
