"""Heads on the feature contract: FPN, torchvision detectors, U-Net, smp decoders and a classifier.

>>> from resdense.heads import FPN, UNet, build_detector, create_classifier, smp_model
>>> detector = build_detector("faster_rcnn", backbone="resnet50", num_classes=91)  # torchvision's FasterRCNN
>>> unet = UNet("resnet34", num_classes=2)                                          # logits [N, 2, H, W]
>>> model = smp_model("DeepLabV3Plus", backbone="resnet50", classes=5)             # smp's class
>>> clf = create_classifier("resnet50", weights="imagenet")                         # torchvision's logits
"""

from .backbone_features import backbone_of
from .classifier import Classifier, create_classifier
from .detection import KINDS, DetectionBackbone, anchor_generator_for, build_detector
from .detection_weights import load_detection_weights, map_torchvision_detection_keys
from .fpn import FPN
from .instance_masks import has_masks, paste_rles, roi_mask_outputs
from .quantized import QuantizedUNet, quantize_unet
from .smp_encoder import SMP_PREFIX, ResdenseEncoder, register_smp_encoders, smp_architectures, smp_model
from .targets import validate_detection_targets
from .unet import UNet, map_smp_unet_keys

__all__ = [
    "FPN",
    "QuantizedUNet",
    "KINDS",
    "SMP_PREFIX",
    "Classifier",
    "DetectionBackbone",
    "ResdenseEncoder",
    "UNet",
    "anchor_generator_for",
    "backbone_of",
    "build_detector",
    "create_classifier",
    "has_masks",
    "paste_rles",
    "roi_mask_outputs",
    "load_detection_weights",
    "map_smp_unet_keys",
    "map_torchvision_detection_keys",
    "quantize_unet",
    "register_smp_encoders",
    "smp_architectures",
    "smp_model",
    "validate_detection_targets",
]
