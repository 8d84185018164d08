"""Any resdense backbone as a segmentation-models-pytorch encoder, so every smp decoder builds on it.

smp creates encoders by name from the dict ``segmentation_models_pytorch.encoders.encoders`` (name ->
``{"encoder": class, "params": kwargs, "pretrained_settings": ...}``), then calls ``set_in_channels`` and, for an
output stride below 32, ``make_dilated``. :func:`register_smp_encoders` adds ``"resdense-<backbone>"`` entries whose
class, :class:`ResdenseEncoder`, follows smp's ``EncoderMixin`` contract: ``forward(x)`` returns
``[x, c1, ..., c_depth]`` and ``out_channels`` lists their channels. :func:`smp_model` is the one-liner.

:func:`register_smp_encoders` is the only function here that writes to smp's registry, and only when called:
importing resdense registers nothing, and :func:`smp_model` builds its model without writing to
``segmentation_models_pytorch.encoders.encoders`` (nothing added, nothing left behind).

smp would fetch ``encoder_weights`` from the Hugging Face Hub; resdense weights go through ``weights_backbone``
instead (ImageNet tags or files, as ``create_backbone``), so with smp's classes directly pass
``encoder_weights=None``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import segmentation_models_pytorch as smp
import segmentation_models_pytorch.encoders as smp_encoders
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import Tensor, nn

from resdense.backbones import (
    STAGE_NAMES,
    FeatureExtractor,
    adapt_input_conv,
    create_backbone,
    list_backbones,
    load_weights,
)
from resdense.errors import ConfigError

from .backbone_features import ensure_features

__all__ = ["SMP_PREFIX", "ResdenseEncoder", "register_smp_encoders", "smp_model", "smp_architectures"]

SMP_PREFIX = "resdense-"
# One smp model built at a time by smp_model: each points smp's registry name at its own view (see _encoder_view).
_view_lock = threading.Lock()
# smp architectures that accept only Vision Transformer encoders.
_VIT_ONLY = {"DPT": "DPT needs a Vision Transformer encoder (smp accepts only 'tu-' ViTs)"}


class _Ref:
    """Holds a backbone instance in an smp registry entry: smp deep-copies ``params``, and the instance must be
    used as it is, not copied."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __deepcopy__(self, memo: dict) -> _Ref:
        return self


