"""torchvision detectors (Faster R-CNN, Mask R-CNN, RetinaNet, FCOS) on any resdense backbone.

:func:`build_detector` wires a backbone and an :class:`~resdense.heads.FPN` into torchvision's detector classes and
derives everything torchvision needs from ``feature_info``: the adapter's ``out_channels``, the anchor sizes per
pyramid level, the ``MultiScaleRoIAlign`` feature names and the P3-P7 levels of the one-stage detectors. With the
defaults, ``build_detector("faster_rcnn", backbone="resnet50", num_classes=91)`` is module-for-module torchvision's
``fasterrcnn_resnet50_fpn``, so its checkpoints load with ``weights=PATH``.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from resdense.backbones import FeatureExtractor
from resdense.errors import ConfigError

from .backbone_features import resolve_backbone
from .detection_weights import load_detection_weights
from .fpn import FPN
from .targets import install_target_check

__all__ = ["KINDS", "DetectionBackbone", "build_detector", "anchor_generator_for", "install_float32_box_deltas"]

TWO_STAGE = ("faster_rcnn", "mask_rcnn")  # region-proposal detectors (RPN, RoI heads)
# Which backbone maps feed the FPN and which extra levels it adds, as torchvision's ResNet-50 recipes do:
# two-stage detectors use C2-C5 -> P2-P6 (P6 by subsampling), one-stage ones C3-C5 -> P3-P7 (Lin et al. 2017).
_RECIPE = {
    "faster_rcnn": (("c2", "c3", "c4", "c5"), "maxpool"),
    "mask_rcnn": (("c2", "c3", "c4", "c5"), "maxpool"),
    "retinanet": (("c3", "c4", "c5"), "p6p7"),
    "fcos": (("c3", "c4", "c5"), "p6p7"),
}
_CLASSES = {"faster_rcnn": FasterRCNN, "mask_rcnn": MaskRCNN, "retinanet": RetinaNet, "fcos": FCOS}
KINDS = tuple(_RECIPE)  # build_detector's kinds (each a model.arch: resdense.engine.architectures registers them)


class DetectionBackbone(FeatureExtractor):
    """Backbone + FPN in the form torchvision's detectors expect (its ``BackboneWithFPN``).

    Attributes:
        body: the backbone, a :class:`~resdense.backbones.FeatureExtractor` (a resdense ResNet has torchvision's
            module names, so ``backbone.body.*`` keys match torchvision's checkpoints).
        fpn: the :class:`FPN`.
        out_channels: channels of every pyramid level (torchvision reads this attribute).

    ``forward(x[N, 3, H, W])`` returns ``OrderedDict{p_k: [N, out_channels, H/2^k, W/2^k]}``.
    """

    def __init__(self, body: FeatureExtractor, fpn: FPN) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.feature_info = fpn.feature_info
        self.out_channels = fpn.feature_info[0].channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))


def _is_positive(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)


def _per_level(kind: str, key: str, value: Any, levels: list[str], *, shared: bool) -> tuple[tuple[Any, ...], ...]:
    """``value`` as one tuple per pyramid level. A bare number counts as a level of one; with ``shared`` a flat list
    (or a bare number) is used for every level."""
    where = f"{kind}: {key}"
    if shared and _is_positive(value):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        per = "one list for all levels or one per level" if shared else "one list of sizes per level"
        raise ConfigError(f"{where} = {value!r} must be a non-empty list: {per} ({', '.join(levels)})")
    if shared and not any(isinstance(v, (list, tuple)) for v in value):
        value = [value] * len(levels)
    out = tuple(tuple(lvl) if isinstance(lvl, (list, tuple)) else (lvl,) for lvl in value)
    if len(out) != len(levels):
        raise ConfigError(f"{where} has {len(out)} levels but the pyramid has {len(levels)} ({', '.join(levels)})")
    for name, lvl in zip(levels, out, strict=True):
        if not lvl or not all(_is_positive(v) for v in lvl):
            raise ConfigError(f"{where}: level {name} must hold numbers > 0, got {list(lvl)!r}")
        if len(set(lvl)) != len(lvl):
            hint = ": for one ratio per level give [[r2], [r3], ...]" if shared and len(lvl) == len(levels) else ""
            raise ConfigError(f"{where}: level {name} repeats a value, {list(lvl)!r} (identical anchors){hint}")
    return out


def anchor_generator_for(kind: str, feature_info, sizes: Sequence[Sequence[float] | float] | None = None,
                         aspect_ratios: Sequence[Sequence[float] | float] | float | None = None,
                         ) -> AnchorGenerator:
    """The anchors of ``kind`` on the pyramid levels of ``feature_info``; torchvision's settings unless given.

    Defaults, from the strides in ``feature_info``:

    - Faster/Mask R-CNN: one size ``8 * stride`` (32 on P2 ... 512 on P6), aspect ratios (0.5, 1, 2).
    - RetinaNet: sizes ``4 * stride * 2**(i/3)``, i = 0, 1, 2 (32 on P3 ... 512 on P7), aspect ratios (0.5, 1, 2).
    - FCOS: one anchor point per location of size ``stride`` (8 on P3 ... 128 on P7).

    ``sizes``: one sequence of sizes in pixels per level (a bare number per level means one size); fractional sizes
    such as detectron2's ``32 * 2**(1/3)`` are kept as given.
    ``aspect_ratios``: one sequence for every level (or a bare number), or one per level. Every level must have the
    same number of anchors (the heads share their convolutions across levels); FCOS takes exactly one anchor per
    location. Anything else raises :class:`~resdense.errors.ConfigError` naming the argument and the level.
    """
    strides = [f.stride for f in feature_info]
    levels = [f.name for f in feature_info]
    if sizes is None:
        if kind in TWO_STAGE:
            sizes = [(8 * s,) for s in strides]
        elif kind == "retinanet":
            sizes = [(4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in strides]
        else:
            sizes = [(s,) for s in strides]
    if aspect_ratios is None:
        aspect_ratios = (1.0,) if kind == "fcos" else (0.5, 1.0, 2.0)
    sizes = _per_level(kind, "anchor_sizes", sizes, levels, shared=False)
    ratios = tuple(tuple(float(r) for r in lvl)
                   for lvl in _per_level(kind, "aspect_ratios", aspect_ratios, levels, shared=True))
    per_level = {len(sz) * len(r) for sz, r in zip(sizes, ratios, strict=True)}
    if len(per_level) > 1:
        raise ConfigError(f"{kind}: every pyramid level needs the same number of anchors (sizes x aspect ratios), "
                          f"got {sorted(per_level)}")
    if kind == "fcos" and per_level != {1}:
        raise ConfigError(f"fcos: one anchor point per location (one size and one aspect ratio per level), "
                          f"got {per_level.pop()}")
    return AnchorGenerator(tuple(tuple(v if isinstance(v, int) else float(v) for v in lvl) for lvl in sizes), ratios)


def build_detector(kind: str, *, backbone: str | FeatureExtractor = "resnet50", num_classes: int,
                   weights: str | os.PathLike | Mapping[str, Tensor] | None = None, weights_backbone: Any = None,
                   trainable_stages: int = 3, norm: str | Callable[[int], nn.Module] | None = None,
                   p6_from: str = "p5", returned_layers: Sequence[int] | None = None, fpn_channels: int = 256,
                   anchor_sizes: Sequence[Sequence[float] | float] | None = None,
                   aspect_ratios: Sequence[Sequence[float] | float] | float | None = None,
                   representation_size: int | None = None, mask_head_layers: Sequence[int] | None = None,
                   mask_roi_size: int = 14, train_resize: bool = True, **kwargs: Any) -> nn.Module:
    """Build a torchvision detector on a resdense backbone.

    Args:
        kind: ``"faster_rcnn"``, ``"mask_rcnn"``, ``"retinanet"`` or ``"fcos"``.
        backbone: a backbone name (``resnet18`` ... ``wide_resnet101_2``) or a feature extractor instance (used as
            it is; widened with its ``set_out_features`` to return the maps the FPN needs).
        num_classes: number of classes *including background* (torchvision's convention): ``K + 1`` for a dataset
            with ``K`` classes, 91 for torchvision's COCO checkpoints.
        weights: a torchvision detection checkpoint of the same kind: a path, a state dict, or a torchvision tag
            (``"coco"``, ``"COCO_V1"``; ResNet-50 only). Loaded strictly; predictor layers of another
            ``num_classes`` keep their initialisation.
        weights_backbone: backbone weights (tag or path) passed to ``create_backbone`` when ``weights`` is None.
        trainable_stages: torchvision's ``trainable_backbone_layers``: 0..5 backbone stages trained, counted from
            layer4 (an instance: its last ``stage_modules()``) back to the stem. Without weights, all 5 train.
        norm: backbone norm for a backbone name; default ``"frozen_bn"`` (FrozenBatchNorm2d) when weights are loaded,
            else ``"bn"``; ``"frozen_bn"`` without weights warns.
        p6_from: RetinaNet/FCOS input of P6: ``"p5"`` (torchvision's v1 recipes; default) or ``"c5"`` (v2 / paper).
        returned_layers: the consecutive ``layer1..layer4`` (``c2..c5``) that feed the FPN (torchvision's
            ``resnet_fpn_backbone``): default ``[1, 2, 3, 4]`` two-stage, ``[2, 3, 4]`` one-stage. The backbone
            is built up to the last one.
        fpn_channels: width of every pyramid level and of the heads on it (torchvision: 256).
        anchor_sizes, aspect_ratios: anchors per pyramid level (see :func:`anchor_generator_for`); default
            torchvision's, derived from the strides.
        representation_size: width of the two-stage box head's MLP (torchvision: 1024).
        mask_head_layers: Mask R-CNN: the widths of the mask head's 3x3 convolutions (torchvision's
            ``MaskRCNNHeads(layers=...)``, default ``[256, 256, 256, 256]``); the predictor keeps the last width.
        mask_roi_size: Mask R-CNN: the side of the mask head's RoIAlign grid (torchvision: 14); masks are twice it.
        train_resize: ``False``: training images reach the network at the size the data pipeline gave them
            (torchvision's ``_skip_resize``); evaluation still resizes to ``min_size`` / ``max_size``.
        **kwargs: passed to the torchvision class (``min_size``, ``max_size``, ``box_score_thresh``,
            ``rpn_anchor_generator`` / ``anchor_generator`` for an ``AnchorGenerator`` of your own, ...).

    Returns:
        The torchvision model (``FasterRCNN``, ``MaskRCNN``, ``RetinaNet`` or ``FCOS``) on a
        :class:`DetectionBackbone`; ``model.load_report`` tells what ``weights`` loaded. Inputs as torchvision's:
        ``[3, H, W]`` float images in [0, 1] and, in training, targets with ``boxes`` float ``[N, 4]`` xyxy and
        ``labels`` int64 ``[N]`` (``masks`` ``[N, H, W]`` for Mask R-CNN); degenerate boxes or labels out of range
        raise :class:`~resdense.errors.DataError`, an image with zero boxes trains as a negative.
    """
    anchor_key = "rpn_anchor_generator" if kind in TWO_STAGE else "anchor_generator"
    _check_arguments(kind, num_classes, trainable_stages, weights, weights_backbone, fpn_channels,
                     representation_size, anchor_key, anchor_sizes is not None or aspect_ratios is not None, kwargs)
    _check_mask_head(kind, weights, mask_head_layers, mask_roi_size, kwargs)
    _set_train_resize(train_resize, kwargs)
    detection_backbone, trainable = _detection_backbone(kind, backbone, returned_layers, p6_from, weights,
                                                        weights_backbone, norm, trainable_stages, fpn_channels)
    kwargs.setdefault(anchor_key, anchor_generator_for(kind, detection_backbone.feature_info, anchor_sizes,
                                                       aspect_ratios))
    model = _assemble(kind, detection_backbone, num_classes, representation_size, mask_head_layers, mask_roi_size,
                      kwargs)
    return _finish(model, kind, detection_backbone.body, num_classes, trainable, weights)


def _set_train_resize(train_resize: Any, kwargs: dict[str, Any]) -> None:
    """Check ``train_resize``; ``False`` asks torchvision's transform to skip its resize in training."""
    if not isinstance(train_resize, bool):
        raise ConfigError(f"build_detector: train_resize={train_resize!r} must be true or false")
    if not train_resize:
        kwargs["_skip_resize"] = True  # popped by GeneralizedRCNNTransform, which skips its resize in training


def _detection_backbone(kind: str, backbone: str | FeatureExtractor, returned_layers: Any, p6_from: str,
                        weights: Any, weights_backbone: Any, norm: Any, trainable_stages: int,
                        fpn_channels: int) -> tuple[DetectionBackbone, int]:
    """The backbone and FPN of :func:`build_detector`, and how many backbone stages train."""
    in_features, extra = _RECIPE[kind]
    if returned_layers is not None:
        in_features = _returned_features(kind, returned_layers, p6_from)
    pretrained = weights is not None or weights_backbone is not None
    if not isinstance(backbone, str):
        pretrained = pretrained or bool((getattr(backbone, "pretrained_cfg", None) or {}).get("weights"))
    trainable = _trainable(trainable_stages, pretrained)
    body = _body(kind, backbone, in_features, weights_backbone, norm, pretrained, trainable)
    in_info = tuple(f for f in body.feature_info if f.name in in_features)
    fpn = FPN(in_info, fpn_channels, extra, p6_from=p6_from)
    return DetectionBackbone(body, fpn), trainable


def _finish(model: nn.Module, kind: str, body: FeatureExtractor, num_classes: int, trainable: int,
            weights: Any) -> nn.Module:
    """Record the recipe on ``model``, load ``weights`` and install the target check and float32 box deltas."""
    model.resdense_cfg = {"kind": kind, "backbone": getattr(body, "name", type(body).__name__),
                          "num_classes": num_classes, "trainable_stages": trainable}
    if weights is not None:
        model.load_report = load_detection_weights(model, weights, kind, getattr(body, "name", None))
    install_target_check(model, num_classes, masks=kind == "mask_rcnn")
    install_float32_box_deltas(model)
    return model


def install_float32_box_deltas(model: nn.Module) -> list[nn.Module]:
    """Make the box regression outputs of a torchvision detector float32 under autocast (forward hooks on the RPN
    head and the box predictor of Faster/Mask R-CNN, on the regression head of RetinaNet/FCOS); returns the hooked
    modules. Without autocast the outputs are float32 already and the hooks do nothing.

    Why: torchvision decodes boxes in the dtype of the predicted deltas (``BoxCoder.decode``:
    ``boxes.to(rel_codes.dtype)``) and its RoI heads cast the ground-truth boxes to the proposals' dtype. bf16 (the
    CPU autocast type) keeps 8 significant bits, so coordinates between 256 and 512 would be rounded to 2 px, and a
    ground-truth box under a pixel wide would become empty, its regression target 0/0 (a NaN ``loss_box_reg``).
    mmdetection's ``force_fp32`` on its box heads does the same. Class scores and features stay in the autocast
    type.
    """
    if isinstance(model, (FasterRCNN, MaskRCNN)):
        modules = [model.rpn.head, model.roi_heads.box_predictor]
    elif isinstance(model, (RetinaNet, FCOS)):
        modules = [model.head.regression_head]
    else:
        raise ConfigError(f"install_float32_box_deltas: {type(model).__name__} is not a torchvision detector")
    for module in modules:
        module.register_forward_hook(_float32_outputs)
    return modules


def _float32_outputs(module: nn.Module, args: Any, output: Any) -> Any:
    if isinstance(output, Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(_float32_outputs(module, args, o) for o in output)
    return output


def _check_arguments(kind: str, num_classes: Any, trainable_stages: Any, weights: Any, weights_backbone: Any,
                     fpn_channels: Any, representation_size: Any, anchor_key: str, anchors_given: bool,
                     kwargs: dict[str, Any]) -> None:
    """Refuse the arguments of :func:`build_detector` that cannot be honoured, each with a one-line reason."""
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"build_detector: unknown kind {kind!r}{hint} Choose from {', '.join(KINDS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(
            f"build_detector: num_classes={num_classes!r} must be an int >= 2; it counts the background, so a "
            "dataset with K classes needs K + 1"
        )
    if isinstance(trainable_stages, bool) or not isinstance(trainable_stages, int) or not 0 <= trainable_stages <= 5:
        raise ConfigError(f"build_detector: trainable_stages={trainable_stages!r} must be an int in 0..5")
    if weights is not None and weights_backbone is not None:
        raise ConfigError("build_detector: give weights (a whole detector) or weights_backbone, not both")
    for key, value in (("fpn_channels", fpn_channels), ("representation_size", representation_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"build_detector: {key}={value!r} must be a positive int")
    if representation_size is not None and kind not in TWO_STAGE:
        raise ConfigError(f"build_detector: representation_size is the box head width of a two-stage detector; "
                          f"{kind} has none")
    if weights is not None and (fpn_channels != 256 or representation_size not in (None, 1024)):
        raise ConfigError(f"build_detector: fpn_channels={fpn_channels} / representation_size={representation_size} "
                          "change layer shapes, so a torchvision detector checkpoint (weights=...) cannot load; "
                          "use weights_backbone to start from backbone weights")
    if representation_size is not None and "box_head" in kwargs:
        raise ConfigError("build_detector: representation_size sets the width of the box head resdense builds; "
                          "with your own box_head, give its box_predictor instead")
    if anchor_key in kwargs and anchors_given:
        raise ConfigError(f"build_detector: give {anchor_key} or anchor_sizes / aspect_ratios, not both")


def _check_mask_head(kind: str, weights: Any, mask_head_layers: Any, mask_roi_size: Any,
                     kwargs: dict[str, Any]) -> None:
    """Refuse mask head settings that cannot be honoured (on another kind, malformed, or against a checkpoint)."""
    if kind != "mask_rcnn" and (mask_head_layers is not None or mask_roi_size != 14):
        raise ConfigError(f"build_detector: mask_head_layers / mask_roi_size shape a Mask R-CNN's mask head; "
                          f"{kind} has none")
    if mask_head_layers is not None:
        layers = list(mask_head_layers) if isinstance(mask_head_layers, (list, tuple)) else None
        if not layers or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in layers):
            raise ConfigError(f"build_detector: mask_head_layers={mask_head_layers!r} must be a non-empty list of "
                              "positive ints (torchvision's: [256, 256, 256, 256])")
        if "mask_head" in kwargs or "mask_predictor" in kwargs:
            raise ConfigError("build_detector: give mask_head / mask_predictor or mask_head_layers, not both")
        if weights is not None and layers != [256] * 4:
            raise ConfigError(f"build_detector: mask_head_layers={layers} change layer shapes, so a torchvision "
                              "detector checkpoint (weights=...) cannot load")
    if isinstance(mask_roi_size, bool) or not isinstance(mask_roi_size, int) or mask_roi_size < 1:
        raise ConfigError(f"build_detector: mask_roi_size={mask_roi_size!r} must be a positive int (torchvision: 14)")
    if mask_roi_size != 14 and "mask_roi_pool" in kwargs:
        raise ConfigError("build_detector: give mask_roi_pool or mask_roi_size, not both")


def _returned_features(kind: str, returned_layers: Any, p6_from: str) -> tuple[str, ...]:
    """torchvision's ``returned_layers`` (indices of layer1..layer4) as the FPN's input names ``c2..c5``."""
    layers = list(returned_layers) if isinstance(returned_layers, (list, tuple)) else None
    if (not layers or any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= 4 for i in layers)
            or layers != list(range(layers[0], layers[0] + len(layers)))):
        raise ConfigError(f"build_detector: returned_layers={returned_layers!r} must be consecutive layer indices "
                          "in 1..4 (torchvision's: [1, 2, 3, 4] = c2..c5), e.g. [1, 2, 3]")
    if kind not in TWO_STAGE and p6_from == "c5" and layers[-1] != 4:
        raise ConfigError(f"build_detector: p6_from='c5' needs layer4; returned_layers={layers} ends at layer"
                          f"{layers[-1]} (use p6_from='p5')")
    return tuple(f"c{i + 1}" for i in layers)


def _body(kind: str, backbone: str | FeatureExtractor, in_features: tuple[str, ...], weights_backbone: Any,
          norm: Any, pretrained: bool, trainable: int) -> FeatureExtractor:
    """The detector's feature extractor: built from a name (norm default: frozen BN with weights, BN without) or
    the instance given, widened to the maps the FPN needs, with all but its last ``trainable`` stages frozen."""
    if isinstance(backbone, str):
        if norm is None:
            norm = "frozen_bn" if pretrained else "bn"
        body = resolve_backbone(backbone, in_features, kind, weights_backbone, norm=norm, frozen_stages=4 - trainable)
    else:
        if norm is not None:
            raise ConfigError("build_detector: norm applies to a backbone name; the instance has its own norm layers")
        body = resolve_backbone(backbone, in_features, kind)
        frozen_stages = len(body.stage_modules()) - 1 - trainable  # stages counted back from the last one
        if frozen_stages >= 0:  # never unfreezes what the instance froze itself
            body.freeze(max(body.frozen_stages, frozen_stages))
    if not pretrained and any(isinstance(m, FrozenBatchNorm2d) for m in body.modules()):
        warnings.warn(
            f"{kind}: FrozenBatchNorm2d on a randomly initialised backbone keeps its statistics at 0/1 forever "
            "(torchvision PR 5443); use norm='bn' or load weights", stacklevel=4,
        )
    return body


def _trainable(trainable_stages: int, pretrained: bool) -> int:
    if pretrained:
        return trainable_stages
    if trainable_stages not in (3, 5):
        warnings.warn(
            f"trainable_stages={trainable_stages} has no effect without weights or weights_backbone: a backbone "
            "trained from scratch trains all 5 stages (torchvision's rule)", stacklevel=4,
        )
    return 5


def _assemble(kind: str, backbone: DetectionBackbone, num_classes: int, representation_size: int | None,
              mask_head_layers: Sequence[int] | None, mask_roi_size: int, kwargs: dict[str, Any]) -> nn.Module:
    kwargs = dict(kwargs)
    # The detector normalises its [0, 1] inputs itself (GeneralizedRCNNTransform): use the backbone's statistics.
    cfg = getattr(backbone.body, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        kwargs.setdefault("image_mean", list(cfg["mean"]))
        kwargs.setdefault("image_std", list(cfg["std"]))
    info = backbone.feature_info
    if kind in TWO_STAGE:
        # RoIAlign on the FPN levels proper (P2-P5), not on the subsampled P6, as torchvision's ["0", "1", "2", "3"].
        roi_levels = [f.name for f in info[: len(backbone.fpn.in_features)]]
        kwargs.setdefault("box_roi_pool", MultiScaleRoIAlign(roi_levels, output_size=7, sampling_ratio=2))
        if kind == "mask_rcnn":
            kwargs.setdefault("mask_roi_pool", MultiScaleRoIAlign(roi_levels, output_size=mask_roi_size,
                                                                  sampling_ratio=2))
        if mask_head_layers is not None:
            kwargs["mask_head"] = MaskRCNNHeads(backbone.out_channels, list(mask_head_layers), 1)
        wide_box_head = representation_size is not None and "box_head" not in kwargs
        if wide_box_head or mask_head_layers is not None:
            # torchvision builds TwoMLPHead(out_channels * 7 * 7, 1024), the mask head and both predictors itself;
            # another width means building the heads and predictors here, and torchvision then wants
            # num_classes=None. Built as torchvision builds them otherwise (same names and shapes).
            if "box_head" not in kwargs:
                pool = kwargs["box_roi_pool"].output_size
                side = pool[0] if isinstance(pool, (list, tuple)) else pool
                kwargs["box_head"] = TwoMLPHead(backbone.out_channels * side**2, representation_size or 1024)
            kwargs.setdefault("box_predictor", FastRCNNPredictor(representation_size or 1024, num_classes))
            if kind == "mask_rcnn":  # the last mask conv's width in and out of the transposed conv (256 by default)
                width = mask_head_layers[-1] if mask_head_layers is not None else 256
                kwargs.setdefault("mask_predictor", MaskRCNNPredictor(width, width, num_classes))
            return _CLASSES[kind](backbone, num_classes=None, **kwargs)
    return _CLASSES[kind](backbone, num_classes=num_classes, **kwargs)
