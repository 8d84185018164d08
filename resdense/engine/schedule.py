"""Optimisers, learning-rate schedules and the backbone freeze schedule (each a function of the iteration)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from resdense._torch_private import NormBase
from resdense.config import TrainConfig
from resdense.errors import ConfigError
from resdense.heads import backbone_of

from .train_loop import HookBase

log = logging.getLogger(__name__)

__all__ = ["BackboneFreeze", "build_optimizer", "build_scheduler", "lr_factor", "param_groups"]

_NORMS = (NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float) -> list[dict]:
    """Split trainable parameters: norm-layer weights and all biases get ``norm_weight_decay`` (decaying them
    only shrinks a scale the next layer undoes). Frozen parameters are left out."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if isinstance(module, _NORMS) or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": norm_weight_decay})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the model's trainable parameters: torch's fused implementation where it has
    one (CPU and CUDA, torch >= 2.4), else the per-tensor loop."""
    groups = param_groups(model, cfg.weight_decay, cfg.norm_weight_decay)
    cls, kwargs = ((torch.optim.SGD, {"momentum": cfg.momentum}) if cfg.optimizer == "sgd"
                   else (torch.optim.AdamW, {"betas": tuple(cfg.betas)}))
    try:
        return cls(groups, lr=cfg.lr, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError) as err:  # older torch or a device without fused kernels
        log.info("optimizer %s: the per-tensor loop, not the fused kernel (%s)", cls.__name__,
                 str(err).splitlines()[0] if str(err) else type(err).__name__)
        return cls(groups, lr=cfg.lr, **kwargs)


def lr_factor(it: int, total: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Multiplier of the base learning rate at iteration ``it`` (0-based) of ``total``, or, when ``progress`` (the
    fraction of the training-time budget spent, ``train.schedule_by: time``) is given, at that point of the run.

    Linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters``, then the schedule: ``cosine`` decays to
    ``min_lr_ratio`` at ``total`` over the post-warm-up span, ``step`` multiplies by ``gamma`` at each milestone,
    ``constant`` stays at 1.
    """
    if cfg.warmup_iters > 0 and it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    if cfg.schedule == "cosine":
        span = max(1, total - cfg.warmup_iters)
        t = min(max(it - cfg.warmup_iters, 0), span) / span if progress is None else min(max(progress, 0.0), 1.0)
        main = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    elif cfg.schedule == "step":
        if progress is None:
            main = cfg.gamma ** sum(it >= (m * total if m < 1 else m) for m in cfg.milestones)
        else:  # milestones as fractions of the budget (iteration milestones have no meaning in time)
            main = cfg.gamma ** sum(progress >= (m if m < 1 else m / total) for m in cfg.milestones)
    else:
        main = 1.0
    return warm * main


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, cfg: TrainConfig,
                    clock: Callable[[], float] | None = None):
    """A ``LambdaLR`` over :func:`lr_factor`; its state dict is plain (the lambda itself is not saved). With
    ``train.schedule_by: time``, ``clock()`` gives the training seconds spent (the same on every rank)."""
    if cfg.schedule_by == "time":
        if clock is None:
            raise ValueError("train.schedule_by = 'time' needs the trainer's clock")
        budget = 60.0 * cfg.max_minutes
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, cfg, clock() / budget))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, cfg))


class BackboneFreeze(HookBase):
    """Keep the backbone frozen for the first ``iters`` iterations (``train.freeze_backbone_iters``), then train it.

    While frozen, the backbone's parameters have ``requires_grad=False``, so they get no gradient and the optimizer
    (built over all trainable parameters beforehand) skips them: no update, no weight decay, no optimizer state; its
    norm layers are in eval mode, so BatchNorm running statistics do not move. Then exactly the parameters the model
    itself made trainable train again: stages frozen by ``frozen_stages`` / ``trainable_stages`` or a
    ``Classifier(freeze_backbone=True)`` stay frozen, and ``model.train()`` re-applies the model's own mode rules.
    The state is a function of the iteration (:meth:`apply` before every step: a training hook), so a resumed run is
    frozen exactly when the uninterrupted one was.

    Args:
        model: a head model (see :func:`resdense.heads.backbone_of`).
        iters: number of frozen iterations.

    Raises:
        ConfigError: the model has no backbone.
    """

    def __init__(self, model: nn.Module, iters: int) -> None:
        self.model, self.iters = model, iters
        try:
            self.backbone = backbone_of(model)
        except ConfigError as err:
            raise ConfigError(f"train.freeze_backbone_iters = {iters}: {err}") from None
        self.trainable = [p for p in self.backbone.parameters() if p.requires_grad]  # the model's own choice
        self.frozen = False

    def before_step(self) -> None:
        self.apply(self.trainer.iteration)

    def apply(self, iteration: int) -> None:
        """Set the state for the step that follows ``iteration`` completed iterations (call with the model in
        train mode; evaluation in between may reset the backbone's mode, which this restores)."""
        frozen = iteration < self.iters
        if frozen != self.frozen:
            for p in self.trainable:
                p.requires_grad_(not frozen)
            self.frozen = frozen
            if not frozen:
                self.model.train(self.model.training)
        if frozen and self.model.training:
            self.backbone.eval()
