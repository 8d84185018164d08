"""Load a torchvision detection checkpoint (``fasterrcnn_resnet50_fpn`` ... state dicts) into a resdense detector.

The resdense detector is laid out like torchvision's: ``backbone.body`` is the ResNet (torchvision module names),
``backbone.fpn`` is a :class:`~torchvision.ops.FeaturePyramidNetwork` subclass, the heads are torchvision's own.
:func:`map_torchvision_detection_keys` is the one place where key layouts are reconciled.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

from torch import Tensor, nn
from torchvision.models import get_model_weights, list_models

from resdense.backbones import LoadReport, match_state_dict, read_weights
from resdense.errors import WeightsError

__all__ = ["map_torchvision_detection_keys", "load_detection_weights", "TV_BUILDER_PREFIX"]

log = logging.getLogger(__name__)

# kind -> torchvision builder prefix ("fasterrcnn" + "_resnet50_fpn").
TV_BUILDER_PREFIX = {"faster_rcnn": "fasterrcnn", "mask_rcnn": "maskrcnn", "retinanet": "retinanet", "fcos": "fcos"}
# Class-dependent layers: with another num_classes they keep their initialisation (fine-tuning a COCO detector).
_PREDICTOR_KEYS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.",
                   "head.classification_head.cls_logits.")
_LEGACY_FPN = re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")


def map_torchvision_detection_keys(sd: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map torchvision detection keys onto the resdense detector's keys.

    - ``module.`` (DistributedDataParallel) is stripped.
    - ``backbone.body.*`` -> ``backbone.body.*``: our ResNet keeps torchvision's module names (conv1, bn1, layer1..4).
    - ``backbone.fpn.*`` -> ``backbone.fpn.*``; the pre-0.8 FPN layout ``inner_blocks.0.weight`` becomes
      ``inner_blocks.0.0.weight`` (torchvision does this through state-dict metadata, which a re-saved dict loses).
    - ``*.num_batches_tracked`` is dropped where our norm layer is a FrozenBatchNorm2d (it has no such buffer).
    - ``rpn.*``, ``roi_heads.*``, ``head.*`` are torchvision's own modules: unchanged.

    Args:
        sd: the checkpoint's state dict.
        own: the target model's state dict (to know which optional keys exist).
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        key = key.removeprefix("module.")
        m = _LEGACY_FPN.match(key)
        if m and key not in own and f"{m.group(1)}.0.{m.group(2)}" in own:
            key = f"{m.group(1)}.0.{m.group(2)}"
        if key.endswith("num_batches_tracked") and key not in own:
            continue
        out[key] = value
    return out


def _tag_url(weights: str, kind: str, arch: str | None) -> tuple[str, str]:
    # A torchvision tag ("coco", "COCO_V1", "DEFAULT") exists only for the ResNet-50 recipes.
    builder = f"{TV_BUILDER_PREFIX[kind]}_{arch}_fpn"
    if builder not in list_models():
        raise WeightsError(
            f"weights={weights!r}: not a file, and torchvision has no pretrained {kind} for backbone {arch!r} "
            "(tags exist for resnet50 only); pass a checkpoint path"
        )
    enum = get_model_weights(builder)
    key = "DEFAULT" if weights.lower() in ("coco", "default") else weights.upper().split(".")[-1]
    try:
        entry = enum.DEFAULT if key == "DEFAULT" else enum[key]
    except KeyError:
        raise WeightsError(f"weights={weights!r}: not a file nor a tag of {builder} ({[w.name for w in enum]})") from None
    return entry.url, f"{builder} {entry.name}"


def load_detection_weights(
    model: nn.Module, weights: str | os.PathLike | Mapping[str, Tensor], kind: str, arch: str | None
) -> LoadReport:
    """Load ``weights`` (path, state dict or torchvision tag) into ``model`` strictly; return a :class:`LoadReport`.

    Shape mismatches are errors naming the key, except the class-dependent predictor layers, which keep their
    initialisation when the checkpoint has another ``num_classes`` (reported as dropped and logged).
    """
    source, raw = read_weights(weights, lambda tag: _tag_url(tag, kind, arch))
    own = model.state_dict()
    sd = map_torchvision_detection_keys(raw, own)
    report = LoadReport(source=source, layout="torchvision-detection")

    def reinitialise(key: str, value: Tensor, target: Tensor) -> tuple[None, str] | None:
        if not key.startswith(_PREDICTOR_KEYS):
            return None
        return None, f"{list(value.shape)} -> {list(target.shape)}, re-initialised"

    accepted = match_state_dict(sd, own, report, reshape=reinitialise)
    dropped = {d.split(" ", 1)[0] for d in report.dropped}
    report.missing = [k for k in own if k not in accepted and k not in dropped and not k.endswith("num_batches_tracked")]
    report.refuse_mismatched(f"this {kind}")
    report.refuse_missing_or_unexpected(f"this {kind}")
    model.load_state_dict(accepted, strict=False)
    report.loaded = list(accepted)
    if report.dropped:
        log.warning("%s: class-dependent layers left at initialisation: %s", kind, ", ".join(report.dropped))
    log.info("%s: %s", kind, report)
    return report
