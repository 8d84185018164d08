"""Inference mode for a backbone: BatchNorm folded into the convolutions, fused activations, channels-last memory,
optional ``torch.compile``.

Folding removes one memory pass per norm layer; channels-last lets oneDNN (CPU) and cuDNN (GPU) pick their fastest
convolution kernels. On a CPU, each convolution then runs as one oneDNN primitive with its ReLU (and, at the end of a
residual block, the shortcut addition and ReLU, written into the shortcut's buffer) applied in the kernel's epilogue
and its weight reordered once into the kernel's blocked layout instead of on every call: the same kernels
``torch.compile`` emits for a frozen graph (``torch/_inductor/fx_passes/mkldnn_fusion.py``). Elsewhere (CUDA, other dtypes, a torch without those kernels) the
same modules run ``F.conv2d`` + add + ReLU. Outputs agree with the eager model within float32 rounding (1e-4).
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from resdense import _torch_private as tp
from resdense.errors import ConfigError
from resdense.hardware import native_bf16, warn_emulated_bf16

from .blocks import BasicBlock, Bottleneck
from .norm import BATCH_NORMS

__all__ = ["fold_batchnorm", "fuse_blocks", "optimize_for_inference", "FusedConv2d", "InferenceBackbone"]


def _fold_pair(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    fused.weight, fused.bias = weight, bias
    return fused


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every norm with running statistics into the convolution registered just before it, in place.

    Pairs are found by registration order within each parent (``conv1, bn1``, ``downsample.0, downsample.1``), the
    layout of every resdense/torchvision ResNet. Norms without a preceding convolution are left alone.
    """
    for parent in module.modules():
        previous_name, previous = None, None
        for name, child in list(parent.named_children()):
            if isinstance(child, BATCH_NORMS) and isinstance(previous, nn.Conv2d) and child.running_mean is not None:
                setattr(parent, previous_name, _fold_pair(previous, child))
                setattr(parent, name, nn.Identity())
            previous_name, previous = name, child
    return module


# ---- fused convolutions -------------------------------------------------------------------------------------------
# oneDNN's fused ops on CPU: float32 everywhere, bfloat16 where the CPU has native bf16 instructions.
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def _probe(dtype: torch.dtype, op: str) -> bool:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 9, generator=g).to(dtype=dtype, memory_format=torch.channels_last)
    res = torch.randn(2, 16, 5, 5, generator=g).to(dtype=dtype, memory_format=torch.channels_last)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=2).eval().to(dtype)
    fused = FusedConv2d(conv, relu=True)
    with torch.no_grad():
        want = F.relu(F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), 2, 2, 2, 2)
                      + (0 if op == "unary" else res.float()))
        args = fused._op_args(x)
        if op == "unary":
            got = tp.onednn_conv_pointwise(x, *args, "relu")
        elif op == "binary":
            got = tp.onednn_conv_pointwise_binary(x, res, *args, "relu")
        else:
            got = tp.onednn_conv_pointwise_binary_(res, x, *args, "relu")
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    return bool(got.dtype == dtype and torch.allclose(got.float(), want, atol=tol, rtol=tol))


@functools.cache
def _onednn_ops(dtype: torch.dtype = torch.float32) -> frozenset[str]:
    """Which of oneDNN's fused convolution ops (those inductor emits) this torch has for ``dtype`` on
    this CPU and agree with ``F.conv2d`` on a small case: ``unary`` (conv + ReLU), ``binary`` (conv + add + ReLU
    into a new tensor), ``binary_`` (the same, written into the residual's buffer). Checked once per dtype, whatever
    ``torch.backends.mkldnn.enabled`` says then. bfloat16 counts only with native bf16 instructions (AVX512-BF16,
    AMX): emulated, it is slower than float32."""
    if dtype not in _ONEDNN_DTYPES or not torch.backends.mkldnn.is_available():
        return frozenset()
    if dtype == torch.bfloat16 and not (native_bf16()):
        return frozenset()
    works = set()
    for op in ("unary", "binary", "binary_"):
        try:
            if _probe(dtype, op):
                works.add(op)
        except (RuntimeError, AttributeError, TypeError, NotImplementedError):
            pass  # e.g. torch 2.14 has no bfloat16 kernel behind the out-of-place binary op
    return frozenset(works)


