"""The one bit-packing layout of instance masks: 8 instances per ``uint8`` channel.

Instance ``i`` is bit ``i % 8`` of channel ``i // 8``; one channel is stored as ``[H, W]``, more as
``[H, W, ceil(N / 8)]``. Warping the packed array with nearest-neighbour interpolation (filling with 0) warps all
N masks at once, exactly: albumentations warps masks one by one, so packing turns N warps into ``ceil(N / 8)``.
"""

from __future__ import annotations

import cv2
import numpy as np

from resdense.errors import DataError

from .rle import rle_counts, segm_to_rle

__all__ = ["PackedMasks", "pack_masks", "unpack_masks", "pack_segms"]


class PackedMasks:
    """N binary masks in the packed layout (``array`` as described above, ``n`` the number of instances)."""

    __slots__ = ("array", "n")

    def __init__(self, array: np.ndarray, n: int) -> None:
        self.array, self.n = array, n


def _channels_last(planes: list[np.ndarray]) -> np.ndarray:
    """Packed channels ``[C] x [H, W]`` -> the layout: ``[H, W]`` for one channel, else ``[H, W, C]`` (C order)."""
    return np.ascontiguousarray(planes[0]) if len(planes) == 1 else np.ascontiguousarray(np.stack(planes, axis=-1))


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """Binary masks ``uint8 [N, H, W]`` -> the packed ``uint8`` array."""
    n = masks.shape[0]
    # pycocotools decodes column-major planes; pack in that layout and transpose once at the end.
    col_major = masks.transpose(0, 2, 1).flags.c_contiguous and not masks.flags.c_contiguous
    src = masks.transpose(0, 2, 1) if col_major else masks
    packed = np.zeros((max(1, (n + 7) // 8), *src.shape[1:]), np.uint8)
    tmp = np.empty(src.shape[1:], np.uint8)
    for i in range(n):
        np.left_shift(src[i], i & 7, out=tmp, dtype=np.uint8, casting="unsafe")
        np.bitwise_or(packed[i >> 3], tmp, out=packed[i >> 3])
    out = packed.transpose(0, 2, 1) if col_major else packed
    return _channels_last(list(out))


def unpack_masks(packed: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The instances ``keep`` (indices into the N packed ones) of a packed array -> ``uint8 [len(keep), H, W]``."""
    if packed.ndim == 2:
        packed = packed[..., None]
    out = np.empty((len(keep), *packed.shape[:2]), np.uint8)
    for j, i in enumerate(keep.tolist()):
        np.right_shift(packed[..., i >> 3], i & 7, out=out[j])
        np.bitwise_and(out[j], 1, out=out[j])
    return out


def pack_segms(segms: list, height: int, width: int, boxes=None) -> PackedMasks:
    """Decode N COCO segmentations straight into :class:`PackedMasks` (no ``[N, H, W]`` array is ever built).

    Each RLE expands with one ``np.repeat`` of its alternating (0, bit) run values, OR-ed into its channel; the
    column-major channel is transposed once (``cv2.transpose``). Bit-exact with ``pycocotools.mask.decode``. A
    ``None`` segmentation is its filled box (``boxes[i]``, xyxy).
    """
    n = len(segms)
    channels = max(1, (n + 7) // 8)
    hw = height * width
    flat = np.zeros((channels, hw), dtype=np.uint8)
    try:
        for i in range(n):
            counts = rle_counts(segm_to_rle(segms[i], height, width, None if boxes is None else boxes[i]))
            if counts.sum() != hw or (counts < 0).any():
                raise DataError(f"segmentation RLE covers {int(counts.sum())} pixels, not {hw}")
            values = np.zeros(len(counts), dtype=np.uint8)
            values[1::2] = 1 << (i & 7)
            np.bitwise_or(flat[i >> 3], np.repeat(values, counts), out=flat[i >> 3])
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(f"segmentation does not decode ({type(err).__name__}: {err})") from None
    planes = [cv2.transpose(f.reshape(width, height)) for f in flat]  # runs are column-major
    return PackedMasks(_channels_last(planes), n)
