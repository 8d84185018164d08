"""Evaluation: COCO AP/AR identical to pycocotools, and segmentation IoU / Dice with declared conventions.

* :func:`coco_map`: COCO detection / instance-segmentation statistics from a GT file, dict or ``COCO`` object and
  a results list, with faster-coco-eval (default) or pycocotools, after validating both.
* :class:`DetectionEvaluator`: collects a torchvision detector's outputs over a dataset (label and coordinate
  mapping, masks to RLE), merges across processes, calls :func:`coco_map`.
* :class:`SegmentationMetrics`: confusion-matrix IoU / Dice / accuracies (mmseg or detectron2 convention).
"""

from .coco import COCO_STAT_KEYS, coco_map
from .detection import DetectionEvaluator
from .segmentation import SegmentationMetrics

__all__ = ["COCO_STAT_KEYS", "DetectionEvaluator", "SegmentationMetrics", "coco_map"]
