"""ResNet, ResNeXt and Wide ResNet as feature extractors (He et al. 2016; Xie et al. 2017; Zagoruyko & Komodakis 2016).

``ResNet.forward(x[N, C, H, W])`` returns ``{"c1": ..., "c5": ...}`` limited to ``out_features``; stages after the
last requested one are not built. Module names are torchvision's, so its ImageNet checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from resdense._torch_private import BatchNormBase
from resdense.errors import ConfigError

from .blocks import BasicBlock, Bottleneck
from .contract import FeatureExtractor, FeatureInfo, select_features
from .inference import optimize_for_inference
from .norm import BATCH_NORMS, get_norm_layer

__all__ = ["ResNet", "STAGE_NAMES", "DEFAULT_OUT_FEATURES", "VALID_OUTPUT_STRIDES"]

STAGE_NAMES = ("c1", "c2", "c3", "c4", "c5")
DEFAULT_OUT_FEATURES = ("c2", "c3", "c4", "c5")
# Which of layer2..layer4 trade their stride for dilation (DeepLab, Chen et al. 2017), per output stride.
_DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
VALID_OUTPUT_STRIDES = tuple(sorted(_DILATE))


class ResNet(FeatureExtractor):
    """A ResNet feature extractor.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in layer1..layer4.
        groups, width_per_group: ResNeXt cardinality and width (Wide ResNet: width_per_group=128).
        out_features: names among ``c1..c5`` to return (c1: stem after ReLU, stride 2; c2..c5: layer1..layer4).
        output_stride: 32, 16 or 8; below 32 the last stages use dilation instead of stride.
        frozen_stages: -1 freezes nothing; k >= 0 freezes the stem and layer1..layer_k (no gradients, norm in eval).
        norm: "bn", "frozen_bn", "gn", "sync_bn" or a callable ``f(num_channels) -> nn.Module``.
        in_channels: channels of the input image.
        grad_checkpointing: recompute each stage's activations in backward to save memory.
        zero_init_residual: zero the last norm's weight in each block (Goyal et al. 2017), as torchvision offers.
        name: architecture name, used in messages.
    """

    # The stem's convolution, norm and activation, each applied once as relu(bn1(conv1(x))): optimize_for_inference
    # fuses them into one convolution once the norm is folded (resdense.backbones.inference.fuse_blocks).
    fusable_stem = ("conv1", "bn1", "relu")

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        groups: int = 1,
        width_per_group: int = 64,
        out_features: Sequence[str] = DEFAULT_OUT_FEATURES,
        output_stride: int = 32,
        frozen_stages: int = -1,
        norm: str | Callable[[int], nn.Module] = "bn",
        in_channels: int = 3,
        grad_checkpointing: bool = False,
        zero_init_residual: bool = False,
        name: str = "resnet",
    ) -> None:
        super().__init__()
        self.name = name
        if output_stride not in _DILATE:
            raise ConfigError(f"{name}: output_stride={output_stride!r} is not supported; choose from {VALID_OUTPUT_STRIDES}")
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ConfigError(f"{name}: frozen_stages={frozen_stages!r} must be an int in -1..4")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"{name}: in_channels={in_channels!r} must be a positive int")
        self.in_channels = in_channels
        self.output_stride = output_stride
        self.frozen_stages = frozen_stages
        self.grad_checkpointing = grad_checkpointing
        self.groups, self.base_width = groups, width_per_group
        norm_layer = get_norm_layer(norm)
        self._norm_layer = norm_layer

        self._available = self._all_feature_info(block.expansion, output_stride)
        self.feature_info = select_features(self._available, out_features, name)
        self._return = list(self.out_features)  # a list: TorchScript has no frozenset
        self._num_stages = max(STAGE_NAMES.index(n) for n in self.out_features) + 1  # stem counts as stage 1

        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        if self._num_stages > 1:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes, self.dilation = 64, 1
        for idx, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True)):
            if idx + 2 > self._num_stages:
                break
            dilate = idx > 0 and _DILATE[output_stride][idx - 1]
            setattr(self, f"layer{idx + 1}", self._make_layer(block, planes, layers[idx], stride, dilate))
        del self.inplanes, self.dilation
        self._init_weights(zero_init_residual)
        self.freeze(frozen_stages)

    @staticmethod
    def _all_feature_info(expansion: int, output_stride: int) -> tuple[FeatureInfo, ...]:
        strides, s = [2, 4], 4
        for dilate in _DILATE[output_stride]:
            s = s if dilate else s * 2
            strides.append(s)
        channels = [64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        return tuple(FeatureInfo(n, c, st) for n, c, st in zip(STAGE_NAMES, channels, strides, strict=True))

    def _make_layer(self, block, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        # Same recipe as torchvision: the first block keeps the previous dilation, later ones use the new one.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                self._norm_layer(planes * block.expansion),
            )
        common = dict(groups=self.groups, base_width=self.base_width, norm_layer=self._norm_layer)
        layers = [block(self.inplanes, planes, stride, downsample, dilation=self.dilation,
                        first_dilation=previous_dilation, **common)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation, **common) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (BatchNormBase, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)) and getattr(m.last_norm(), "weight", None) is not None:
                    nn.init.constant_(m.last_norm().weight, 0)

    def set_out_features(self, out_features: Sequence[str]) -> None:
        """Change which features ``forward`` returns, among the stages already built; weights are untouched.

        A head that needs more maps than the backbone was built with (a U-Net also reads ``c1``) widens it here.
        """
        info = select_features(self._available, out_features, self.name)
        unbuilt = [f.name for f in info if STAGE_NAMES.index(f.name) + 1 > self._num_stages]
        if unbuilt:
            raise ConfigError(f"{self.name}: the stages of {unbuilt} were not built; create the backbone with "
                              f"out_features={tuple(f.name for f in info)}")
        self.feature_info = info
        self._return = list(self.out_features)

    # ---- freezing (FeatureExtractor.freeze) ------------------------------------------------------------------
    def stage_modules(self) -> list[list[nn.Module]]:
        """Stage 0 the stem (``conv1``, ``bn1``), stages 1..4 ``layer1..layer4`` (empty when not built), so
        ``freeze(k)`` freezes the stem and layer1..layer_k and ``freeze(4)`` the whole backbone."""
        layers = [getattr(self, f"layer{i}", None) for i in range(1, 5)]
        return [[self.conv1, self.bn1]] + [[layer] if layer is not None else [] for layer in layers]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward (training mode with gradients only)."""
        self.grad_checkpointing = bool(enable)

    # ---- forward --------------------------------------------------------------------------------------------
    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and self.training and torch.is_grad_enabled()

    def _checkpointed(self, stage: int, x: Tensor) -> Tensor:
        layer = getattr(self, f"layer{stage}")
        return checkpoint(layer, x, use_reentrant=False,
                          context_fn=lambda: (nullcontext(), _keep_norm_stats(layer)))

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        if not torch.jit.is_tracing():  # the ONNX exporter's trace would warn that a shape becomes a constant
            check_input(x, self.in_channels, self.name)
        out: dict[str, Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        if "c1" in self._return:
            out["c1"] = x
        # The stages spelled out rather than looped over, so that torch.jit.script compiles this method:
        # it resolves hasattr() when it compiles (stages after the last requested one are not built) and cannot
        # take a module as an argument. A scripted backbone ignores grad_checkpointing.
        if hasattr(self, "layer1"):
            x = self.maxpool(x)
            x = self.layer1(x) if torch.jit.is_scripting() or not self._checkpointing() else self._checkpointed(1, x)
            if "c2" in self._return:
                out["c2"] = x
        if hasattr(self, "layer2"):
            x = self.layer2(x) if torch.jit.is_scripting() or not self._checkpointing() else self._checkpointed(2, x)
            if "c3" in self._return:
                out["c3"] = x
        if hasattr(self, "layer3"):
            x = self.layer3(x) if torch.jit.is_scripting() or not self._checkpointing() else self._checkpointed(3, x)
            if "c4" in self._return:
                out["c4"] = x
        if hasattr(self, "layer4"):
            x = self.layer4(x) if torch.jit.is_scripting() or not self._checkpointing() else self._checkpointed(4, x)
            if "c5" in self._return:
                out["c5"] = x
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x[N, in_channels, H, W]`` -> ``{name: [N, C_name, ceil(H/stride), ceil(W/stride)]}`` in stride order."""
        return self.forward_features(x)

    def optimize_for_inference(self, **kwargs) -> nn.Module:
        """An eval-only, no-autograd copy for fast inference (BN folded, fused convolutions, channels-last, optional
        ``compile`` / ``dtype``); the keyword arguments and details are :func:`resdense.backbones.optimize_for_inference`'s."""
        return optimize_for_inference(self, **kwargs)

    def extra_repr(self) -> str:
        return f"name={self.name}, out_features={self.out_features}, output_stride={self.output_stride}"


def check_input(x: Tensor, in_channels: int, name: str) -> None:
    """Refuse an input that is not ``[N, in_channels, H, W]``: a one-line ``ValueError`` naming both shapes.

    ``torch.fx`` records a call to this function instead of tracing into it (``torch.fx.wrap`` below), so
    ``torch.fx.symbolic_trace`` traces the ResNet itself and the traced graph still checks its input.
    """
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{name}: expected input [N, {in_channels}, H, W], got {list(x.shape)}")


torch.fx.wrap("check_input")


@contextmanager
def _keep_norm_stats(module: nn.Module):
    """Restore BatchNorm running statistics after checkpoint recomputation, so they are updated once, not twice."""
    norms = [m for m in module.modules() if isinstance(m, BATCH_NORMS) and getattr(m, "running_mean", None) is not None]
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved, strict=True):
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)
