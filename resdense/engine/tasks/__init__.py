"""Task adapters: what differs between segmentation, detection and classification in training, evaluation and
prediction."""

from .base import Batch, Task, metric_mode
from .classification import ClassificationTask, classification_transforms
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = ["Batch", "Task", "metric_mode", "SegmentationTask", "DetectionTask", "ClassificationTask", "classification_transforms"]
