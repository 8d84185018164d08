"""Task adapters: what differs between segmentation, detection and classification inside the training loop."""

from .base import Batch, Task, metric_mode
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = ["Batch", "Task", "metric_mode", "SegmentationTask", "DetectionTask", "ClassificationTask"]
