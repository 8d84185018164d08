"""Evaluation: COCO AP/AR identical to pycocotools, and segmentation IoU / Dice with declared conventions."""

from .coco import COCO_STAT_KEYS, coco_map

__all__ = ["COCO_STAT_KEYS", "coco_map"]
