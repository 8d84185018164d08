"""What this machine can run fast, and the precision chosen from it: hardware-aware defaults, stated and overridable.

The rule behind ``train.amp: auto`` (and every shipped recipe):

- CUDA: float16 autocast with a gradient scaler;
- a CPU with native bf16 instructions (AVX512-BF16 or AMX, as oneDNN reports them): bfloat16 autocast;
- any other CPU: float32. There bf16 is emulated and typically several times slower than float32 (PyTorch documents
  this; pytorch issues 86270 and 118499 measure 2x-100x), so choosing it would be a 'fast here, 40x slower there'
  default.

oneDNN's own report follows ``ONEDNN_MAX_CPU_ISA``, so ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` makes a
machine with AVX-512 behave like an AVX2-only laptop for this choice and for the kernels themselves.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from resdense._torch_private import cpu_has_bf16_instructions, onednn_bf16_supported
from resdense.errors import ConfigError

__all__ = ["cpu_capability", "native_bf16", "Precision", "choose_precision", "warn_emulated_bf16", "hardware_summary",
           "machine_summary", "MemoryFormat", "choose_memory_format"]

log = logging.getLogger(__name__)


def cpu_capability() -> str:
    """ATen's vector ISA for CPU kernels (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, ...; follows
    ``ATEN_CPU_CAPABILITY``)."""
    return torch.backends.cpu.get_cpu_capability()


# The two probes behind native_bf16 (private torch APIs, guarded; module-level names so tests can stand in for a CPU).
_onednn_bf16 = onednn_bf16_supported
_bf16_instructions = cpu_has_bf16_instructions


def native_bf16() -> bool:
    """Whether bf16 convolutions and matmuls run natively on this CPU: oneDNN supports bf16 *and* the CPU has
    AVX512-BF16 or AMX. False on AVX2-only CPUs, on AVX-512 CPUs without the bf16 extension, and whenever
    ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below them."""
    return _onednn_bf16() and _bf16_instructions()


@dataclass(frozen=True)
class Precision:
    """The precision a run uses: ``dtype`` for autocast (``None``: float32), its ``name`` and why it was chosen."""

    dtype: torch.dtype | None
    name: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"amp": self.name, "reason": self.reason}


def hardware_summary() -> str:
    """One line: CPU capability and bf16 support, as reported next to every figure."""
    return (f"CPU capability {cpu_capability()}, oneDNN bf16 {_onednn_bf16()}, native bf16 {native_bf16()}")


@functools.cache
def _cpu_model() -> str:
    # platform.processor() may run `uname -p`: read once per process
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return model or "unknown model"


def machine_summary() -> str:
    """One line naming the machine: cores, CPU model, :func:`hardware_summary`, the GPU, torch and its threads (the
    demo's report and what a checkpoint records of where it was trained)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count() or 0}-core {platform.machine()} CPU ({_cpu_model()}; {hardware_summary()}), {gpu}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def choose_precision(amp: str, device: torch.device) -> Precision:
    """Resolve ``train.amp`` (``auto``, ``fp16``, ``bf16``, ``none``) for ``device``.

    ``auto``: fp16 on CUDA, bf16 on a CPU with native bf16 (:func:`native_bf16`), fp32 elsewhere. An explicit
    ``bf16`` on a CPU without native bf16 is honoured with a warning (:func:`warn_emulated_bf16`); ``fp16`` on a CPU
    is refused (CPU float16 autocast is slower still and not what the recipes are tuned for).
    """
    device = torch.device(device)
    if amp == "none":
        return Precision(None, "fp32", "train.amp = 'none'")
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.amp = 'fp16' needs CUDA; on CPU use 'auto', 'bf16' or 'none'")
        return Precision(torch.float16, "fp16", "train.amp = 'fp16'")
    if amp == "bf16":
        if device.type == "cpu" and not native_bf16():
            warn_emulated_bf16("train.amp = 'bf16'")
        return Precision(torch.bfloat16, "bf16", "train.amp = 'bf16'")
    if amp != "auto":
        raise ConfigError(f"train.amp = {amp!r} is not one of 'auto', 'fp16', 'bf16', 'none'")
    if device.type == "cuda":
        return Precision(torch.float16, "fp16", "auto: CUDA device, float16 autocast with gradient scaling")
    if device.type == "cpu" and native_bf16():
        return Precision(torch.bfloat16, "bf16", f"auto: CPU has native bf16 ({hardware_summary()})")
    return Precision(None, "fp32", f"auto: no native bf16 on this {device.type} ({hardware_summary()}); "
                                   "emulated bf16 would be several times slower than fp32")


@dataclass(frozen=True)
class MemoryFormat:
    """Whether a run's model (and so its activations) is in ``channels_last`` (NHWC), and why."""

    channels_last: bool
    reason: str

    @property
    def name(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def as_dict(self) -> dict[str, Any]:
        return {"channels_last": self.channels_last, "reason": self.reason}

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in this format, its parameters converted in place (an optimizer built on them keeps them)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def choose_memory_format(setting: bool | str, device: torch.device, precision: Precision,
                         task: str) -> MemoryFormat:
    """Resolve ``train.channels_last`` (``auto``, ``true``, ``false``).

    ``auto``: channels_last for a segmentation or classification model trained in reduced precision, on CUDA
    (fp16/bf16 tensor-core convolutions are NHWC) and on a CPU with native bf16 (oneDNN's bf16 convolutions run NHWC:
    the membrane recipe's U-Net step 1.25x faster on a Zen 4 with AVX512-BF16, ``benchmarks/heads_speed.py``);
    contiguous in fp32 on a CPU, where it did not pay reliably (0.83-0.95x for smp's U-Net on an AVX2-only Zen 3,
    1.05x here with AVX2 forced), and for detectors, whose inputs torchvision batches itself.
    """
    if isinstance(setting, bool):
        return MemoryFormat(setting, f"train.channels_last = {str(setting).lower()}")
    if setting != "auto":
        raise ConfigError(f"train.channels_last = {setting!r} is not one of 'auto', true, false")
    device = torch.device(device)
    if task == "detection":
        return MemoryFormat(False, "auto: a detector (torchvision batches its images in NCHW)")
    if precision.dtype is None:
        return MemoryFormat(False, f"auto: fp32 on {device.type}, where NHWC does not reliably pay")
    return MemoryFormat(True, f"auto: {precision.name} autocast on {device.type}, whose reduced-precision "
                              "convolutions run NHWC")


_WARNED: set[str] = set()  # the places already warned about in this process


def warn_emulated_bf16(where: str) -> None:
    """Warn once per ``where`` that bf16 is emulated on this CPU (no AVX512-BF16/AMX) and typically several times
    slower than float32 there."""
    if where in _WARNED:
        return
    _WARNED.add(where)
    warnings.warn(f"{where}: this CPU has no native bf16 (CPU capability {cpu_capability()}, no AVX512-BF16/AMX "
                  "reported by oneDNN), so bf16 is emulated and typically several times slower than fp32 here; "
                  "use 'auto' (fp32 on this CPU) unless you need bf16 numerics", UserWarning, stacklevel=3)