def _onednn_fused_conv_works(dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``FusedConv2d`` takes the oneDNN path for ``dtype``: False means ``F.conv2d`` + add + ReLU."""
    ops = _onednn_ops(dtype)
    return "unary" in ops and bool(ops & {"binary", "binary_"})


class _PackedWeight:
    """The weight in oneDNN's blocked layout for the last input shape seen, as one ``(key, tensor)`` pair so that
    threads sharing the module never pair one shape's key with another's tensor. An opaque oneDNN tensor has no
    storage, so copies and pickles of a module start with an empty cache and repack on their first call."""

    __slots__ = ("entry",)

    def __init__(self) -> None:
        self.entry: tuple[tuple, Tensor] | None = None

    def __deepcopy__(self, memo) -> _PackedWeight:
        return _PackedWeight()

    def __reduce__(self):
        return _PackedWeight, ()


class FusedConv2d(nn.Module):
    """A convolution (norm already folded into ``weight``/``bias``) followed by an optional ReLU, or by the residual
    addition and ReLU that close a ResNet block: ``forward(x, residual=None)``.

    For CPU float32 (or, on CPUs with native bf16, bfloat16) inputs of the weight's dtype, without autograd (no
    tensor involved requires grad, or grad mode is off), outside autocast and with ``torch.backends.mkldnn.enabled``,
    it runs one oneDNN primitive with the ReLU / add+ReLU fused into the kernel and the weight prepacked for the input
    shape; otherwise ``F.conv2d`` + add + ReLU. Parameters keep the ``nn.Conv2d`` names and shapes, so ``state_dict``
    is portable.

    The packed weight is rebuilt when the input shape changes, when the weight is changed in place by a torch op
    (``load_state_dict``, ``weight.copy_(...)`` under ``no_grad``), and after ``.to()`` / ``.float()`` and the like.
    Writes through ``weight.data`` bypass the version counter torch keeps: call :meth:`reset_packed_weight` after
    them.
    """

    def __init__(self, conv: nn.Conv2d, *, relu: bool) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"FusedConv2d needs numeric zero padding, got {conv.padding!r} / {conv.padding_mode!r}")
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=conv.weight.device,
                                                                   dtype=conv.weight.dtype)
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.groups = conv.groups
        self.relu = relu
        self._packed = _PackedWeight()

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return (f"{i * self.groups}, {o}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, "
                f"padding={tuple(self.padding)}, dilation={tuple(self.dilation)}, groups={self.groups}, relu={self.relu}")

    def reset_packed_weight(self) -> None:
        """Forget the packed weight; the next call packs ``weight`` again."""
        self._packed = _PackedWeight()

    def _apply(self, fn, recurse: bool = True):
        # .to(dtype/device) may give the weight new storage at the old address (e.g. a bf16 -> float round trip).
        self.reset_packed_weight()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.reset_packed_weight()
        super()._load_from_state_dict(*args, **kwargs)

    def _packed_weight(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape), tp.tensor_version(self.weight), self.weight.data_ptr())
        entry = self._packed.entry
        if entry is None or entry[0] != key:
            entry = key, tp.onednn_reorder_conv_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(x.shape))
            self._packed.entry = entry
        return entry[1]

    def _op_args(self, x: Tensor) -> tuple:
        """The arguments oneDNN's fused ops take after the input (and residual): packed weight, bias, geometry."""
        return self._packed_weight(x), self.bias, self.padding, self.stride, self.dilation, self.groups

    def _onednn(self, x: Tensor, residual: Tensor | None, overwrite_residual: bool = False) -> Tensor:
        args = self._op_args(x)
        if residual is None:
            return tp.onednn_conv_pointwise(x, *args, "relu" if self.relu else "none")
        unary = "relu" if self.relu else None
        ops = _onednn_ops(x.dtype)
        if "binary_" in ops and (overwrite_residual or "binary" not in ops):
            if not (overwrite_residual and residual.is_contiguous(memory_format=torch.channels_last)
                    and not tp.is_view(residual)):
                residual = residual.clone(memory_format=torch.channels_last)  # never write into the caller's
            # the sum lands in residual's buffer: one output allocation fewer
            return tp.onednn_conv_pointwise_binary_(residual, x, *args, unary)
        return tp.onednn_conv_pointwise_binary(x, residual, *args, unary)

    def _use_onednn(self, x: Tensor, residual: Tensor | None) -> bool:
        # Tracers (ONNX / TorchScript export, dynamo) get the portable ops, which every exporter knows.
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad or self.bias.requires_grad
                                        or (residual is not None and residual.requires_grad)):
            return False  # the fused op has no backward
        if torch.is_autocast_enabled("cpu"):
            return False  # autocast chooses the compute dtype per op: leave it to F.conv2d
        dtype = x.dtype
        return (x.device.type == "cpu" and dtype == self.weight.dtype and dtype in _ONEDNN_DTYPES
                and (residual is None or (residual.dtype == dtype and residual.device.type == "cpu"))
                and torch.backends.mkldnn.enabled and _onednn_fused_conv_works(dtype))

    def forward(self, x: Tensor, residual: Tensor | None = None, *, overwrite_residual: bool = False) -> Tensor:
        """``relu?(conv(x) [+ residual])``. ``overwrite_residual=True`` lets the oneDNN path write the result into
        ``residual``'s buffer (and return it); only for a residual that nothing else reads afterwards."""
        if self._use_onednn(x, residual):
            return self._onednn(x, residual, overwrite_residual)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


