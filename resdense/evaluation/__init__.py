"""Evaluation: COCO AP/AR identical to pycocotools, and segmentation IoU / Dice with declared conventions.

* :func:`coco_map`: COCO detection / instance-segmentation statistics from a GT file, dict or ``COCO`` object and
  a results list, with faster-coco-eval (default) or pycocotools, after validating both; :func:`coco_evaluate`
  also keeps the engine's arrays (:class:`CocoEvaluation`: per-class AP, precision-recall curves).
* :class:`DetectionEvaluator`: collects a torchvision detector's outputs over a dataset (label and coordinate
  mapping, masks to RLE), merges across processes, calls :func:`coco_map`.
* :class:`SegmentationMetrics`: confusion-matrix IoU / Dice / accuracies (mmseg or detectron2 convention).
* :func:`scalar_metrics`: the numbers of a metrics dict, for logs and reports.
"""

from .coco import COCO_STAT_KEYS, CocoEvaluation, coco_evaluate, coco_map
from .detection import DetectionEvaluator
from .scalars import scalar_metrics
from .segmentation import SegmentationMetrics

__all__ = ["COCO_STAT_KEYS", "CocoEvaluation", "DetectionEvaluator", "SegmentationMetrics", "coco_evaluate", "coco_map",
           "scalar_metrics"]
