"""ResNet-family backbones behind one feature-extractor contract.

>>> from resdense.backbones import create_backbone
>>> net = create_backbone("resnet50", out_features=("c3", "c4", "c5"))
>>> [(f.name, f.channels, f.stride) for f in net.feature_info]
[('c3', 512, 8), ('c4', 1024, 16), ('c5', 2048, 32)]
"""

from .blocks import BasicBlock, Bottleneck
from .contract import FeatureExtractor, FeatureInfo
from .export import export_onnx, trace_to_onnx
from .factory import ARCHS, BACKBONES, create_backbone, list_backbones, register_backbone
from .inference import fold_batchnorm, optimize_for_inference
from .norm import get_norm_layer
from .padding import pad_to_multiple
from .quantize import quantize_backbone
from .resnet import DEFAULT_OUT_FEATURES, STAGE_NAMES, ResNet
from .summary import format_summary, layer_summary
from .weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadReport,
    adapt_input_conv,
    load_pretrained,
    load_weights,
    match_state_dict,
    read_state_dict,
    read_weights,
    torchvision_key_map,
)

__all__ = [
    "ARCHS",
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "DEFAULT_OUT_FEATURES",
    "FeatureExtractor",
    "FeatureInfo",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadReport",
    "ResNet",
    "STAGE_NAMES",
    "adapt_input_conv",
    "create_backbone",
    "export_onnx",
    "fold_batchnorm",
    "format_summary",
    "get_norm_layer",
    "layer_summary",
    "list_backbones",
    "load_pretrained",
    "load_weights",
    "match_state_dict",
    "optimize_for_inference",
    "pad_to_multiple",
    "quantize_backbone",
    "read_state_dict",
    "read_weights",
    "register_backbone",
    "torchvision_key_map",
    "trace_to_onnx",
]