class FusedBlock(nn.Module):
    """A folded BasicBlock / Bottleneck as a chain of ``FusedConv2d`` under the block's own names (``conv1``, ``conv2``
    [, ``conv3``], ``downsample``): every convolution but the last carries its ReLU, the last one adds the shortcut and
    applies the block's final ReLU.

    The last convolution writes its sum into the shortcut's buffer when that buffer is the block's own: always with a
    ``downsample``, and with ``owns_input=True`` (the block's input is an intermediate that nothing reads after it,
    as for every block but the first of a ResNet stage), where the block's input buffer becomes its output. A
    forward hook that keeps the output of the block before such a block must ``clone()`` it.
    """

    def __init__(self, convs: dict[str, FusedConv2d], downsample: FusedConv2d | None, *,
                 owns_input: bool = False) -> None:
        super().__init__()
        for name, conv in convs.items():
            self.add_module(name, conv)
        self._chain = tuple(convs)
        self.downsample = downsample
        self.owns_input = owns_input

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for name in self._chain[:-1]:
            out = getattr(self, name)(out)
        overwrite = self.downsample is not None or self.owns_input
        return getattr(self, self._chain[-1])(out, identity, overwrite_residual=overwrite)


def _folded(*norms: nn.Module) -> bool:
    return all(isinstance(n, nn.Identity) for n in norms)


def _fuse_block(block: nn.Module, owns_input: bool) -> nn.Module:
    if isinstance(block, Bottleneck):
        convs, norms = [block.conv1, block.conv2, block.conv3], [block.bn1, block.bn2, block.bn3]
    elif isinstance(block, BasicBlock):
        convs, norms = [block.conv1, block.conv2], [block.bn1, block.bn2]
    else:
        return block
    ds = block.downsample
    ds_ok = ds is None or (isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[0], nn.Conv2d)
                           and _folded(ds[1]))
    if not (_folded(*norms) and ds_ok and isinstance(block.relu, nn.ReLU)):
        return block  # e.g. GroupNorm: nothing was folded, keep the block as it is
    fused = {f"conv{i}": FusedConv2d(c, relu=True) for i, c in enumerate(convs, 1)}
    return FusedBlock(fused, None if ds is None else FusedConv2d(ds[0], relu=False), owns_input=owns_input)


def fuse_blocks(model: nn.Module) -> nn.Module:
    """Replace, in place, each folded residual block by a ``FusedBlock`` and a ResNet's folded stem conv + ReLU by one
    ``FusedConv2d`` (the stem a model names in ``fusable_stem``, as :class:`~resdense.backbones.ResNet` does). Call
    after :func:`fold_batchnorm`; blocks whose norms were not folded are left as they are.
    A block that follows another fused block in a plain ``nn.Sequential`` reuses its input's buffer for its output (see
    :class:`FusedBlock`)."""
    for parent in list(model.modules()):
        previous = None
        for name, child in list(parent.named_children()):
            if isinstance(child, (BasicBlock, Bottleneck)):
                # In a stage (nn.Sequential) a block's input is the previous block's output, read by nobody else.
                # A plain nn.Sequential only: a subclass may keep intermediate outputs.
                owns_input = type(parent) is nn.Sequential and isinstance(previous, FusedBlock)
                child = _fuse_block(child, owns_input)
                setattr(parent, name, child)
            previous = child
    stem = getattr(model, "fusable_stem", None)  # declared by ResNet: ("conv1", "bn1", "relu")
    if stem is not None:
        conv, norm, act = stem
        if _folded(getattr(model, norm)) and isinstance(getattr(model, act), nn.ReLU):
            setattr(model, conv, FusedConv2d(getattr(model, conv), relu=True))
            setattr(model, act, nn.Identity())
    return model


