"""Normalisation layers selectable by name, as timm and detectron2 inject ``norm_layer``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from resdense._torch_private import BatchNormBase
from resdense.errors import ConfigError

__all__ = ["NORM_LAYERS", "get_norm_layer", "BATCH_NORMS"]

NormFactory = Callable[[int], nn.Module]


def _group_norm(num_channels: int, num_groups: int = 32) -> nn.GroupNorm:
    # 32 groups as in Wu & He, "Group Normalization" (2018); every ResNet width is a multiple of 32.
    return nn.GroupNorm(num_groups, num_channels)


NORM_LAYERS: dict[str, NormFactory] = {
    "bn": nn.BatchNorm2d,
    "frozen_bn": FrozenBatchNorm2d,
    "gn": _group_norm,
    "sync_bn": nn.SyncBatchNorm,
}

# Layers with running statistics: these follow train()/eval() and are folded into convolutions for inference.
BATCH_NORMS = (BatchNormBase, FrozenBatchNorm2d)


def get_norm_layer(norm: str | NormFactory) -> NormFactory:
    """Return a factory ``f(num_channels) -> nn.Module`` for ``norm`` ("bn", "frozen_bn", "gn", "sync_bn" or a callable)."""
    if callable(norm):
        return norm
    if isinstance(norm, str) and norm.startswith("gn") and norm[2:].isdigit():  # "gn16": GroupNorm with 16 groups
        return partial(_group_norm, num_groups=int(norm[2:]))
    try:
        return NORM_LAYERS[norm]
    except (KeyError, TypeError):
        raise ConfigError(f"norm={norm!r} is not supported; choose from {sorted(NORM_LAYERS)} or pass a callable") from None
