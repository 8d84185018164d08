"""One optimizer step's forward and backward passes over ``train.accumulate`` micro-batches, under DDP or not.

This module owns the gradient arithmetic, the one all-reduce of a step's losses, non-finite count and stop request,
and the optimizer, scaler and schedule steps; the :class:`~resdense.engine.trainer.Trainer` owns the non-finite
policy, and hooks the freeze schedule and the EMA.
"""

from __future__ import annotations

import math
import signal
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resdense.errors import ResdenseError

from . import distributed
from .tasks.base import Batch, Task

__all__ = ["NonFiniteLossError", "StepResult", "forward_backward", "finish_step", "nonfinite_error"]


class NonFiniteLossError(ResdenseError, FloatingPointError):
    """Training produced a NaN or infinite loss (the message names the iteration, the losses and the images)."""


@dataclass
class StepResult:
    """What :func:`forward_backward` measured.

    Attributes:
        losses: each loss term and their sum ``"loss"``, means over the micro-batches and, under DDP, the ranks.
        bad: this rank's micro-batches whose loss was not finite (to name their images).
        nonfinite: how many micro-batches, over all ranks, had a non-finite loss.
        stop: the signal some rank received during the step (``None``: none did); every rank gets the same value.
    """

    losses: dict[str, float]
    bad: list[Batch] = field(default_factory=list)
    nonfinite: int = 0
    stop: int | None = None


def forward_backward(net: nn.Module, task: Task, micro: list[Batch], device: torch.device,
                     autocast: Callable[[], AbstractContextManager], scaler: torch.amp.GradScaler,
                     world_size: int = 1, stop: int | None = None) -> StepResult:
    """Accumulate the gradients of one step over ``micro`` into ``net``'s parameters.

    Each micro-batch's mean-reduced loss is divided by ``k = len(micro)``, so ``k`` micro-batches of ``b`` give the
    gradient of one batch of ``k * b``. Under DDP (``net`` a DistributedDataParallel) the gradients are all-reduced
    in the last micro-batch's backward pass only (``no_sync`` before it), and every rank runs every backward pass
    even after a non-finite loss, since each one takes part in the all-reduce; a single process skips the backward
    passes once a loss is not finite (the step will be skipped). ``stop`` is this rank's pending stop request.
    Under DDP a collective: every rank of ``world_size`` calls it.
    """
    k, several = len(micro), world_size > 1
    sums: dict[str, float] = {}
    bad: list[Batch] = []
    for j, batch in enumerate(micro):
        batch = task.to_device(batch, device)
        with net.no_sync() if several and j < k - 1 else nullcontext():
            with autocast():
                losses = task.losses(net, batch)
            loss = sum(losses.values())
            terms = {**{name: float(v.detach()) for name, v in losses.items()}, "loss": float(loss.detach())}
            if not math.isfinite(terms["loss"]):
                bad.append(batch)
            if several or not bad:
                scaler.scale(loss / k).backward()
        for name, v in terms.items():
            sums[name] = sums.get(name, 0.0) + v
    values = {name: v / k for name, v in sums.items()}
    nonfinite = len(bad)
    if several:  # one all-reduce: the logged losses, any rank's non-finite loss, any rank's stop request
        reduced = distributed.sum_floats([*values.values(), nonfinite, stop or 0])
        values = {name: v / world_size for name, v in zip(values, reduced, strict=False)}
        nonfinite, stop = int(reduced[-2]), (signal.SIGTERM if reduced[-1] else None)
    return StepResult(values, bad, nonfinite, stop)


def finish_step(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                parameters: Iterable[nn.Parameter], grad_clip: float | None, skip: bool,
                losses: dict[str, float]) -> None:
    """The optimizer step (gradient norm clipped to ``grad_clip``, the norm before in ``losses["grad_norm"]``), or
    for a ``skip``-ped step the gradients dropped; the schedule advances either way."""
    if skip:
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the scheduler warns of a step without an optimizer step
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        return
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        losses["grad_norm"] = float(nn.utils.clip_grad_norm_(parameters, grad_clip))
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def nonfinite_error(iteration: int, losses: dict[str, float], image_ids: list, last: Path) -> NonFiniteLossError:
    """The error that ends training at ``iteration`` (1-based) after too many non-finite losses; ``image_ids`` are
    this rank's bad images (every rank's are gathered: a collective), ``last`` the run's ``last.pt`` (untouched)."""
    image_ids = [i for rank_ids in distributed.all_gather_object(image_ids) for i in rank_ids]
    kept = f"the last good checkpoint {last} is untouched" if last.exists() else "no checkpoint was written"
    terms = ", ".join(f"{k}={v:.6g}" for k, v in losses.items())
    err = NonFiniteLossError(f"iteration {iteration}: non-finite loss ({terms}) on the batch with image ids "
                             f"{image_ids}; training stopped, {kept}")
    err.every_rank = True  # all ranks agreed on it and name the same images: rank 0 alone reports it
    return err
