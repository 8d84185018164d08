"""An exponential moving average (EMA) of a model's weights, kept beside the trained model (``train.ema_decay``).

The average is torch's :class:`~torch.optim.swa_utils.AveragedModel` (a deep copy of the model) with an update rule
like timm's ``ModelEmaV3``: after the optimizer step of update ``t`` (1, 2, ...), every floating-point parameter and
buffer moves as ``ema = d_t * ema + (1 - d_t) * weight``, so the BatchNorm running statistics are averaged with the
weights, as timm, torchvision's reference scripts and YOLOv5 do; integer buffers (``num_batches_tracked``) are
copied. The first update copies the weights. The decay is::

    d_t = decay                                   with warmup_iters = 0
    d_t = decay * (1 - exp(-t / warmup_iters))    otherwise (YOLOv5's ModelEMA ramp, time constant warmup_iters),

so early, still-random weights are forgotten quickly. ``t`` counts EMA updates (``AveragedModel.n_averaged``), which
the checkpoint stores: a resumed run continues the same average.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from resdense._torch_private import foreach_copy_, foreach_lerp_

__all__ = ["EmaUpdate", "create_ema", "ema_decay_at", "ema_state", "load_ema_state"]


def ema_decay_at(update: int, decay: float, warmup_iters: int = 0) -> float:
    """The decay ``d_t`` of EMA update number ``update`` (1-based); see the module docstring."""
    if warmup_iters <= 0:
        return decay
    return decay * (1.0 - math.exp(-update / warmup_iters))


class EmaUpdate:
    """``multi_avg_fn`` of :class:`AveragedModel`: lerp floating-point tensors by ``1 - d_t``, copy the others.

    AveragedModel groups tensors by device and dtype and passes ``n_averaged`` (the updates done before this one).
    """

    def __init__(self, decay: float, warmup_iters: int = 0) -> None:
        self.decay, self.warmup_iters = decay, warmup_iters

    @torch.no_grad()
    def __call__(self, ema: list[Tensor], current: list[Tensor], n_averaged: Tensor | int) -> None:
        if torch.is_floating_point(ema[0]):
            d = ema_decay_at(int(n_averaged) + 1, self.decay, self.warmup_iters)
            foreach_lerp_(ema, current, 1.0 - d)
        else:
            foreach_copy_(ema, current)


def create_ema(model: nn.Module, decay: float, warmup_iters: int = 0) -> AveragedModel:
    """An EMA of ``model`` (same device) in eval mode, without gradients; call ``update_parameters(model)`` after
    each optimizer step and evaluate ``ema.module``."""
    ema = AveragedModel(model, multi_avg_fn=EmaUpdate(decay, warmup_iters), use_buffers=True)
    ema.requires_grad_(False)
    return ema.eval()


def ema_state(ema: AveragedModel) -> dict[str, Any]:
    """``{"weights": state dict with the model's own keys, "updates": int}`` (plain types and tensors only), so the
    weights load into a freshly built model with ``load_state_dict``."""
    return {"weights": ema.module.state_dict(), "updates": int(ema.n_averaged)}


def load_ema_state(ema: AveragedModel, state: dict[str, Any]) -> None:
    """Restore what :func:`ema_state` returned."""
    ema.module.load_state_dict(state["weights"])
    ema.n_averaged.fill_(int(state["updates"]))
