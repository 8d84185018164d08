"""Datasets and transforms for detection and segmentation (batching is the engine's: its sampler and ``Task.collate``).

Detection datasets yield ``(image float32 [3, H, W] in [0, 1], target)`` with the torchvision detection target
(``boxes`` xyxy, ``labels`` 1..K, optional ``masks``, ``image_id``, ``area``, ``iscrowd``, ``orig_size``,
``size``); segmentation datasets yield ``(image float32 [3, H, W], mask int64 [H, W])``. Every adapter validates
what it reads and names the file, field and value of whatever is wrong.
"""

from resdense.backbones import IMAGENET_MEAN, IMAGENET_STD
from resdense.coco.io import build_coco

from .check import CheckReport, check_path
from .coco import CocoDetection
from .coco_semantic import CocoSemantic
from .common import DataWarning
from .image_folder import ImageFolder
from .image_io import read_image, read_mask, to_image_tensor
from .instance_masks import InstanceMaskDataset, derive_instance_folder, read_instance_folder
from .masks import MaskDataset
from .shapes import SHAPES_CLASSES, ShapesDataset, ShapesSplit, make_shapes
from .split import Split, make_split
from .transforms import (
    DetectionTransform,
    SegmentationTransform,
    detection_transforms,
    seed_transforms,
    segmentation_transforms,
)
from .voc import VocDetection, voc_to_coco

__all__ = [
    "CocoDetection",
    "CocoSemantic",
    "MaskDataset",
    "VocDetection",
    "InstanceMaskDataset",
    "read_instance_folder",
    "derive_instance_folder",
    "ImageFolder",
    "DetectionTransform",
    "SegmentationTransform",
    "detection_transforms",
    "segmentation_transforms",
    "seed_transforms",
    "make_shapes",
    "ShapesDataset",
    "ShapesSplit",
    "SHAPES_CLASSES",
    "check_path",
    "CheckReport",
    "make_split",
    "Split",
    "DataWarning",
    "read_image",
    "to_image_tensor",
    "read_mask",
    "build_coco",
    "voc_to_coco",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
