"""Feature Pyramid Network (Lin et al., 2017) on the feature contract.

The FPN *is* torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` (same modules, same state-dict keys, so
torchvision detection checkpoints load unchanged) and also a :class:`~resdense.backbones.FeatureExtractor`: it reads
``{c_k: [N, C_k, H/2^k, W/2^k]}`` and returns ``{p_k: [N, out_channels, H/2^k, W/2^k]}``, keyed by stride, with its
own ``feature_info``. A backbone and a backbone+FPN are therefore used alike (detectron2's habit).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from resdense.backbones import FeatureExtractor, FeatureInfo, get_norm_layer
from resdense.errors import ConfigError

__all__ = ["FPN", "EXTRA_LEVELS"]

EXTRA_LEVELS = ("maxpool", "p6p7", None)


class FPN(FeatureExtractor, FeaturePyramidNetwork):
    """Top-down pyramid with lateral 1x1 and output 3x3 convolutions, plus optional coarser levels.

    Args:
        feature_info: the input maps, a sequence of :class:`FeatureInfo` or a feature extractor (its
            ``feature_info`` is read). Any subset of ``c2..c5`` works; strides must be strictly increasing powers of
            two, since level ``p_k`` is named after its stride ``2**k``.
        out_channels: channels of every pyramid level.
        extra_levels: ``"maxpool"`` adds one level by stride-2 subsampling of the last one (Faster/Mask R-CNN's
            ``P6``); ``"p6p7"`` adds two levels by 3x3 stride-2 convolutions (RetinaNet/FCOS ``P6``, ``P7``);
            ``None`` adds nothing.
        p6_from: input of the ``"p6p7"`` block: ``"p5"`` (the last pyramid level; torchvision's
            ``retinanet_resnet50_fpn`` and ``fcos_resnet50_fpn``, i.e. the v1 recipes, and the FCOS paper) or
            ``"c5"`` (the last backbone map; the RetinaNet paper and torchvision's ``retinanet_resnet50_fpn_v2``).
        norm: normalisation after each FPN convolution: ``None`` (torchvision's default), ``"bn"``, ``"gn"``, ...

    ``forward(features)`` takes the backbone's dict (extra keys are ignored) and returns an ``OrderedDict`` keyed by
    ``out_features`` in stride order.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo] | FeatureExtractor,
        out_channels: int = 256,
        extra_levels: str | None = "maxpool",
        *,
        p6_from: str = "p5",
        norm: str | Callable[[int], nn.Module] | None = None,
    ) -> None:
        in_info = tuple(getattr(feature_info, "feature_info", feature_info))
        levels = _levels(in_info)
        if extra_levels not in EXTRA_LEVELS:
            raise ConfigError(f"FPN: extra_levels={extra_levels!r} is not supported; choose from {EXTRA_LEVELS}")
        if p6_from not in ("p5", "c5"):
            raise ConfigError(f"FPN: p6_from={p6_from!r} must be 'p5' or 'c5'")
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ConfigError(f"FPN: out_channels={out_channels!r} must be a positive int")

        extra: nn.Module | None = None
        n_extra = 0
        if extra_levels == "maxpool":
            extra, n_extra = LastLevelMaxPool(), 1
        elif extra_levels == "p6p7":
            in_p6 = out_channels if p6_from == "p5" else in_info[-1].channels
            extra, n_extra = LastLevelP6P7(in_p6, out_channels), 2
            # torchvision infers P5-vs-C5 from in_channels == out_channels, which is wrong when C5 happens to
            # have out_channels channels: state the choice explicitly.
            extra.use_P5 = p6_from == "p5"
        super().__init__(
            [f.channels for f in in_info], out_channels, extra_blocks=extra,
            norm_layer=get_norm_layer(norm) if norm is not None else None,
        )
        self.in_feature_info = in_info
        self.in_features = tuple(f.name for f in in_info)
        self.extra_levels, self.p6_from = extra_levels, p6_from
        top = levels[-1]
        levels = levels + [top + i for i in range(1, n_extra + 1)]
        self.feature_info = tuple(FeatureInfo(f"p{k}", out_channels, 2**k) for k in levels)

    def forward(self, features: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """``{c_k: [N, C_k, h_k, w_k]}`` -> ``OrderedDict{p_k: [N, out_channels, h_k, w_k]}`` (extra levels halve)."""
        missing = [n for n in self.in_features if n not in features]
        if missing:
            raise KeyError(f"FPN: input dict lacks {missing}; it was built for {list(self.in_features)}")
        x = OrderedDict((n, features[n]) for n in self.in_features)
        out = super().forward(x)
        # torchvision names the extra levels "pool" / "p6", "p7"; ours are named by stride, in the same order.
        return OrderedDict(zip(self.out_features, out.values(), strict=True))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, extra_levels={self.extra_levels!r}"


def _levels(info: Sequence[FeatureInfo]) -> list[int]:
    """log2 of each stride, refusing strides that are not strictly increasing powers of two."""
    if not info:
        raise ConfigError("FPN: feature_info is empty")
    strides = [f.stride for f in info]
    levels = [int(round(math.log2(s))) if isinstance(s, int) and s > 0 else -1 for s in strides]
    bad = [f"{f.name} (stride {f.stride})" for f, k in zip(info, levels, strict=True) if k < 1 or 2**k != f.stride]
    if bad:
        raise ConfigError(f"FPN: strides must be powers of two; got {', '.join(bad)}")
    for prev, cur, f_prev, f_cur in zip(levels, levels[1:], info, info[1:], strict=False):
        if cur <= prev:
            raise ConfigError(
                f"FPN: strides must strictly increase; {f_prev.name} and {f_cur.name} have strides "
                f"{f_prev.stride} and {f_cur.stride} (a dilated backbone, output_stride < 32, cannot feed an FPN)"
            )
    return levels
