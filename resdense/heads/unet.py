"""U-Net (Ronneberger et al., 2015) on a resdense backbone, built on smp's ``UnetDecoder`` and ``SegmentationHead``.

Channels come from the backbone's ``feature_info``; the decoder and head are smp's own modules with smp's
initialisation, so ``UNet("resnet34")`` equals ``smp.Unet("resnet34")`` layer for layer (keys map with
:func:`map_smp_unet_keys`) and computes the same logits on inputs whose sides are multiples of 32.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base.initialization import initialize_decoder, initialize_head
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import Tensor, nn

from resdense.backbones import FeatureExtractor, pad_to_multiple
from resdense.errors import ConfigError

from .backbone_features import resolve_backbone

__all__ = ["UNet", "map_smp_unet_keys"]

_STAGES = ("c1", "c2", "c3", "c4", "c5")


class UNet(nn.Module):
    """U-Net with skips from ``c1..c5`` of a ResNet backbone, returning logits ``[N, num_classes, H, W]``.

    Args:
        backbone: a backbone name (``"resnet34"``) or a feature extractor instance (widened with its
            ``set_out_features`` to return the ``c1..c5`` the decoder reads).
        num_classes: output channels: 1 for binary segmentation (use a sigmoid / BCE), K for K classes (softmax).
        in_channels: input channels (1 for grayscale); loaded RGB weights are adapted by ``create_backbone``.
        decoder_channels: output channels of the decoder blocks, coarse to fine; its length (1..5) is the depth,
            i.e. how many of ``c1..c5`` are used (5: all).
        weights_backbone: backbone weights (tag or path) for a backbone name.
        decoder_norm: smp's ``use_norm`` for the decoder convolutions (``"batchnorm"``, ``"groupnorm"``, ...).
        decoder_attention_type: ``None`` or ``"scse"`` (smp).
        decoder_interpolation: up-sampling mode of the decoder (smp's default ``"nearest"``).

    ``forward(x[N, in_channels, H, W])`` works for any ``H, W``: the input is zero-padded at the bottom and right to
    the next multiple of ``size_divisibility`` (the coarsest stride used, 32 for the full depth), so every decoder
    step is an exact 2x up-sampling, and the logits are cropped back to ``H x W``. Zero is the mean of a
    mean/std-normalised image. Sizes that are already multiples are not padded.
    """

    def __init__(
        self,
        backbone: str | FeatureExtractor = "resnet34",
        num_classes: int = 1,
        in_channels: int = 3,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        weights_backbone: Any = None,
        *,
        decoder_norm: str | bool | dict = "batchnorm",
        decoder_attention_type: str | None = None,
        decoder_interpolation: str = "nearest",
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"UNet: num_classes={num_classes!r} must be a positive int (1 for binary)")
        decoder_channels = tuple(decoder_channels)
        if not 1 <= len(decoder_channels) <= 5 or not all(isinstance(c, int) and c > 0 for c in decoder_channels):
            raise ConfigError(f"UNet: decoder_channels={decoder_channels!r} must be 1 to 5 positive ints")
        self.in_features = _STAGES[: len(decoder_channels)]
        kwargs = {"in_channels": in_channels} if isinstance(backbone, str) else {}
        self.backbone = resolve_backbone(backbone, self.in_features, "UNet", weights_backbone, **kwargs)
        backbone_in = getattr(self.backbone, "in_channels", in_channels)
        if backbone_in != in_channels:
            raise ConfigError(f"UNet: in_channels={in_channels} but the backbone instance takes {backbone_in} channels")
        self.num_classes, self.in_channels = num_classes, in_channels
        channels = self.backbone.channels
        encoder_channels = [in_channels] + [channels[n] for n in self.in_features]
        self.decoder = _unet_decoder(encoder_channels, decoder_channels, decoder_norm, decoder_attention_type,
                                     decoder_interpolation)
        self.segmentation_head = SegmentationHead(decoder_channels[-1], num_classes, kernel_size=3)
        initialize_decoder(self.decoder)
        initialize_head(self.segmentation_head)
        self.size_divisibility = max(self.backbone.strides[n] for n in self.in_features)
        # smp < 0.5 decoders take forward(*features), 0.5 takes forward(features).
        params = inspect.signature(self.decoder.forward).parameters.values()
        self._star_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)

    def forward(self, x: Tensor) -> Tensor:
        """``x[N, in_channels, H, W]`` -> logits ``[N, num_classes, H, W]``."""
        padded, (h, w) = pad_to_multiple(x, self.size_divisibility)
        logits = self.forward_padded(padded)
        return logits[..., :h, :w] if padded is not x else logits

    def forward_padded(self, x: Tensor) -> Tensor:
        """``forward`` for sides that are multiples of ``size_divisibility``: free of shape-dependent control flow,
        so ``torch.fx`` can trace it (int8 quantization)."""
        feats = self.backbone(x)
        features = [x] + [feats[n] for n in self.in_features]  # smp's layout: the input first, then c1..c_depth
        return self.segmentation_head(self._decode(features))

    def _decode(self, features: list[Tensor]) -> Tensor:
        return self.decoder(*features) if self._star_args else self.decoder(features)


def _unet_decoder(encoder_channels, decoder_channels, norm, attention, interpolation) -> nn.Module:
    """smp's UnetDecoder across the installed version's signature (``use_norm`` in 0.5, ``use_batchnorm`` before)."""
    params = inspect.signature(UnetDecoder.__init__).parameters
    kwargs: dict[str, Any] = {"attention_type": attention}
    if "use_norm" in params:
        kwargs["use_norm"] = norm
    else:
        kwargs["use_batchnorm"] = norm not in (False, "identity", None)
    if "interpolation_mode" in params:
        kwargs["interpolation_mode"] = interpolation
    elif interpolation != "nearest":
        raise ConfigError(f"UNet: decoder_interpolation={interpolation!r} needs segmentation-models-pytorch >= 0.5")
    if "add_center_block" in params:
        kwargs["add_center_block"] = False
    else:
        kwargs["center"] = False
    return UnetDecoder(encoder_channels=encoder_channels, decoder_channels=decoder_channels,
                       n_blocks=len(decoder_channels), **kwargs)


def map_smp_unet_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an ``smp.Unet`` state dict (ResNet encoder) onto :class:`UNet`: ``encoder.*`` -> ``backbone.*``
    (smp's ResNet encoder keeps torchvision's module names); ``decoder.*`` and ``segmentation_head.*`` are unchanged.
    The classifier keys smp may carry (``encoder.fc.*``) are dropped."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("encoder."):
            key = "backbone." + key[len("encoder."):]
            if key.startswith("backbone.fc."):
                continue
        out[key] = value
    return out
