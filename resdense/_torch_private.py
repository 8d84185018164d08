"""Every private torch API resdense touches, in one place (tests/test_architecture.py keeps it so).

Underscore names of torch can change or vanish between releases without notice: when one does, this file is the only
one to fix. Each is used for speed or for a probe, never for correctness that has no public fallback: the callers
check that a kernel exists and agrees with the public op (``backbones/inference.py``) or treat a missing probe as
"not supported" (``hardware.py``).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor, nn

__all__ = [
    "BatchNormBase",
    "NormBase",
    "onednn_bf16_supported",
    "cpu_has_bf16_instructions",
    "onednn_conv_pointwise",
    "onednn_conv_pointwise_binary",
    "onednn_conv_pointwise_binary_",
    "onednn_reorder_conv_weight",
    "tensor_version",
    "is_view",
    "inductor_freezing",
    "clear_forward_pre_hooks",
    "clear_forward_hooks",
]

# Base classes of the norm layers: BatchNorm1d/2d/3d and SyncBatchNorm (BatchNormBase), plus InstanceNorm
# (NormBase); torch has no public name for either.
BatchNormBase = nn.modules.batchnorm._BatchNorm
NormBase = nn.modules.batchnorm._NormBase


# ---- CPU probes (resdense.hardware) ------------------------------------------------------------------------------
def onednn_bf16_supported() -> bool:
    """oneDNN's bf16 support: True from AVX512-core up (emulated there without AVX512-BF16), capped by
    ``ONEDNN_MAX_CPU_ISA``. Guarded: older or non-x86 builds may lack the probe."""
    fn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if fn is None or not torch.backends.mkldnn.is_available():
        _log_once("oneDNN bf16 probe: taken as unsupported (this torch build has %s)",
                  "no probe" if fn is None else "no oneDNN")
        return False
    try:
        return bool(fn())
    except (RuntimeError, AttributeError) as err:
        _log_once("oneDNN bf16 probe: taken as unsupported (the probe failed: %s)", err)
        return False


_logged: set[str] = set()


def _log_once(message: str, *args: object) -> None:
    if message not in _logged:
        _logged.add(message)
        logging.getLogger("resdense.hardware").info(message, *args)


def cpu_has_bf16_instructions() -> bool:
    """The CPU's own bf16 dot-product instructions (AVX512-BF16) or AMX tiles, from ``torch.cpu``'s guarded
    probes (False where this torch has none)."""
    cpu = getattr(torch, "cpu", None)
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


# ---- oneDNN fused convolutions (resdense.backbones.inference) ----------------------------------------------------
# The ops inductor emits for a frozen graph (torch/_inductor/fx_passes/mkldnn_fusion.py). Looked up at call time,
# so a torch without them raises AttributeError / RuntimeError at the call, which the probes catch.
def onednn_conv_pointwise(x: Tensor, weight: Tensor, bias: Tensor, padding, stride, dilation, groups: int,
                          unary: str) -> Tensor:
    """``unary(conv(x))`` in one oneDNN primitive (``unary``: ``"relu"`` or ``"none"``)."""
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups, unary, [], "")


def onednn_conv_pointwise_binary(x: Tensor, other: Tensor, weight: Tensor, bias: Tensor, padding, stride, dilation,
                                 groups: int, unary: str | None) -> Tensor:
    """``unary(conv(x) + other)`` into a new tensor (``unary``: ``"relu"`` or ``None``)."""
    return torch.ops.mkldnn._convolution_pointwise.binary(x, other, weight, bias, padding, stride, dilation, groups,
                                                          "add", 1.0, unary, [], "")


def onednn_conv_pointwise_binary_(other: Tensor, x: Tensor, weight: Tensor, bias: Tensor, padding, stride, dilation,
                                  groups: int, unary: str | None) -> Tensor:
    """``unary(conv(x) + other)`` written into ``other``'s buffer, which is returned."""
    return torch.ops.mkldnn._convolution_pointwise_.binary(other, x, weight, bias, padding, stride, dilation, groups,
                                                           "add", 1.0, unary, [], "")


def onednn_reorder_conv_weight(weight: Tensor, padding, stride, dilation, groups: int, input_size) -> Tensor:
    """``weight`` in oneDNN's blocked layout for inputs of ``input_size`` (an opaque tensor without storage)."""
    return torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, dilation, groups, input_size)


def tensor_version(t: Tensor) -> int:
    """The version counter torch bumps on every in-place op on ``t`` (``Tensor._version``)."""
    return t._version


def is_view(t: Tensor) -> bool:
    """Whether ``t`` shares storage with a base tensor as a view (``Tensor._is_view()``)."""
    return t._is_view()


# ---- inductor (resdense.backbones.inference) ----------------------------------------------------------------------
def inductor_freezing() -> contextlib.AbstractContextManager:
    """Inductor's ``freezing`` switch, on for the duration: weights become constants of the compiled graph.
    ``torch.compile(options=...)`` does not reach it, and inductor reads it when it compiles (first call, new shapes)."""
    return torch._inductor.config.patch(freezing=True)


# ---- multi-tensor ops (resdense.engine.ema) ----------------------------------------------------------------------
def foreach_lerp_(tensors: list[Tensor], ends: list[Tensor], weight: float) -> None:
    """``t += weight * (end - t)`` for every pair, in one multi-tensor kernel (``torch._foreach_lerp_``)."""
    torch._foreach_lerp_(tensors, ends, weight)


def foreach_copy_(tensors: list[Tensor], sources: list[Tensor]) -> None:
    """``t.copy_(src)`` for every pair (``torch._foreach_copy_``)."""
    torch._foreach_copy_(tensors, sources)


# ---- export (resdense.export.model) -----------------------------------------------------------------------------
def clear_forward_pre_hooks(module: nn.Module) -> None:
    """Remove every forward pre-hook of ``module`` (not of its children). ``torch.jit.script`` refuses modules with
    hooks it cannot compile, such as the detectors' target check; a module keeps no public handle list."""
    module._forward_pre_hooks.clear()


def clear_forward_hooks(module: nn.Module) -> None:
    """Remove every forward hook of ``module`` and of its children (for ``torch.jit.script``, as above: the
    detectors' float32 casts of their box deltas)."""
    for m in module.modules():
        m._forward_hooks.clear()
