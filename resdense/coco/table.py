"""A COCO ``annotations`` list as columns: one numpy array per field, built a chunk of annotations at a time.

Where a field holds the plain form JSON decoding gives (an ``int`` id, a ``list`` of 4 ``int`` / ``float`` numbers
for ``bbox``, a list of polygons of numbers, an RLE dict), its value is stored and a mask or a kind says so. Any
other value (a missing field, a string where a number belongs, a ``bool``, a numpy scalar in a dict built in
Python) is not judged here: :mod:`resdense.coco.validate` gets that annotation back with
:meth:`~AnnotationTable.fetch` and applies its per-value rules, which word every message. So a column may only send too much to the
rules, never too little.

Why: a train2017 file has 860k annotations and 20M polygon coordinates. Built a chunk at a time
(:func:`resdense.coco.io.walk_instances` decodes the file's annotations a chunk at a time), they never all exist as
Python objects at once; read with whole-chunk passes (``map``, ``np.fromiter``), they cost no Python call per
value. Polygon coordinates are kept as float64, the value JSON gave, so masks rasterise bit-identically to
pycocotools' (``annToMask`` rounds ``5 * x + 0.5``, where float32 would move a boundary).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Mapping
from itertools import chain, compress, repeat

import numpy as np

__all__ = ["NUMBER_TYPES", "AnnotationTable", "Blocks", "SEGM_NONE", "SEGM_POLYGONS", "SEGM_RLE_COUNTS", "SEGM_RLE_STRING",
           "SEGM_OTHER", "AREA_NUMBER", "AREA_MISSING", "AREA_OTHER", "int_array", "plain_types"]

# The types JSON numbers decode to. ``bool`` (a subclass of int) is not among them: validation refuses it.
NUMBER_TYPES = frozenset({int, float})
_INT = frozenset({int})
_LIST = frozenset({list})
_DICT = frozenset({dict})
_STRINGS = frozenset({str, bytes})
# What a segmentation is. RLE kinds have a plain size [h, w]; whether it is the image's is checked later.
SEGM_NONE, SEGM_POLYGONS, SEGM_RLE_COUNTS, SEGM_RLE_STRING, SEGM_OTHER = 0, 1, 2, 3, 4
# What an area is.
AREA_NUMBER, AREA_MISSING, AREA_OTHER = 0, 1, 2
# (shape, dtype) of the columns of a table without annotations, where not int64 [0].
_EMPTY = {"is_dict": (0, bool), "id_plain": (0, bool), "image_plain": (0, bool), "category_plain": (0, bool),
          "bboxes": ((0, 4), np.float64), "bbox_plain": (0, bool), "iscrowd": (0, np.int8), "crowd_plain": (0, bool),
          "areas": (0, np.float64), "area_kind": (0, np.int8), "has_segmentation": (0, bool),
          "segm_kind": (0, np.int8), "rle_negative": (0, bool), "rle_size": ((0, 2), np.int64),
          "poly_box": ((0, 4), np.float64)}


def plain_types(values, types: frozenset) -> np.ndarray:
    """bool ``[n]``: ``type(value)`` is exactly one of ``types``."""
    return np.fromiter(map(types.__contains__, map(type, values)), bool, len(values))


def int_array(values) -> np.ndarray:
    """``values`` as int64, or as objects where they do not all fit."""
    try:
        return np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return np.asarray(values, dtype=object)


def _ints(values: list) -> tuple[np.ndarray, np.ndarray]:
    """``(x int64 [n], plain bool [n])``: plain where the value is an ``int`` that fits int64."""
    plain = plain_types(values, _INT)
    x = np.zeros(len(values), np.int64)
    try:
        x[plain] = np.fromiter(compress(values, plain), np.int64, int(plain.sum()))
    except OverflowError:
        fits = [type(v) is int and -2**63 <= v < 2**63 for v in values]
        plain = np.asarray(fits, bool)
        x[plain] = np.fromiter(compress(values, plain), np.int64, int(plain.sum()))
    return x, plain


def _numbers(values: list, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x float64 [n, width], plain bool [n])``: plain where the value is a ``list`` of ``width`` plain numbers."""
    n = len(values)
    if (set(map(type, values)) <= _LIST and set(map(len, values)) <= {width}
            and set(map(type, chain.from_iterable(values))) <= NUMBER_TYPES):
        return np.fromiter(chain.from_iterable(values), np.float64, n * width).reshape(n, width), np.ones(n, bool)
    plain = np.fromiter((type(v) is list and len(v) == width and NUMBER_TYPES.issuperset(map(type, v))
                         for v in values), bool, n)
    x = np.zeros((n, width))
    x[plain] = np.fromiter(chain.from_iterable(compress(values, plain)), np.float64, int(plain.sum()) * width
                           ).reshape(-1, width)
    return x, plain


