"""The validated annotations of a COCO file in a few flat numpy arrays, grouped by image: the datasets' storage.

A train2017 file holds ~860k annotations and ~20M polygon coordinates. As the Python objects ``json`` makes of
them (a dict per annotation, a list per polygon, a float object per coordinate) they take over 1 GB, and a
``DataLoader`` worker that reads one writes its reference count, so copy-on-write copies every page it touches into
every worker. Here they are arrays: a sample is numpy views of them, which write nothing shared.

Layout: image ``i`` owns annotation rows ``start[i]:end[i]``, its training targets (non-crowd) first, up to
``mid[i]``, then its crowd regions, each part in file order. The segmentations stay where the
:class:`~resdense.coco.table.AnnotationTable` put them: row ``a`` of kind ``SEGM_POLYGONS`` owns polygons
``poly_first[a]`` to ``poly_first[a] + poly_count[a] - 1``, polygon ``p`` is ``coords.slice(poly_start[p],
poly_len[p])`` (x, y, x, y, ... as float64, the values JSON gave); ``SEGM_RLE_COUNTS`` owns
``rle_counts.slice(rle_first[a], rle_len[a])``; ``SEGM_RLE_STRING`` keeps its compressed string in
``rle_strings[a]``; ``SEGM_NONE`` (no usable segmentation) stands for its filled box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from resdense.coco.table import (
    SEGM_NONE,
    SEGM_POLYGONS,
    SEGM_RLE_COUNTS,
    SEGM_RLE_STRING,
    AnnotationTable,
    int_array,
)

__all__ = ["AnnotationStore", "ImageRecord", "Records", "StringArray"]


class StringArray(Sequence):
    """Strings held as one string and their offsets: reading one makes a new ``str`` and writes nothing shared
    (a list of 118k names would have every worker copy the pages of those it reads)."""

    def __init__(self, strings: list[str]) -> None:
        self._joined = "".join(strings)
        self._at = np.concatenate([np.zeros(1, np.int64), np.cumsum(np.fromiter(map(len, strings), np.int64,
                                                                                  len(strings)))])

    def __len__(self) -> int:
        return len(self._at) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = index + len(self) if index < 0 else index
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        return self._joined[self._at[i]:self._at[i + 1]]


class AnnotationStore:
    """The images of a COCO file and their kept annotations (see the module docstring).

    Args:
        images: the valid image dicts, in file order (kept as they are, for :meth:`coco_dataset`).
        image_rows: int ``[K]``, each kept annotation's position in ``images``; the other per-annotation arguments
            are aligned with it, in file order.
        ann_ids: int ``[K]`` annotation ids. labels: int ``[K]`` 1..K classes. bboxes: float64 ``[K, 4]`` xywh
            pixels, clipped. areas: float ``[K]``. iscrowd: ``[K]`` 0/1.
        segms, segm_rows: the table holding the segmentations, and each kept annotation's row in it.
        label_to_cat_id: the category id of each label. coco: the categories and the file's other top-level
            fields, for :meth:`coco_dataset`.
    """

    def __init__(self, images: list[dict], image_rows: np.ndarray, *, ann_ids: np.ndarray, labels: np.ndarray,
                 bboxes: np.ndarray, areas: np.ndarray, iscrowd: np.ndarray, segms: AnnotationTable | None,
                 segm_rows: np.ndarray, label_to_cat_id: dict, coco: dict) -> None:
        self.images = images
        self.image_id = int_array([im["id"] for im in images])
        self.height = int_array([im["height"] for im in images])
        self.width = int_array([im["width"] for im in images])
        self.file_names = StringArray([im["file_name"] for im in images])
        self.label_to_cat_id, self.coco = label_to_cat_id, coco
        n_img = len(images)
        image_rows = np.asarray(image_rows, dtype=np.int64)
        iscrowd = np.asarray(iscrowd, dtype=np.int8)
        order = np.lexsort((iscrowd, image_rows))  # stable: file order within each image and part
        self.start = np.concatenate([[0], np.cumsum(np.bincount(image_rows, minlength=n_img))])[:-1].astype(np.int64)
        self.mid = self.start + np.bincount(image_rows[iscrowd == 0], minlength=n_img)
        self.end = self.start + np.bincount(image_rows, minlength=n_img)
        self.file_rank = order  # row a is the file's file_rank[a]-th kept annotation
        self.ann_id = np.asarray(ann_ids)[order]
        self.label = np.asarray(labels, dtype=np.int64)[order]
        self.bbox = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)[order]
        x, y, w, h = self.bbox.T
        self.box = np.stack([x, y, x + w, y + h], axis=1).astype(np.float32)  # training targets: xyxy
        self.area = np.asarray(areas, dtype=np.float64)[order]
        self.area32 = self.area.astype(np.float32)
        self.iscrowd = iscrowd[order]
        rows = np.asarray(segm_rows, dtype=np.int64)[order]
        if segms is None:
            segms = AnnotationTable(None, segmentations=True).finish()
        self.kind = segms.segm_kind[rows]
        self.poly_first, self.poly_count = segms.poly_first[rows], segms.poly_count[rows]
        self.rle_first, self.rle_len = segms.rle_first[rows], segms.rle_len[rows]
        self.coords, self.rle_counts = segms.coords, segms.rle_counts
        self.coords.trim()
        self.rle_counts.trim()
        self.poly_start, self.poly_len = segms.polygons()
        self.rle_strings = {a: segms.rle_strings[r] for a, r in enumerate(rows.tolist())
                            if self.kind[a] == SEGM_RLE_STRING}

    @classmethod
    def empty(cls) -> AnnotationStore:
        none = np.zeros(0, np.int64)
        return cls([], none, ann_ids=none, labels=none, bboxes=np.zeros((0, 4)), areas=np.zeros(0), iscrowd=none,
                   segms=None, segm_rows=none, label_to_cat_id={}, coco={"categories": []})

    def __len__(self) -> int:
        return len(self.images)

    def segm(self, a: int, height: int, width: int):
        """The segmentation of annotation row ``a`` (of an image ``height`` x ``width``) in COCO form: a list of
        float64 polygon arrays (views), an RLE dict, or ``None``."""
        kind = self.kind[a]
        if kind == SEGM_POLYGONS:
            first = self.poly_first[a]
            starts = self.poly_start[first:first + self.poly_count[a]].tolist()
            lengths = self.poly_len[first:first + self.poly_count[a]].tolist()
            return [self.coords.slice(s, n) for s, n in zip(starts, lengths, strict=True)]
        if kind == SEGM_RLE_COUNTS:
            return {"size": [height, width], "counts": self.rle_counts.slice(self.rle_first[a], self.rle_len[a]).tolist()}
        if kind == SEGM_RLE_STRING:
            return {"size": [height, width], "counts": self.rle_strings[a]}
        return None

    def n_targets(self, rows: np.ndarray) -> np.ndarray:
        """int ``[len(rows)]``: training targets (non-crowd annotations) of those images."""
        return self.mid[rows] - self.start[rows]

    def n_box_masks(self, rows: np.ndarray) -> int:
        """Training targets of those images without a usable segmentation (their mask is the filled box)."""
        cum = np.concatenate([[0], np.cumsum(self.kind == SEGM_NONE)])
        return int((cum[self.mid[rows]] - cum[self.start[rows]]).sum())

    def coco_dataset(self, rows: np.ndarray | None = None) -> dict:
        """The validated ground truth of images ``rows`` (default all) as a COCO dict for pycocotools: the image
        dicts as given, the categories that are classes, and every kept annotation (crowd included, boxes clipped)
        in file order with the fields evaluation reads (``id``, ``image_id``, ``category_id``, ``bbox``, ``area``,
        ``iscrowd``, ``segmentation`` where usable); other annotation fields are not kept."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        starts, ends = self.start[rows].tolist(), self.end[rows].tolist()
        anns = np.concatenate([np.zeros(0, np.int64)] + [np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
        owner = np.repeat(rows, self.end[rows] - self.start[rows])
        by_file = np.argsort(self.file_rank[anns], kind="stable")
        ann_ids, out = self.ann_id.tolist(), []
        for a, i in zip(anns[by_file].tolist(), owner[by_file].tolist(), strict=True):
            ann = {"id": ann_ids[a], "image_id": self.images[i]["id"],
                   "category_id": self.label_to_cat_id[int(self.label[a])], "bbox": self.bbox[a].tolist(),
                   "area": float(self.area[a]), "iscrowd": int(self.iscrowd[a])}
            segm = self.segm(a, int(self.height[i]), int(self.width[i]))
            if segm is not None:
                ann["segmentation"] = [p.tolist() for p in segm] if isinstance(segm, list) else segm
            out.append(ann)
        dataset = {k: v for k, v in self.coco.items() if k != "categories"}
        dataset.update(images=[self.images[i] for i in rows.tolist()], annotations=out,
                       categories=[dict(c) for c in self.coco["categories"]])
        return dataset


class ImageRecord:
    """One image of an :class:`AnnotationStore` and its annotations, read on access.

    Attributes: ``image_id``, ``file_name``, ``height``, ``width``; training targets (non-crowd) ``boxes``
    float32 ``[N, 4]`` xyxy clipped to the image, ``labels`` int64 ``[N]`` 1..K, ``areas`` float32 ``[N]``,
    ``segms`` (N segmentations, ``None`` where the filled box stands in); crowd regions ``crowd_boxes`` float64
    ``[C, 4]`` xyxy and ``crowd_segms``. Arrays are views of the store: copy before writing.
    """

    __slots__ = ("store", "image_id", "file_name", "height", "width", "_start", "_mid", "_end")

    def __init__(self, store: AnnotationStore, row: int) -> None:
        self.store = store
        self.image_id = int(store.image_id[row])
        self.file_name = store.file_names[row]
        self.height, self.width = int(store.height[row]), int(store.width[row])
        self._start, self._mid, self._end = int(store.start[row]), int(store.mid[row]), int(store.end[row])

    @property
    def boxes(self) -> np.ndarray:
        return self.store.box[self._start:self._mid]

    @property
    def labels(self) -> np.ndarray:
        return self.store.label[self._start:self._mid]

    @property
    def areas(self) -> np.ndarray:
        return self.store.area32[self._start:self._mid]

    @property
    def segms(self) -> list:
        return [self.store.segm(a, self.height, self.width) for a in range(self._start, self._mid)]

    @property
    def crowd_boxes(self) -> np.ndarray:
        x, y, w, h = self.store.bbox[self._mid:self._end].T
        return np.stack([x, y, x + w, y + h], axis=1)

    @property
    def crowd_segms(self) -> list:
        return [self.store.segm(a, self.height, self.width) for a in range(self._mid, self._end)]


class Records(Sequence):
    """The :class:`ImageRecord` s of images ``rows`` of a store (a sequence; records are made on access)."""

    def __init__(self, store: AnnotationStore, rows: np.ndarray | None = None) -> None:
        self.store = store
        self.rows = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return ImageRecord(self.store, int(self.rows[index]))
