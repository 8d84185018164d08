"""int8 post-training quantization (PTQ) for CPU inference: FX graph mode with torch's ``x86`` quantized engine.

Why FX graph mode (``torch.ao.quantization.quantize_fx``): it ships with torch, needs no compiler and runs eagerly
on fbgemm / oneDNN int8 kernels, the kernels of ``torchvision.models.quantization``; the PT2E flow
(``torch.export`` with ``prepare_pt2e`` / ``convert_pt2e``) needs the separate ``torchao`` package and runs fast
only through ``torch.compile``. torch marks ``torch.ao.quantization`` deprecated in favour of torchao: its warnings are silenced
here, and :func:`quantize_module` is the one place to change when it goes.

What gets quantized: each convolution with its folded BatchNorm and ReLU becomes one int8 ``ConvReLU2d`` (weights
per output channel, activations per tensor with histogram calibration), a residual addition + ReLU one int8
``add_relu``; the input is quantized once and each returned map dequantized back to float32.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from resdense.errors import ConfigError

from .contract import FeatureExtractor

__all__ = ["QuantizedModule", "calibration_batches", "quantize_backbone", "quantize_module"]

ENGINE = "x86"  # fbgemm (AVX2 / AVX-512 VNNI) for most convolutions, oneDNN where it is faster


@contextlib.contextmanager
def _quiet_deprecation():
    # torch.ao.quantization warns on every prepare/convert that it moves to torchao, and quantized tensor creation
    # that it will be removed: known, see the module docstring.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\.quantization")
        warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization is deprecated|quantize_per_tensor"
                                                  r"|reduce_range will be deprecated).*")
        yield


@contextlib.contextmanager
def _engine(name: str):
    engines = torch.backends.quantized.supported_engines
    if name not in engines:
        raise ConfigError(f"int8 quantization needs torch's {name!r} quantized engine; this torch has {engines}")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _first_tensor(item) -> Tensor:
    if isinstance(item, Tensor):
        return item
    inputs = getattr(item, "inputs", None)  # the engine's Batch
    if isinstance(inputs, Tensor):
        return inputs
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
        return item[0]  # (images, targets) from a loader, (image, mask) from a dataset
    raise ConfigError(f"calibration: expected image tensors [N, C, H, W] or (images, ...) batches, got "
                      f"{type(item).__name__}")


def calibration_batches(calibration: Tensor | Iterable, n: int, batch_size: int = 8) -> list[Tensor]:
    """The first ``n`` images of ``calibration`` as float32 batches ``[<=batch_size, C, H, W]`` (images of
    different sizes go to different batches).

    ``calibration``: a tensor ``[N, C, H, W]``, or an iterable of tensors ``[C, H, W]`` / ``[B, C, H, W]`` or of
    ``(images, ...)`` tuples (a DataLoader or a dataset). Raises ``ConfigError`` for ``n < 1`` or no images.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"calibration: n={n!r} must be a positive int (images to calibrate on)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"calibration: batch_size={batch_size!r} must be a positive int")
    items: Iterator = iter(calibration.unbind(0) if isinstance(calibration, Tensor) and calibration.ndim == 4
                           else calibration)
    images: list[Tensor] = []
    while len(images) < n:
        item = next(items, None)
        if item is None:
            break
        x = _first_tensor(item).detach().float().cpu()
        if x.ndim not in (3, 4):
            raise ConfigError(f"calibration: expected images [C, H, W] or batches [B, C, H, W], got {list(x.shape)}")
        images.extend(x.unbind(0) if x.ndim == 4 else [x])
    if not images:
        raise ConfigError("calibration: no images to calibrate on (empty tensor, loader or dataset)")
    batches: list[list[Tensor]] = []
    for x in images[:n]:  # consecutive images of one size share a batch
        if not batches or len(batches[-1]) == batch_size or batches[-1][0].shape != x.shape:
            batches.append([])
        batches[-1].append(x)
    return [torch.stack(b) for b in batches]


def quantize_module(module: nn.Module, calibration: Tensor | Iterable, *, n: int = 32,
                    batch_size: int = 8) -> nn.Module:
    """int8 copy of an FX-traceable float module (``torch.fx.symbolic_trace`` must succeed on it), calibrated on the
    first ``n`` images of ``calibration`` (see :func:`calibration_batches`); ``module`` is left untouched.

    Returns the converted ``torch.fx.GraphModule``: float32 in, float32 out, int8 inside. Calibration runs the
    observed model (histogram observers) once per batch.

    Raises:
        ConfigError: ``torch.fx`` cannot trace ``module`` (naming the reason), or bad ``n`` / ``calibration``.
    """
    batches = calibration_batches(calibration, n, batch_size)
    model = copy.deepcopy(module).eval()
    with _engine(ENGINE), _quiet_deprecation(), torch.no_grad():
        try:
            prepared = prepare_fx(model, get_default_qconfig_mapping(ENGINE), example_inputs=(batches[0],))
        except torch.fx.proxy.TraceError as err:
            raise ConfigError(f"quantize: {type(module).__name__} cannot be traced by torch.fx "
                              f"({str(err).splitlines()[0]})") from None
        for batch in batches:
            prepared(batch)
        return convert_fx(prepared)


class QuantizedModule(nn.Module):
    """An int8 graph for inference: no autograd, float input cast to float32 channels-last (fbgemm's layout), input
    checked against ``in_channels``; keeps ``feature_info`` (a backbone's contract) when given one."""

    def __init__(self, graph: nn.Module, in_channels: int, feature_info: tuple = ()) -> None:
        super().__init__()
        self.graph = graph
        self.in_channels = in_channels
        self.feature_info = feature_info

    def forward(self, x: Tensor):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"int8 model: expected input [N, {self.in_channels}, H, W], got {list(x.shape)}")
        with torch.no_grad(), _quiet_deprecation():
            return self.graph(x.float().contiguous(memory_format=torch.channels_last))


def quantize_backbone(backbone: FeatureExtractor, calibration: Tensor | Iterable, *, n: int = 32,
                      batch_size: int = 8) -> QuantizedModule:
    """int8 copy of a feature extractor for CPU inference, calibrated on the first ``n`` images of ``calibration``
    (a tensor ``[N, C, H, W]``, a loader or a dataset, normalised as the backbone expects).
    ``forward(x[N, C, H, W])`` returns ``{name: float32 map}`` as the backbone.

    Any :class:`FeatureExtractor` whose ``forward`` ``torch.fx`` can trace works; a resdense :class:`ResNet`
    (BatchNorm norms, any ``out_features``) does. Each returned map agrees with the float model's to a cosine
    similarity of at least 0.99 on images like the calibration ones.

    Raises:
        ConfigError: ``backbone`` is not a feature extractor, or ``torch.fx`` cannot trace it.
    """
    if not isinstance(backbone, FeatureExtractor):
        raise ConfigError(f"quantize_backbone: expected a resdense ResNet, got {type(backbone).__name__} (or "
                          "another FeatureExtractor that torch.fx can trace)")
    graph = quantize_module(backbone, calibration, n=n, batch_size=batch_size)
    return QuantizedModule(graph, getattr(backbone, "in_channels", 3), backbone.feature_info).eval()
