"""int8 U-Net for CPU inference: the whole network (encoder, smp decoder, head) in one quantized graph.

The float input is quantized once, every convolution (+ folded BatchNorm + ReLU), residual add + ReLU, up-sampling
and skip concatenation runs in int8, and only the logits are dequantized (see :mod:`resdense.backbones.quantize`).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from resdense.backbones import pad_to_multiple
from resdense.backbones.quantize import QuantizedModule, calibration_batches, quantize_module
from resdense.errors import ConfigError

from .unet import UNet

__all__ = ["QuantizedUNet", "quantize_unet"]


class _PaddedUNet(nn.Module):
    """``UNet.forward_padded`` as ``forward``: what ``torch.fx`` traces (``quantize_module`` copies it first)."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor) -> Tensor:
        return self.unet.forward_padded(x)


class QuantizedUNet(nn.Module):
    """The int8 counterpart of a :class:`UNet`: ``forward(x[N, C, H, W])`` -> float32 logits ``[N, K, H, W]``, any
    ``H, W`` (padded to ``size_divisibility`` and cropped back, as the float model). Inference only."""

    def __init__(self, core: QuantizedModule, size_divisibility: int, num_classes: int) -> None:
        super().__init__()
        self.core = core
        self.size_divisibility = size_divisibility
        self.num_classes = num_classes
        self.in_channels = core.in_channels

    def forward(self, x: Tensor) -> Tensor:
        padded, (h, w) = pad_to_multiple(x, self.size_divisibility)
        logits = self.core(padded)
        return logits[..., :h, :w] if padded is not x else logits


def quantize_unet(unet: UNet, calibration: Tensor | Iterable, *, n: int = 32, batch_size: int = 8) -> QuantizedUNet:
    """int8 copy of ``unet`` calibrated on the first ``n`` images of ``calibration`` (a tensor ``[N, C, H, W]``, a
    loader or a dataset of ``(image, mask)``, normalised as in training); images are padded to
    ``size_divisibility`` as ``forward`` does. ``unet`` is left untouched.

    The backbone must be one ``torch.fx`` can trace, as a resdense ResNet (BatchNorm norms) is.

    Raises:
        ConfigError: ``unet`` is not a :class:`UNet`, or ``torch.fx`` cannot trace it.
    """
    if not isinstance(unet, UNet):
        raise ConfigError(f"quantize_unet: expected a UNet on a resdense ResNet, got {type(unet).__name__} (or on "
                          "another backbone that torch.fx can trace)")
    d = unet.size_divisibility
    batches = [pad_to_multiple(b, d)[0] for b in calibration_batches(calibration, n, batch_size)]
    graph = quantize_module(_PaddedUNet(unet), batches, n=n, batch_size=batch_size)
    return QuantizedUNet(QuantizedModule(graph, unet.in_channels), d, unet.num_classes).eval()
