"""The registry: architecture name -> keyword arguments of :class:`ResNet`, and the public builders."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from torch import Tensor

from resdense.errors import ConfigError
from resdense.registry import BACKBONES, register_backbone

from .blocks import BasicBlock, Bottleneck
from .resnet import DEFAULT_OUT_FEATURES, ResNet
from .weights import load_pretrained

__all__ = ["ARCHS", "BACKBONES", "create_backbone", "list_backbones", "register_backbone"]

WeightsArg = str | os.PathLike | Mapping[str, Tensor] | None

# Table 1 of He et al. (2016); ResNeXt (Xie et al. 2017) and Wide ResNet (Zagoruyko & Komodakis 2016) as torchvision.
ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    "resnet34": dict(block=BasicBlock, layers=(3, 4, 6, 3)),
    "resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
    "resnet101": dict(block=Bottleneck, layers=(3, 4, 23, 3)),
    "resnet152": dict(block=Bottleneck, layers=(3, 8, 36, 3)),
    "resnext50_32x4d": dict(block=Bottleneck, layers=(3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": dict(block=Bottleneck, layers=(3, 4, 23, 3), groups=32, width_per_group=8),
    "resnext101_64x4d": dict(block=Bottleneck, layers=(3, 4, 23, 3), groups=64, width_per_group=4),
    "wide_resnet50_2": dict(block=Bottleneck, layers=(3, 4, 6, 3), width_per_group=128),
    "wide_resnet101_2": dict(block=Bottleneck, layers=(3, 4, 23, 3), width_per_group=128),
}


def _build(name: str, weights: WeightsArg, **kwargs: Any) -> ResNet:
    return load_pretrained(ResNet(**dict(ARCHS[name], **kwargs), name=name), weights, arch=name)


for _name in ARCHS:  # torchvision-style keyword-only builders, one registry entry each
    register_backbone(_name, partial(_build, _name))


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, sorted."""
    return sorted(BACKBONES)


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        close = difflib.get_close_matches(str(name), BACKBONES.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown backbone {name!r}{hint} Available: {', '.join(list_backbones())}")


def create_backbone(
    name: str,
    *,
    weights: WeightsArg = None,
    out_features: tuple[str, ...] | list[str] = DEFAULT_OUT_FEATURES,
    output_stride: int = 32,
    frozen_stages: int = -1,
    norm: str | Callable = "bn",
    in_channels: int = 3,
    grad_checkpointing: bool = False,
    **kwargs: Any,
) -> ResNet:
    """Build a ResNet feature extractor.

    Args:
        name: one of :func:`list_backbones` (``resnet18`` ... ``wide_resnet101_2``).
        weights: ``None``; ``"imagenet"`` or a torchvision tag (``"IMAGENET1K_V2"``), downloaded once to the torch hub
            cache with its hash checked; a ``.pth/.pt/.safetensors`` file in torchvision, timm or smp key layout; or
            a state dict. The classifier is dropped; ``model.load_report`` says what was loaded.
        out_features: names among ``c1..c5`` to return, in stride order.
        output_stride: 32, 16 or 8 (dilation replaces stride in the last stages).
        frozen_stages: -1 (none) or k in 0..4: stem and layer1..layer_k frozen, their norm layers in eval mode.
        norm: "bn", "frozen_bn", "gn", "sync_bn" or a callable ``f(channels) -> nn.Module``.
        in_channels: input channels; loaded RGB weights are adapted (summed for 1, tiled and rescaled otherwise).
        grad_checkpointing: recompute stage activations in backward.
        **kwargs: other :class:`ResNet` arguments (``zero_init_residual``).

    Returns:
        A :class:`ResNet` whose ``forward(x[N, C, H, W])`` returns ``dict[str, Tensor]`` described by ``feature_info``.
    """
    _check_name(name)
    return BACKBONES.get(name)(
        weights=weights, out_features=out_features, output_stride=output_stride, frozen_stages=frozen_stages,
        norm=norm, in_channels=in_channels, grad_checkpointing=grad_checkpointing, **kwargs,
    )

