"""ONNX export of a feature extractor: one named output per feature, dynamic batch and spatial size."""

from __future__ import annotations

import os
import warnings
from functools import partial

import torch
from torch import nn

from resdense.files import write_with
from resdense.optional import require

__all__ = ["export_onnx", "trace_to_onnx"]


def export_onnx(model: nn.Module, path: str | os.PathLike, *, input_size: tuple[int, int, int] | None = None,
                dynamic: bool = True, opset: int = 17) -> list[str]:
    """Export ``model`` (a backbone or neck returning ``dict[str, Tensor]``) to ONNX at ``path``.

    The graph's input is ``image`` ``[N, C, H, W]``; its outputs are named after ``model.feature_info``. With
    ``dynamic`` the batch and spatial sizes stay symbolic. Uses the TorchScript-based exporter, which needs no
    packages beyond ``onnx``. Returns the output names.
    """
    channels = getattr(model, "in_channels", 3)
    c, h, w = input_size or (channels, 224, 224)
    names = [f.name for f in model.feature_info]
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    axes.update({n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in names})
    trace_to_onnx(model, (torch.zeros(1, c, h, w),), path, input_names=["image"], output_names=names,
                  dynamic_axes=axes if dynamic else None, opset=opset)
    return names


def trace_to_onnx(model: nn.Module, args: tuple, path: str | os.PathLike, *, input_names: list[str],
                  output_names: list[str], dynamic_axes: dict[str, dict[int, str]] | None, opset: int = 17) -> None:
    """``torch.onnx.export`` of ``model`` in eval mode with the TorchScript-based exporter (``dynamo=False``, the
    route torchvision's own ONNX tests take), its tracer warnings silenced; the train/eval mode is restored after.
    Shared by :func:`export_onnx` and the whole-model export of :mod:`resdense.export.model`."""
    require("onnx", "export", "ONNX export")  # torch.onnx's TorchScript exporter writes through the onnx package
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            write_with(path, partial(torch.onnx.export, model, args, input_names=input_names,
                                     output_names=output_names, dynamic_axes=dynamic_axes, opset_version=opset,
                                     dynamo=False), "ONNX model")
    finally:
        model.train(was_training)
