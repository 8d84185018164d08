"""An exponential moving average (EMA) of a model's weights, kept beside the trained model (``train.ema_decay``).

The average is torch's :class:`~torch.optim.swa_utils.AveragedModel` (a deep copy of the model): after the optimizer
step of update ``t`` (1, 2, ...), every floating-point parameter and buffer moves as
``ema = d_t * ema + (1 - d_t) * weight``, so the BatchNorm running statistics are averaged with the weights; integer
buffers (``num_batches_tracked``) are copied. The first update copies the weights. The decay is::

    d_t = decay                                   with warmup_iters = 0
    d_t = decay * (1 - exp(-t / warmup_iters))    otherwise (a ramp of time constant warmup_iters),

so early, still-random weights are forgotten quickly. ``t`` counts EMA updates (``AveragedModel.n_averaged``), which
the checkpoint stores: a resumed run continues the same average.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from resdense._torch_private import foreach_copy_, foreach_lerp_

from .train_loop import HookBase

__all__ = ["EMA", "EmaUpdate", "create_ema", "ema_decay_at"]

log = logging.getLogger("resdense.engine.trainer")  # the training messages, under the trainer's logger name


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


class EMA(HookBase):
    """The training hook that updates ``ema`` after every step that was not skipped. Its checkpoint entry ``ema`` is
    ``{"weights": state dict with the model's own keys, "updates": int}``, so the weights load into a freshly built
    model with ``load_state_dict``."""

    def __init__(self, ema: AveragedModel) -> None:
        self.ema = ema

    def after_step(self) -> None:
        if not self.trainer.skipped:
            self.ema.update_parameters(self.trainer.model)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": {"weights": self.ema.module.state_dict(), "updates": int(self.ema.n_averaged)}}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("ema") is None:
            log.warning("the checkpoint holds no weight average; train.ema_decay starts one at iteration %d",
                        int(checkpoint["iteration"]))
            return
        self.ema.module.load_state_dict(checkpoint["ema"]["weights"])
        self.ema.n_averaged.fill_(int(checkpoint["ema"]["updates"]))
