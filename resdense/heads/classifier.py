"""The classifier: global average pool + linear on any backbone, for transfer learning and, built by
:func:`create_classifier`, the full ImageNet ResNet that loads torchvision / timm checkpoints, ``fc`` included."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from resdense.backbones import FeatureExtractor, create_backbone, load_pretrained, torchvision_key_map
from resdense.errors import ConfigError

from .backbone_features import resolve_backbone

__all__ = ["Classifier", "create_classifier"]


class Classifier(nn.Module):
    """Pool the backbone's last feature map and classify it with a new linear layer.

    Args:
        backbone: a backbone name (built with ``out_features=("c5",)``) or a feature extractor instance (its last
            ``feature_info`` entry is used).
        num_classes: number of logits.
        freeze_backbone: when True (linear probing / the first phase of fine-tuning) the backbone's parameters
            get no gradients and it stays in eval mode, so its BatchNorm statistics are not changed by the new
            data; only ``fc`` trains. Set ``model.freeze_backbone = False`` later to fine-tune everything.
        dropout: dropout probability before ``fc``.
        weights_backbone: backbone weights (tag or path) for a backbone name.

    ``forward(x[N, C, H, W])`` returns logits ``[N, num_classes]``. The state dict is ``backbone.*`` and ``fc.*``;
    ``load_state_dict`` also takes torchvision's flat ResNet layout (``conv1.*`` ... ``fc.*``).
    """

    def __init__(
        self,
        backbone: str | FeatureExtractor,
        num_classes: int,
        freeze_backbone: bool = True,
        dropout: float = 0.0,
        *,
        weights_backbone: Any = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"Classifier: num_classes={num_classes!r} must be a positive int")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"Classifier: dropout={dropout!r} must be in [0, 1)")
        needed = ("c5",) if isinstance(backbone, str) else ()
        self.backbone = resolve_backbone(backbone, needed, "Classifier", weights_backbone)
        last = self.backbone.feature_info[-1]
        self.feature = last.name
        self.num_classes = num_classes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(last.channels, num_classes)
        self._own_frozen_stages = self.backbone.frozen_stages  # what the backbone froze itself
        self.freeze_backbone = freeze_backbone
        self.register_load_state_dict_pre_hook(_accept_torchvision_layout)

    @property
    def freeze_backbone(self) -> bool:
        return self._freeze_backbone

    @freeze_backbone.setter
    def freeze_backbone(self, value: bool) -> None:
        self._freeze_backbone = bool(value)
        # all stages, or back to the stages the backbone froze itself
        self.backbone.freeze(len(self.backbone.stage_modules()) - 1 if value else self._own_frozen_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if getattr(self, "_freeze_backbone", False):
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics
        return self

    def forward(self, x: Tensor) -> Tensor:
        feature = self.backbone(x)[self.feature]
        return self.fc(self.dropout(torch.flatten(self.pool(feature), 1)))


def _accept_torchvision_layout(module: Classifier, state_dict: dict[str, Tensor], prefix: str, *_: Any) -> None:
    # A torchvision / timm ResNet checkpoint (conv1.*, ..., fc.*) renamed to ours in place, as load_state_dict
    # passes its own copy; the key map is the one of resdense.backbones.load_weights.
    if prefix + "conv1.weight" not in state_dict:
        return
    for flat, own in torchvision_key_map(module).items():
        if flat != own and prefix + flat in state_dict:
            state_dict[prefix + own] = state_dict.pop(prefix + flat)


def create_classifier(
    name: str,
    num_classes: int = 1000,
    *,
    weights: str | os.PathLike | Mapping[str, Tensor] | None = None,
    freeze_backbone: bool = False,
    dropout: float = 0.0,
    **kwargs: Any,
) -> Classifier:
    """The full ResNet classifier, torchvision's ``resnet50(weights=...)``: our ResNet, average pool and ``fc``.

    Args:
        name: one of :func:`resdense.backbones.list_backbones`.
        num_classes: number of logits; with ``weights`` for another number ``fc`` keeps its initialisation and
            ``model.load_report`` says so.
        weights: ``None``, a torchvision tag (``"imagenet"``, ``"IMAGENET1K_V2"``), a file or a state dict, in
            torchvision's / timm's flat layout (``conv1.*`` ... ``fc.*``) or a :class:`Classifier`'s; ``fc`` loads too.
        freeze_backbone: False (the default here): every parameter trains, as torchvision's model.
        dropout: dropout probability before ``fc``.
        **kwargs: :func:`resdense.backbones.create_backbone` arguments (``in_channels``, ``norm``, ...) except
            ``out_features``.

    Returns:
        A :class:`Classifier` with ``pretrained_cfg`` (``mean``, ``std``, ``weights``, ``categories``);
        ``forward(x[N, C, H, W]) -> logits[N, num_classes]``.
    """
    backbone = create_backbone(name, out_features=("c5",), **kwargs)
    model = Classifier(backbone, num_classes, freeze_backbone=freeze_backbone, dropout=dropout)
    return load_pretrained(model, weights, arch=name)
