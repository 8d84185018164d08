"""COCO segmentations (polygons, RLE) <-> compressed RLE and binary masks, through ``pycocotools.mask``.

Shared by the datasets (masks of training targets), the evaluation (result masks as compressed RLE) and the tiled
instance prediction (masks of small crops placed in a large image, merged as RLE, never as full-image arrays).
"""

from __future__ import annotations

import warnings

import numpy as np
from pycocotools import mask as mask_utils

from resdense.errors import DataError

__all__ = ["segm_to_rle", "decode_segms", "rle_counts", "encode_masks", "encode_crop", "union_rle",
           "json_rle"]


def segm_to_rle(segm, height: int, width: int, box=None) -> dict:
    """One annotation's segmentation as a compressed RLE.

    Args:
        segm: list of polygons ``[[x0, y0, x1, y1, ...], ...]``, an uncompressed RLE (``counts`` list) or a
            compressed RLE; ``None`` uses the filled ``box`` (xyxy) instead.
    """
    if segm is None:
        return _box_rle(box, height, width)
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    counts = segm["counts"]
    return {"size": segm["size"], "counts": counts.encode() if isinstance(counts, str) else counts}


def _box_rle(box, height: int, width: int) -> dict:
    m = np.zeros((height, width), dtype=np.uint8, order="F")
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1
    return mask_utils.encode(m)


def decode_segms(segms: list, height: int, width: int, boxes=None) -> np.ndarray:
    """Decode N segmentations to ``uint8 [N, H, W]`` (0/1, a strided view); a ``None`` entry becomes its box."""
    if not segms:
        return np.zeros((0, height, width), dtype=np.uint8)
    try:
        rles = [segm_to_rle(s, height, width, None if boxes is None else boxes[i]) for i, s in enumerate(segms)]
        with warnings.catch_warnings():
            # pycocotools' Cython RleObjs.__array__ predates numpy 2's copy keyword; harmless noise.
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = mask_utils.decode(rles)
    except (ValueError, TypeError, KeyError) as err:  # a compressed RLE string that does not decode
        raise DataError(f"segmentation does not decode ({type(err).__name__}: {err})") from None
    # decode() returns [H, W, N] in Fortran order: the [N, H, W] view has column-major planes. It is returned as
    # is (``packing.pack_masks`` packs it in that layout); callers needing C order copy it once.
    return decoded.transpose(2, 0, 1)


def rle_counts(rle: dict) -> np.ndarray:
    """Run lengths of a compressed COCO RLE (alternating 0-runs and 1-runs, column-major), as ``int64 [R]``.

    The inverse of pycocotools' ``rleToString`` (maskApi.c): 5 bits per character with a continuation bit, a sign
    bit on the last character, and counts from the third on stored as differences to the count two before.
    """
    s = rle["counts"]
    if isinstance(s, str):
        s = s.encode()
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise DataError("the string ends inside a count")
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if not -(2**63) <= x < 2**63:
            raise DataError("a count is out of range")
        counts.append(x)
    return np.asarray(counts, dtype=np.int64)


def json_rle(rle: dict) -> dict:
    """A compressed RLE with ``counts`` as ``str`` (JSON- and pickle-friendly; pycocotools reads both forms)."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Binary masks ``[N, H, W]`` (bool or 0/1) -> N compressed RLEs with ``str`` counts (:func:`json_rle`)."""
    if not len(masks):
        return []
    # pycocotools wants [H, W, N] in Fortran order: the C-contiguous [N, W, H] array reversed is exactly that.
    nwh = np.ascontiguousarray(np.asarray(masks, dtype=np.uint8).transpose(0, 2, 1))
    return [json_rle(r) for r in mask_utils.encode(np.asfortranarray(nwh.transpose(2, 1, 0)))]


def encode_crop(mask: np.ndarray, top: int, left: int, height: int, width: int) -> dict:
    """The compressed RLE, in a ``height x width`` image, of a binary mask ``[h, w]`` whose top-left pixel sits at
    ``(top, left)``: the RLE ``pycocotools.mask.encode`` gives for the image with the crop pasted into zeros, built
    from the crop's runs alone (the image-sized array is never made). ``counts`` is ``str``.

    Raises:
        ValueError: the crop does not fit inside the image.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    if top < 0 or left < 0 or top + h > height or left + w > width:
        raise ValueError(f"a {h} x {w} crop at ({top}, {left}) does not fit a {height} x {width} image")
    # Runs of ones in column-major order (COCO's), as [start, end) in the crop's flat index.
    flat = np.concatenate([[False], mask.ravel(order="F"), [False]]).astype(np.int8)
    edges = np.diff(flat)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if h < height and len(starts):
        # A run that continues from the bottom of one crop column to the top of the next is two runs in the image
        # (the image's column is taller): split every run at the crop's column boundaries.
        first_col, last_col = starts // h, (ends - 1) // h
        pieces = last_col - first_col + 1
        run = np.repeat(np.arange(len(starts)), pieces)
        col = first_col[run] + np.arange(len(run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        starts, ends = np.maximum(starts[run], col * h), np.minimum(ends[run], (col + 1) * h)
    else:
        col = starts // max(h, 1)
    # Crop (row r, column c) -> image flat index (left + c) * height + top + r; a run stays inside its column.
    offset = (left + col) * height + top - col * h
    starts, ends = starts + offset, ends + offset
    if len(starts) > 1:  # runs that touch in the image (a crop as tall as the image) are one run
        keep = np.concatenate([[True], starts[1:] != ends[:-1]])
        starts, ends = starts[keep], np.concatenate([ends[:-1][keep[1:]], ends[-1:]])
    bounds = np.stack([starts, ends], axis=1).ravel()
    counts = np.diff(np.concatenate([[0], bounds, [height * width]]))
    if len(counts) > 1 and counts[-1] == 0:  # pycocotools ends on the last run of ones
        counts = counts[:-1]
    return json_rle(mask_utils.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width))


def union_rle(rles: list[dict]) -> dict:
    """The union of compressed RLEs of one image size (``pycocotools.mask.merge``), ``counts`` as ``str``."""
    return json_rle(rles[0] if len(rles) == 1 else mask_utils.merge(list(rles), intersect=False))