class ResdenseEncoder(nn.Module, EncoderMixin):
    """smp encoder wrapping a resdense backbone.

    Args:
        backbone: a backbone name (built with ``out_features=c1..c_depth`` and ``output_stride``) or a ``_Ref`` to an
            instance (see :func:`smp_model`).
        depth: number of down-sampling stages smp uses (1..5); features ``c1..c_depth`` are returned.
        output_stride: 32, 16 or 8; smp's DeepLabV3(+) and PAN ask for 16 or 8 (dilated last stages).
        **kwargs: further :func:`~resdense.backbones.create_backbone` arguments (``norm``, ``frozen_stages``, ...).

    ``forward(x[N, C, H, W])`` returns ``[x, c1, ..., c_depth]``, each ``[N, C_k, H/2^k, W/2^k]`` (smp's layout).
    """

    def __init__(self, backbone: str | _Ref = "resnet50", depth: int = 5, output_stride: int = 32, **kwargs: Any) -> None:
        nn.Module.__init__(self)
        if not isinstance(depth, int) or not 1 <= depth <= 5:
            raise ConfigError(f"resdense smp encoder: depth={depth!r} must be in 1..5")
        needed = STAGE_NAMES[:depth]
        if isinstance(backbone, _Ref):
            net = backbone.module
            ensure_features(net, needed, "smp encoder")
            built_os = getattr(net, "output_stride", 32)
            if built_os != output_stride and min(output_stride, 2**depth) != min(built_os, 2**depth):
                raise ConfigError(
                    f"smp encoder: the backbone instance has output_stride={built_os} but the smp model asks for "
                    f"{output_stride}; build it with create_backbone(..., output_stride={output_stride})"
                )
            output_stride = built_os
        else:
            net = create_backbone(backbone, out_features=needed, output_stride=output_stride, **kwargs)
        self.backbone = net
        self.name = SMP_PREFIX + getattr(net, "name", type(net).__name__)
        self.features = needed
        self._depth = depth
        self._output_stride = output_stride
        self._in_channels = getattr(net, "in_channels", 3)
        self._out_channels = [self._in_channels] + [net.channels[n] for n in needed]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.backbone(x)
        return [x] + [feats[n] for n in self.features]

    def make_dilated(self, output_stride: int) -> None:
        # The backbone was built with this output stride (dilation in the last stages); nothing to patch.
        if min(output_stride, 2**self._depth) != self.output_stride:
            raise ConfigError(f"smp encoder: built with output_stride={self._output_stride}, asked for {output_stride}")

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Give the stem ``in_channels`` inputs; existing weights are adapted (summed for 1, tiled for more)."""
        if in_channels == self._in_channels:
            return
        if not isinstance(getattr(self.backbone, "conv1", None), nn.Conv2d):
            raise ConfigError(f"smp encoder: cannot change in_channels to {in_channels}")
        old = self.backbone.conv1
        new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        if pretrained:
            new.weight.data.copy_(adapt_input_conv(old.weight.data, in_channels))
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        self.backbone.conv1 = new
        self.backbone.in_channels = in_channels
        self._in_channels = in_channels
        self._out_channels[0] = in_channels

    def get_stages(self) -> dict[int, list[nn.Module]]:
        return {16: [getattr(self.backbone, "layer3", nn.Identity())], 32: [getattr(self.backbone, "layer4", nn.Identity())]}


def register_smp_encoders(names: Iterable[str] | None = None) -> list[str]:
    """Register ``"resdense-<name>"`` smp encoders (all backbones by default); return the encoder names.

    Afterwards ``smp.Unet("resdense-resnet50", encoder_weights=None, classes=3)`` works. Registering again is a
    no-op; a name taken by another encoder is an error.

    Side effect, on purpose: this adds the entries to smp's global registry
    (``segmentation_models_pytorch.encoders.encoders``), where they stay for the life of the process. It is the only
    resdense function that does: importing resdense and calling :func:`smp_model` register nothing.
    """
    registered = []
    for name in names if names is not None else list_backbones():
        key = SMP_PREFIX + name
        entry = smp_encoders.encoders.get(key)
        if entry is not None and entry["encoder"] is not ResdenseEncoder:
            raise ConfigError(f"smp encoder name {key!r} is already taken by {entry['encoder'].__name__}")
        if entry is None:
            smp_encoders.encoders[key] = {"encoder": ResdenseEncoder, "pretrained_settings": {}, "params": {"backbone": name}}
        registered.append(key)
    return registered


def smp_architectures() -> list[str]:
    """Names accepted by :func:`smp_model` (smp's model classes, e.g. ``Unet``, ``UnetPlusPlus``, ``DeepLabV3Plus``)."""
    mapping = getattr(smp, "MODEL_ARCHITECTURES_MAPPING", None)
    if mapping is not None:
        names = {cls.__name__ for cls in mapping.values()}
    else:
        names = {n for n in ("Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "DeepLabV3",
                             "DeepLabV3Plus", "PAN", "UPerNet", "Segformer") if hasattr(smp, n)}
    return sorted(names - set(_VIT_ONLY))


@contextmanager
def _encoder_view(key: str, params: dict[str, Any]) -> Iterator[str]:
    """Let smp's ``get_encoder`` find the encoder ``key`` while an smp model is built, without writing to smp's
    registry: ``get_encoder`` reads the module global ``segmentation_models_pytorch.encoders.encoders`` when called,
    so for the duration of the block that name points at a copy that also holds ``key``, then back at the registry,
    which is never modified (whoever holds it sees no change, during the block or after)."""
    entry = {"encoder": ResdenseEncoder, "pretrained_settings": {}, "params": params}
    with _view_lock:
        registry = smp_encoders.encoders
        smp_encoders.encoders = {**registry, key: entry}
        try:
            yield key
        finally:
            smp_encoders.encoders = registry


def smp_model(
    arch: str,
    backbone: str | FeatureExtractor = "resnet34",
    classes: int = 1,
    *,
    weights_backbone: Any = None,
    in_channels: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the smp model ``arch`` (``"Unet"``, ``"UnetPlusPlus"``, ``"FPN"``, ``"DeepLabV3Plus"``, ``"PSPNet"``,
    ``"Linknet"``, ``"MAnet"``, ``"PAN"``, ...) on a resdense backbone.

    Args:
        arch: an smp architecture name, case-insensitive (see :func:`smp_architectures`).
        backbone: a backbone name or a feature extractor instance (used as it is; it must have the output stride
            the architecture asks for, e.g. ``create_backbone("resnet50", output_stride=16)`` for DeepLabV3Plus).
        classes: output channels of the segmentation head.
        weights_backbone: backbone weights (tag or path) for a backbone name, loaded with resdense's loader.
        in_channels: input channels; default 3, or the instance's.
        **kwargs: passed to the smp class (``encoder_depth``, ``decoder_channels``, ``encoder_output_stride``, ...).

    Returns:
        The smp model; ``model(x[N, in_channels, H, W]) -> [N, classes, H, W]`` (smp's input-size rules apply:
        most architectures need ``H, W`` divisible by the encoder's output stride).

    smp's global encoder registry is not written to: for the time of the call, smp's lookup is pointed at a private
    copy that holds the encoder, then back at the registry (see :func:`register_smp_encoders` to use the
    ``"resdense-<name>"`` encoders with smp's classes directly).
    """
    vit = {n.lower(): reason for n, reason in _VIT_ONLY.items()}
    if isinstance(arch, str) and arch.lower() in vit:
        raise ConfigError(f"smp_model: arch {arch!r} cannot use a ResNet backbone: {vit[arch.lower()]}")
    names = {n.lower(): n for n in smp_architectures()}
    if not isinstance(arch, str) or arch.lower() not in names:
        raise ConfigError(f"smp_model: unknown arch {arch!r}; choose from {', '.join(names.values())}")
    if "encoder_weights" in kwargs or "encoder_name" in kwargs:
        raise ConfigError("smp_model: pass backbone= and weights_backbone=, not encoder_name / encoder_weights")
    if isinstance(backbone, str):
        if backbone not in list_backbones():
            create_backbone(backbone)  # raises the backbone registry's ConfigError with a suggestion
        with _encoder_view(SMP_PREFIX + backbone, {"backbone": backbone}) as name:
            model = smp.create_model(arch, encoder_name=name, encoder_weights=None, in_channels=in_channels or 3,
                                     classes=classes, **kwargs)
        if weights_backbone is not None:
            model.encoder.backbone.load_report = load_weights(model.encoder.backbone, weights_backbone, arch=backbone)
        return model
    if not isinstance(backbone, FeatureExtractor):
        raise ConfigError(f"smp_model: backbone={type(backbone).__name__} is not a name or a feature extractor "
                          "(a resdense.backbones.FeatureExtractor)")
    if weights_backbone is not None:
        raise ConfigError("smp_model: weights_backbone applies only to a backbone name")
    own_in = getattr(backbone, "in_channels", 3)
    if in_channels is not None and in_channels != own_in:
        raise ConfigError(f"smp_model: in_channels={in_channels} but the backbone instance takes {own_in} channels")
    key = SMP_PREFIX + getattr(backbone, "name", type(backbone).__name__)
    with _encoder_view(key, {"backbone": _Ref(backbone)}) as name:
        return smp.create_model(arch, encoder_name=name, encoder_weights=None, in_channels=own_in,
                                classes=classes, **kwargs)
