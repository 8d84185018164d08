"""COCO segmentations (polygons, RLE) <-> compressed RLE and binary masks, through ``pycocotools.mask``.

Shared by the datasets (masks of training targets) and the evaluation (result masks as compressed RLE).
"""

from __future__ import annotations

import warnings

import numpy as np
from pycocotools import mask as mask_utils

from resdense.errors import DataError

__all__ = ["segm_to_rle", "decode_segms", "rle_counts"]


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
