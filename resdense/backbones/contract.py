"""The feature-extractor contract shared by every backbone and neck.

A feature extractor is an ``nn.Module`` whose ``forward(x)`` returns ``dict[str, Tensor]`` keyed by the names in
its ``feature_info``, in stride order, and whose ``feature_info`` is a tuple of :class:`FeatureInfo`. Heads build
from that metadata alone (detectron2's ``Backbone.output_shape()``, timm's ``feature_info``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from resdense.errors import ConfigError

__all__ = ["FeatureInfo", "FeatureExtractor"]


@dataclass(frozen=True)
class FeatureInfo:
    """One output map of a feature extractor.

    Args:
        name: key in the output dict (``c1..c5`` for backbone stages, ``p2..p7`` for pyramid levels).
        channels: number of channels C of the map ``[N, C, H/stride, W/stride]``.
        stride: total down-sampling factor relative to the input (a dilated stage keeps its input's stride).
    """

    name: str
    channels: int
    stride: int


class FeatureExtractor(nn.Module):
    """Base class of the contract: subclasses set ``feature_info`` and return a dict keyed by its names.

    ``feature_info`` and the properties derived from it are Python-side metadata, never read by ``forward``:
    ``torch.jit.script`` skips them (it accepts neither the dataclass tuple nor the comprehensions).
    """

    __jit_ignored_attributes__ = ["feature_info"]
    __jit_unused_properties__ = ["out_features", "channels", "strides", "size_divisibility"]

    feature_info: tuple[FeatureInfo, ...] = ()

    @property
    def out_features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.feature_info)

    @property
    def channels(self) -> dict[str, int]:
        return {f.name: f.channels for f in self.feature_info}

    @property
    def strides(self) -> dict[str, int]:
        return {f.name: f.stride for f in self.feature_info}

    @property
    def size_divisibility(self) -> int:
        """Input sizes divisible by this value give maps of exactly ``H / stride`` (detectron2's contract)."""
        return max((f.stride for f in self.feature_info), default=1)


def select_features(available: Sequence[FeatureInfo], wanted: Sequence[str], owner: str) -> tuple[FeatureInfo, ...]:
    """Return the ``FeatureInfo`` of ``wanted`` in stride order, refusing unknown or repeated names."""
    by_name = {f.name: f for f in available}
    if isinstance(wanted, str):
        wanted = (wanted,)
    wanted = tuple(wanted)
    if not wanted:
        raise ConfigError(f"{owner}: out_features is empty; choose from {list(by_name)}")
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ConfigError(f"{owner}: unknown out_features {unknown}; choose from {list(by_name)}")
    repeated = sorted({n for n in wanted if wanted.count(n) > 1})
    if repeated:
        raise ConfigError(f"{owner}: out_features lists {repeated} more than once")
    order = [f.name for f in available]
    return tuple(by_name[n] for n in sorted(wanted, key=order.index))

