"""The COCO format, shared by ``resdense.data`` and ``resdense.evaluation`` (one layer below both).

``io.py``: the one JSON reader (and the walk that decodes a file's annotations a piece at a time), the pycocotools
print suppressor, a ``COCO`` index from a dict. ``table.py``: an annotations list as numpy columns.
``validate.py``: the one ground-truth validation (problems as one-line messages; each caller raises its own type).
``rle.py``: segmentations <-> compressed RLE and masks (crops placed in an image, unions). ``packing.py``: the
one bit-packed layout of masks. ``results.py``: detections as COCO results.
Imports nothing of resdense but ``errors``.
"""

from .io import CocoFileError, build_coco, gc_paused, quiet, read_json, walk_instances
from .packing import PackedMasks, pack_masks, pack_segms, unpack_masks
from .results import detection_results
from .rle import decode_segms, encode_crop, encode_masks, json_rle, rle_counts, segm_to_rle, union_rle
from .validate import CheckedCoco, Problem, check_ground_truth, check_segmentation, is_number

__all__ = [
    "CocoFileError",
    "read_json",
    "quiet",
    "build_coco",
    "gc_paused",
    "walk_instances",
    "check_ground_truth",
    "check_segmentation",
    "is_number",
    "CheckedCoco",
    "Problem",
    "PackedMasks",
    "pack_masks",
    "unpack_masks",
    "pack_segms",
    "segm_to_rle",
    "decode_segms",
    "rle_counts",
    "encode_masks",
    "encode_crop",
    "union_rle",
    "json_rle",
    "detection_results",
]
