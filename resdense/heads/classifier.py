"""A classification head (global average pool + linear) on any backbone, for transfer learning."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from resdense.backbones import FeatureExtractor, ResNet
from resdense.errors import ConfigError

from ._features import resolve_backbone

__all__ = ["Classifier"]


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

    ``forward(x[N, C, H, W])`` returns logits ``[N, num_classes]``.
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
        self._own_frozen_stages = getattr(self.backbone, "frozen_stages", None)  # what the backbone froze itself
        self.freeze_backbone = freeze_backbone

    @property
    def freeze_backbone(self) -> bool:
        return self._freeze_backbone

    @freeze_backbone.setter
    def freeze_backbone(self, value: bool) -> None:
        self._freeze_backbone = bool(value)
        if isinstance(self.backbone, ResNet):  # stages the backbone froze itself stay frozen when unfreezing
            self.backbone.freeze(4 if value else self._own_frozen_stages)
        else:
            self.backbone.requires_grad_(not value)
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if getattr(self, "_freeze_backbone", False):
            self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics
        return self

    def forward(self, x: Tensor) -> Tensor:
        feature = self.backbone(x)[self.feature]
        return self.fc(self.dropout(torch.flatten(self.pool(feature), 1)))
