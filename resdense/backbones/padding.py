"""Zero-padding an input to a backbone's ``size_divisibility`` and cropping back: the one implementation behind the
U-Net, the int8 U-Net and sliding-window inference."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["pad_to_multiple"]


def pad_to_multiple(x: Tensor, divisor: int) -> tuple[Tensor, tuple[int, int]]:
    """``x[..., H, W]`` zero-padded at the bottom and right to sides that are multiples of ``divisor`` (``x`` itself
    when they already are), and the original ``(H, W)`` to crop back to (``out[..., :H, :W]``)."""
    h, w = x.shape[-2:]
    ph, pw = -h % divisor, -w % divisor
    return (F.pad(x, (0, pw, 0, ph)) if ph or pw else x), (h, w)