def _polygon_lists(values: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``list`` values: ``(ok [n], polygons per ok value, length of each of their polygons)``. ``ok`` where the
    value is a non-empty list of polygons, each a ``list`` of an even number (at least 6) of plain numbers: what
    :func:`resdense.coco.validate.check_segmentation` passes unchanged."""
    n = len(values)
    counts = np.fromiter(map(len, values), np.int64, n)
    ok = counts > 0
    if not set(map(type, chain.from_iterable(values))) <= _LIST:
        ok &= np.fromiter((all(type(p) is list for p in v) for v in values), bool, n)
    polys = list(chain.from_iterable(compress(values, ok)))
    lengths = np.fromiter(map(len, polys), np.int64, len(polys))
    bad = (lengths % 2 == 1) | (lengths < 6)
    if not set(map(type, chain.from_iterable(polys))) <= NUMBER_TYPES:
        bad |= ~np.fromiter(map(NUMBER_TYPES.issuperset, map(map, repeat(type), polys)), bool, len(polys))
    if bad.any():
        ok[np.flatnonzero(ok)[np.repeat(np.arange(int(ok.sum())), counts[ok])[bad]]] = False
        return _polygon_lists_of(values, ok)
    return ok, counts[ok], lengths


def _polygon_boxes(coords: np.ndarray, lengths: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float64 ``[rows, 4]``: ``(min x, min y, max x, max y)`` over the polygons of each row (``counts`` polygons
    of ``lengths`` coordinates each, x, y, x, y ...; NaN where a coordinate is NaN)."""
    xs, ys = coords[0::2], coords[1::2]
    points = np.cumsum(lengths // 2) - lengths // 2  # each polygon's first point
    polys = np.cumsum(counts) - counts  # each row's first polygon
    return np.stack([reduce.reduceat(reduce.reduceat(v, points), polys)
                     for v, reduce in ((xs, np.minimum), (ys, np.minimum), (xs, np.maximum), (ys, np.maximum))], axis=1)


def _polygon_lists_of(values: list, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kept = list(compress(values, ok))
    lengths = np.fromiter(map(len, chain.from_iterable(kept)), np.int64)
    return ok, np.fromiter(map(len, kept), np.int64, len(kept)), lengths


class Blocks:
    """An append-only 1-D array held as blocks (of 64k elements, then 4 times more each, up to ``block``), so that
    nothing is copied as it grows, and little is reserved that is not written; a run appended in one call is one
    slice of one block (:meth:`slice`)."""

    def __init__(self, dtype, block: int = 1 << 22) -> None:
        self.dtype, self.block = dtype, block
        self.blocks: list[np.ndarray] = []
        self.bases: list[int] = []  # the position of each block's first element
        self._used = 0

    def extend(self, values: np.ndarray) -> int:
        """Append ``values``; returns their position."""
        n = len(values)
        if not self.blocks or self._used + n > len(self.blocks[-1]):
            self.bases.append(self.bases[-1] + len(self.blocks[-1]) if self.blocks else 0)
            self.blocks.append(np.empty(max(min(self.block, 1 << (16 + 2 * len(self.blocks))), n), self.dtype))
            self._used = 0
        self.blocks[-1][self._used:self._used + n] = values
        self._used += n
        return self.bases[-1] + self._used - n

    def trim(self) -> None:
        """Drop the unwritten tail of the last block from view (pickles hold what was written, no more)."""
        if self.blocks:
            self.blocks[-1] = self.blocks[-1][:self._used]

    def slice(self, start: int, n: int) -> np.ndarray:
        """The ``n`` elements appended at ``start`` (a view)."""
        b = bisect.bisect_right(self.bases, start) - 1
        return self.blocks[b][start - self.bases[b]:start - self.bases[b] + n]


class AnnotationTable:
    """The columns of one ``annotations`` list (see the module docstring).

    Args:
        fetch: ``fetch(i)`` gives annotation ``i`` back as the object the list holds (the rules read it).
        segmentations: also store segmentations (training needs them; evaluation only needs to know there is one).

    Per annotation (``[n]`` arrays): ``is_dict``; ``ids``, ``image_ids``, ``category_ids`` (int64) with masks
    ``id_plain``, ``image_plain``, ``category_plain``; ``bboxes`` (float64 ``[n, 4]``) with ``bbox_plain`` (4 plain
    numbers: finite or not, negative or not); ``iscrowd`` (0/1) with ``crowd_plain`` (absent, or a plain int 0 or
    1); ``areas`` with ``area_kind`` (``AREA_NUMBER``: a plain number, finite or not; ``AREA_MISSING``: absent or
    ``null``; ``AREA_OTHER``); ``has_segmentation``. With ``segmentations``: ``segm_kind`` (``SEGM_*``); polygons
    ``poly_first`` / ``poly_count`` and their extent ``poly_box`` (float64 ``[n, 4]``, min x, min y, max x, max y;
    NaN where a coordinate is): polygon ``p`` is ``coords.slice(poly_start[p], poly_len[p])`` (x, y, x, y, ...);
    RLE counts ``rle_counts.slice(rle_first[i], rle_len[i])``, with ``rle_sum``, ``rle_negative`` and the declared
    ``rle_size`` (int64 ``[n, 2]``); compressed RLE strings in ``rle_strings[i]``. ``coords`` and ``rle_counts`` are
    :class:`Blocks`.
    """

    _COLUMNS = ("is_dict", "ids", "id_plain", "image_ids", "image_plain", "category_ids", "category_plain", "bboxes",
                "bbox_plain", "iscrowd", "crowd_plain", "areas", "area_kind", "has_segmentation")
    _SEGM_COLUMNS = ("segm_kind", "poly_first", "poly_count", "poly_box", "rle_first", "rle_len", "rle_sum",
                     "rle_negative", "rle_size")

    def __init__(self, fetch: Callable[[int], object] | None, *, segmentations: bool) -> None:
        self.fetch = fetch
        self.segmentations = segmentations
        self.n = 0
        self._parts: dict[str, list] = {k: [] for k in self._COLUMNS + self._SEGM_COLUMNS}
        self.coords, self.rle_counts = Blocks(np.float64), Blocks(np.int64)
        self._poly_start: list[np.ndarray] = []
        self._poly_len: list[np.ndarray] = []
        self._n_polys = 0
        self.rle_strings: dict[int, str | bytes] = {}

    @classmethod
    def of_list(cls, annotations: list, *, segmentations: bool, chunk: int = 4096) -> AnnotationTable:
        """The table of an annotations list held in memory (``fetch`` indexes it)."""
        table = cls(annotations.__getitem__, segmentations=segmentations)
        for lo in range(0, len(annotations), chunk):
            table.add(annotations[lo:lo + chunk])
        return table.finish()

    def __len__(self) -> int:
        return self.n

    # ---- building --------------------------------------------------------------------------------------------
    def add(self, chunk: list) -> None:
        """Append the columns of the next ``chunk`` of annotations."""
        k = len(chunk)
        if set(map(type, chunk)) <= _DICT:
            rows, is_dict = chunk, np.ones(k, bool)
        else:
            is_dict = plain_types(chunk, _DICT)
            rows = [a if d else {} for a, d in zip(chunk, is_dict.tolist(), strict=True)]

        def get(key: str, default=None) -> list:
            return list(map(dict.get, rows, repeat(key), repeat(default)))

        part = self._parts
        part["is_dict"].append(is_dict)
        for key, values, plain in (("id", "ids", "id_plain"), ("image_id", "image_ids", "image_plain"),
                                   ("category_id", "category_ids", "category_plain")):
            x, ok = _ints(get(key))
            part[values].append(x)
            part[plain].append(ok)
        x, plain = _numbers(get("bbox"), 4)
        part["bboxes"].append(x)
        part["bbox_plain"].append(plain)
        crowd = get("iscrowd", 0)
        part["iscrowd"].append(np.fromiter(map(operator.eq, crowd, repeat(1)), bool, k).astype(np.int8))
        part["crowd_plain"].append(plain_types(crowd, _INT) & np.fromiter(map((0, 1).__contains__, crowd), bool, k))
        area = get("area")
        number = plain_types(area, NUMBER_TYPES)
        x = np.zeros(k)
        x[number] = np.fromiter(compress(area, number), np.float64, int(number.sum()))
        missing = np.fromiter(map(operator.is_, area, repeat(None)), bool, k)
        part["areas"].append(x)
        part["area_kind"].append(np.where(number, AREA_NUMBER, np.where(missing, AREA_MISSING, AREA_OTHER)
                                          ).astype(np.int8))
        part["has_segmentation"].append(np.fromiter(map(dict.__contains__, rows, repeat("segmentation")), bool, k))
        if self.segmentations:
            self._add_segmentations(get("segmentation"))
        self.n += k

    def _add_segmentations(self, values: list) -> None:
        k = len(values)
        kind = np.full(k, SEGM_OTHER, np.int8)
        kind[np.fromiter(map(operator.is_, values, repeat(None)), bool, k)] = SEGM_NONE
        poly_first, poly_count = np.zeros(k, np.int64), np.zeros(k, np.int64)
        poly_box = np.zeros((k, 4))
        rle_first, rle_len, rle_sum = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64)
        rle_negative, rle_size = np.zeros(k, bool), np.zeros((k, 2), np.int64)
        rows = np.flatnonzero(plain_types(values, _LIST))
        if rows.size:
            lists = list(map(values.__getitem__, rows.tolist()))
            ok, counts, lengths = _polygon_lists(lists)
            if ok.any():
                ok_rows = rows[ok]
                kind[ok_rows] = SEGM_POLYGONS
                poly_count[ok_rows] = counts
                poly_first[ok_rows] = self._n_polys + np.cumsum(counts) - counts
                coords = chain.from_iterable(chain.from_iterable(compress(lists, ok)))
                coords = np.fromiter(coords, np.float64, int(lengths.sum()))
                poly_box[ok_rows] = _polygon_boxes(coords, lengths, counts)
                self._add_polygons(coords, lengths)
        for j in np.flatnonzero(plain_types(values, _DICT)).tolist():
            size, counts = values[j].get("size"), values[j].get("counts")
            if not (type(size) is list and len(size) == 2 and type(size[0]) is int and type(size[1]) is int):
                continue
            if type(counts) in _STRINGS:
                kind[j] = SEGM_RLE_STRING
                self.rle_strings[self.n + j] = counts
            elif type(counts) is list and set(map(type, counts)) <= _INT:
                c = np.fromiter(counts, np.int64, len(counts))
                kind[j] = SEGM_RLE_COUNTS
                rle_first[j], rle_len[j] = self.rle_counts.extend(c), len(c)
                rle_sum[j], rle_negative[j] = int(c.sum()), bool((c < 0).any())
            else:
                continue
            rle_size[j] = size
        part = self._parts
        for name, x in (("segm_kind", kind), ("poly_first", poly_first), ("poly_count", poly_count), ("poly_box", poly_box),
                        ("rle_first", rle_first), ("rle_len", rle_len), ("rle_sum", rle_sum),
                        ("rle_negative", rle_negative), ("rle_size", rle_size)):
            part[name].append(x)

    def _add_polygons(self, coords: np.ndarray, lengths: np.ndarray) -> None:
        start = self.coords.extend(coords)
        self._poly_start.append(start + np.cumsum(lengths) - lengths)
        self._poly_len.append(lengths)
        self._n_polys += len(lengths)

    def finish(self) -> AnnotationTable:
        """Join the chunks' columns (one column at a time, so that the parts and the whole coexist for one only)."""
        for name in self._COLUMNS + (self._SEGM_COLUMNS if self.segmentations else ()):
            parts = self._parts.pop(name)
            setattr(self, name, np.concatenate(parts) if parts else np.zeros(*_EMPTY.get(name, (0, np.int64))))
            del parts
        return self

    # ---- reading ---------------------------------------------------------------------------------------------
    def polygons(self) -> tuple[np.ndarray, np.ndarray]:
        """``(poly_start, poly_len)``, int64 ``[P]``: where each polygon's coordinates are in ``coords``."""
        if len(self._poly_start) > 1:
            self._poly_start, self._poly_len = [np.concatenate(self._poly_start)], [np.concatenate(self._poly_len)]
        if not self._poly_start:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return self._poly_start[0], self._poly_len[0]

    def release(self) -> None:
        """Let go of what ``fetch`` holds (the whole decoded text of a streamed file): rows can no longer be
        fetched."""
        self.fetch = None

    def id_of(self, i: int):
        """Annotation ``i``'s ``id`` as given (``None`` when it is not an object)."""
        if self.id_plain[i]:
            return int(self.ids[i])
        a = self.fetch(i)
        return a.get("id") if isinstance(a, Mapping) else None

    def set_row(self, i: int, a: Mapping, bbox: list[float]) -> None:
        """Store the values of annotation ``i`` that the rules passed though they are not plain (a numpy id, an
        ``image_id`` of 1.0 ...), as the numbers they compare equal to."""
        for key, values, plain in (("id", self.ids, self.id_plain), ("image_id", self.image_ids, self.image_plain),
                                   ("category_id", self.category_ids, self.category_plain)):
            if not plain[i]:
                try:
                    values[i], plain[i] = int(a.get(key)), True
                except (TypeError, ValueError, OverflowError):  # an id that is not a number: renumbered
                    pass
        self.bboxes[i], self.bbox_plain[i] = bbox, True
        self.iscrowd[i], self.crowd_plain[i] = int(a.get("iscrowd", 0)), True

    def set_segmentation(self, i: int, segm) -> None:
        """Store a segmentation that :func:`~resdense.coco.validate.check_segmentation` passed (or ``None``) as
        annotation ``i``'s."""
        if segm is None or segm == []:
            self.segm_kind[i] = SEGM_NONE
        elif isinstance(segm, list):
            lengths = np.fromiter(map(len, segm), np.int64, len(segm))
            self.poly_first[i], self.poly_count[i] = self._n_polys, len(segm)
            self._add_polygons(np.fromiter(chain.from_iterable(segm), np.float64, int(lengths.sum())), lengths)
            self.segm_kind[i] = SEGM_POLYGONS
        elif isinstance(segm["counts"], list):
            c = np.asarray(segm["counts"], dtype=np.int64)
            self.rle_first[i], self.rle_len[i] = self.rle_counts.extend(c), len(c)
            self.segm_kind[i] = SEGM_RLE_COUNTS
        else:
            self.rle_strings[i] = segm["counts"]
            self.segm_kind[i] = SEGM_RLE_STRING
