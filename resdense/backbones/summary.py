"""A per-layer summary table: output shape and parameter count of every module, with totals."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from resdense.errors import ConfigError

__all__ = ["LayerRow", "layer_summary", "format_summary", "parse_input_size"]


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    params: int
    trainable: int


def parse_input_size(text: str) -> tuple[int, int, int]:
    """``"3x224x224"`` -> ``(3, 224, 224)``."""
    try:
        c, h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input {text!r}: expected CxHxW, e.g. 3x224x224") from None
    if min(c, h, w) < 1:
        raise ConfigError(f"--input {text!r}: sizes must be positive")
    return c, h, w


@torch.no_grad()
def layer_summary(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), depth: int = 3) -> list[LayerRow]:
    """Run one ``[1, C, H, W]`` input through ``model`` in eval mode and list modules down to ``depth`` levels."""
    rows: dict[str, LayerRow] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if not name or name.count(".") >= depth:
            continue

        def hook(mod, inp, out, name=name):
            if torch.is_tensor(out):
                shapes[name] = tuple(out.shape)

        hooks.append(module.register_forward_hook(hook))
        params = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        rows[name] = LayerRow(name, type(module).__name__, None, params, trainable)
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return [LayerRow(r.name, r.kind, shapes.get(r.name), r.params, r.trainable) for r in rows.values()]


def format_summary(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), depth: int = 2) -> str:
    """The table printed by ``resdense summary``."""
    rows = layer_summary(model, input_size, depth)
    header = ("layer", "type", "output shape", "params")
    lines = [(r.name, r.kind, "x".join(map(str, r.output_shape)) if r.output_shape else "-", f"{r.params:,}") for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'>' if i == 3 else '<'}{w}}}" for i, w in enumerate(widths))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = [fmt.format(*header), "  ".join("-" * w for w in widths), *(fmt.format(*line) for line in lines)]
    out += ["", f"input: 1x{'x'.join(map(str, input_size))}", f"total params: {total:,}",
            f"trainable params: {trainable:,}", f"non-trainable params: {total - trainable:,}"]
    return "\n".join(out)