class InferenceBackbone(nn.Module):
    """Wraps an optimised backbone: runs it without autograd on a channels-last input (cast to ``dtype`` when one is
    set) and keeps the feature contract (``feature_info``, ``dict[str, Tensor]`` output)."""

    def __init__(self, backbone: nn.Module, channels_last: bool, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels_last = channels_last
        self.dtype = dtype
        self.feature_info = backbone.feature_info
        self.in_channels = getattr(backbone, "in_channels", 3)
        self.__dict__["compiled"] = None  # torch.compile(backbone), kept out of the module tree and state_dict

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.dtype is not None:  # .float() / .to(torch.bfloat16) / .half(): inputs follow the weights
            self.dtype = next(p.dtype for p in self.backbone.parameters() if p.is_floating_point())
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.compiled is not None:
            raise RuntimeError("optimize_for_inference(compile=True) froze the weights into the compiled graph: load "
                               "them into the source backbone and call optimize_for_inference again")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            if self.dtype is not None and x.is_floating_point():  # integer images are the caller's to convert
                x = x.to(self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.compiled is None:
                return self.backbone(x)
            # Inductor reads `freezing` when it compiles (first call, new shapes); torch.compile(options=...) does not
            # reach that switch, so it is set around each call (~20 us).
            with tp.inductor_freezing():
                return self.compiled(x)


@torch.no_grad()
def optimize_for_inference(backbone: nn.Module, *, channels_last: bool = True, fuse: bool = True,
                           compile: bool = False, compile_mode: str | None = None,
                           dtype: torch.dtype | None = None) -> InferenceBackbone:
    """Return an eval-only, no-autograd copy of ``backbone`` for fast inference; the original is left untouched.

    - BatchNorm (and FrozenBatchNorm) is folded into the preceding convolution; GroupNorm has no statistics to fold
      and stays as it is.
    - ``fuse``: residual blocks become chains of :class:`FusedConv2d` (oneDNN fused conv + ReLU / add + ReLU with
      prepacked weights on CPU).
    - ``channels_last``: weights and inputs in NHWC memory order.
    - ``compile``: ``torch.compile`` the folded model with inductor's freezing (weights as constants, prepacked and
      fused by inductor itself, so ``fuse`` is not applied). ``compile_mode`` is passed on ("max-autotune", ...).
      The first call (and the first with a new input shape) compiles. Freezing makes the weights constants of the
      compiled code: later changes to them (``load_state_dict`` refuses; in-place edits, ``.to()``) are not seen,
      so build a new one from the updated backbone instead.
    - ``dtype``: run in ``torch.bfloat16`` or ``torch.float16`` (weights folded in float32 first, then converted;
      floating-point inputs are cast on the way in, and follow later ``.to()`` / ``.float()`` of the module; the
      features come out in ``dtype``), with the precision of that dtype, as under autocast, not the float32
      tolerance. On a CPU with native bf16 instructions (AVX512-BF16, AMX) bfloat16 takes the fused oneDNN path;
      on any other CPU bf16 is emulated and slower than float32, and this warns once. float16 on CPU runs
      ``F.conv2d``.
      ``None`` keeps the backbone's dtype.
    """
    if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"optimize_for_inference: dtype={dtype!r} must be torch.float32, torch.bfloat16 or "
                          "torch.float16")
    if dtype == torch.bfloat16 and not native_bf16():
        warn_emulated_bf16("optimize_for_inference(dtype=torch.bfloat16)")
    model = fold_batchnorm(copy.deepcopy(backbone).eval())
    for p in model.parameters():
        p.requires_grad_(False)
    if fuse and not compile:
        fuse_blocks(model)
    if dtype is not None:
        model = model.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped = InferenceBackbone(model, channels_last, dtype).eval()
    if compile:
        wrapped.__dict__["compiled"] = torch.compile(model, mode=compile_mode)
    return wrapped
