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

    Besides the metadata, the contract has the methods a head calls on any backbone, each with a default that suits
    an extractor with fixed outputs and no stages of its own; :class:`~resdense.backbones.ResNet` overrides them:

    - :meth:`set_out_features`: return other maps (a U-Net widens a backbone to ``c1``).
    - :meth:`freeze` / :meth:`stage_modules` / ``frozen_stages``: freeze the stem and the first stages.
    - :meth:`set_grad_checkpointing`: recompute activations in backward to save memory (timm's name).

    ``feature_info`` and the properties derived from it are Python-side metadata, never read by ``forward``:
    ``torch.jit.script`` skips them (it accepts neither the dataclass tuple nor the comprehensions).
    """

    __jit_ignored_attributes__ = ["feature_info"]
    __jit_unused_properties__ = ["out_features", "channels", "strides", "size_divisibility"]

    feature_info: tuple[FeatureInfo, ...] = ()
    # The ``stages`` of the last :meth:`freeze` (-1: nothing frozen). Not annotated: torch.jit.script would read the
    # annotation, a string under ``from __future__ import annotations``, and refuse it.
    frozen_stages = -1

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

    def _owner(self) -> str:
        return getattr(self, "name", None) or type(self).__name__

    # ---- outputs -----------------------------------------------------------------------------------------------
    def set_out_features(self, out_features: Sequence[str]) -> None:
        """Make ``forward`` return ``out_features`` (in stride order) from now on; weights are untouched.

        Raises:
            ConfigError: a name the extractor cannot return, naming it and what it can. The default extractor
                returns a fixed set of maps, so it accepts exactly its own ``out_features``; an extractor that can
                return others overrides this method.
        """
        wanted = (out_features,) if isinstance(out_features, str) else tuple(out_features)
        cannot = [n for n in wanted if n not in self.out_features]
        if cannot or len(set(wanted)) != len(self.feature_info):
            raise ConfigError(f"{self._owner()} returns {list(self.out_features)} and cannot be set to return "
                              f"{list(wanted)}" + (f" (it has no {cannot})" if cannot else ""))

    # ---- freezing ----------------------------------------------------------------------------------------------
    def stage_modules(self) -> list[list[nn.Module]]:
        """The extractor's layers in stages, input to output: stage 0 is the stem. :meth:`freeze` freezes a prefix
        of this list. The default is one stage holding every child module."""
        return [list(self.children())]

    def freeze(self, stages: int) -> FeatureExtractor:
        """Freeze stages ``0..stages`` of :meth:`stage_modules` (0: the stem; ``-1``: nothing): their parameters get
        ``requires_grad=False`` and their modules stay in eval mode, also under ``train()``, so norm statistics do
        not move (mmdet's ``frozen_stages``, detectron2's ``freeze_at``). The later stages are made trainable, so
        ``freeze(k)`` also undoes a deeper freeze. Returns ``self``.

        Raises:
            ConfigError: ``stages`` is not an int from -1 to the last stage.
        """
        modules = self.stage_modules()
        last = len(modules) - 1
        if isinstance(stages, bool) or not isinstance(stages, int) or not -1 <= stages <= last:
            raise ConfigError(f"{self._owner()}: freeze({stages!r}): stages must be an int in -1..{last}")
        self.frozen_stages = stages
        for k, stage in enumerate(modules):
            for m in stage:
                m.requires_grad_(k > stages)
        return self.train(self.training)

    def train(self, mode: bool = True) -> FeatureExtractor:
        super().train(mode)
        if self.frozen_stages >= 0:  # frozen stages keep their norm statistics
            for stage in self.stage_modules()[: self.frozen_stages + 1]:
                for m in stage:
                    m.eval()
        return self

    # ---- memory ------------------------------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward instead of keeping them (timm's method name).

        Raises:
            ConfigError: ``enable`` on an extractor that does not implement it (the default).
        """
        if enable:
            raise ConfigError(f"{self._owner()} does not support gradient checkpointing")


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

