"""The training loop: one model, one task adapter, a train and a val dataset, a :class:`TrainConfig`.

Exact resume: every random draw is a function of the seed and the position in the run. The data order comes from
:class:`ResumableSampler` (epoch ``e``'s permutation from ``seed + e``; a resumed epoch skips its finished
batches), each sample's augmentation from ``(seed, epoch, index)`` (:class:`SeededDataset`), and the model's own
randomness (dropout, RPN sampling) from the torch generator, whose state the checkpoint carries together with the
numpy and Python ones. The loaders get private generators, so creating one never advances the global torch state.
On CPU a run killed at any iteration and resumed ends with the same weights, bit for bit, as an uninterrupted one.
The optional features keep that property: the weight average (``train.ema_decay``) is stored in every checkpoint,
the backbone freeze (``train.freeze_backbone_iters``) is a function of the iteration, and the early-stopping count
(``eval.patience``) and the training time of the budget (``train.max_minutes``) are stored too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from resdense.config import NOT_SET, EvalConfig, TrainConfig, first_difference
from resdense.errors import ConfigError, DataError, ResdenseError
from resdense.hardware import choose_precision

from .checkpoint import CHECKPOINT_FORMAT, atomic_save, load_checkpoint, rng_state, set_rng_state
from .ema import create_ema, ema_state, load_ema_state
from .evaluate import autocast, eval_loader, evaluate
from .logger import RunLogger
from .sampler import ResumableSampler, SeededDataset
from .schedule import BackboneFreeze, build_optimizer, build_scheduler
from .tasks.base import Task

__all__ = ["Trainer", "NonFiniteLossError", "resolve_device"]

log = logging.getLogger(__name__)
_now = time.perf_counter  # the clock of timings (a name of its own, so that tests can replace it)


class NonFiniteLossError(ResdenseError, FloatingPointError):
    """Training produced a NaN or infinite loss (the message names the iteration, the losses and the images)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return device


class Trainer:
    """Train ``model`` on ``train_set`` with ``task``'s loss, evaluating on ``val_set``.

    Args:
        model: the network (moved to the device).
        task: a :class:`~resdense.engine.tasks.base.Task` (loss, collate, evaluation).
        train_set / val_set: datasets returning ``(input, target)``; ``val_set`` may be ``None`` (no evaluation).
        train: :class:`TrainConfig`; eval: :class:`EvalConfig`.
        run_dir: where ``log.csv``, ``eval.csv``, ``last.pt``, ``best.pt``, ``metrics.json`` and ``curves.png`` go.
        config: the resolved recipe as plain types, stored in every checkpoint.
        hooks: optional ``{"after_step": fn(trainer, iteration, losses)}`` callbacks (used by tests and the demo).

    Attributes:
        ema: the :class:`~torch.optim.swa_utils.AveragedModel` of ``train.ema_decay`` (``None`` when off);
            :meth:`evaluate` scores ``ema.module``.
        stopped: why :meth:`fit` stopped before ``total_iters`` (``{"reason": "patience" | "max_minutes",
            "iteration": ...}``), else ``None``.
    """

    def __init__(self, model: nn.Module, task: Task, train_set: Dataset, val_set: Dataset | None,
                 train: TrainConfig, eval: EvalConfig | None = None, run_dir: str | os.PathLike = "runs/run",
                 config: dict[str, Any] | None = None, hooks: dict[str, Callable] | None = None) -> None:
        self.task, self.cfg, self.eval_cfg = task, train, eval or EvalConfig()
        self.run_dir = Path(run_dir)
        self.config = config or {}
        self.hooks = hooks or {}
        self.device = resolve_device(train.device)
        self.precision = choose_precision(train.amp, self.device)
        self.amp_dtype = self.precision.dtype
        self.model = model.to(self.device)
        self.train_set = SeededDataset(train_set)
        self.val_set = val_set
        if len(train_set) == 0:
            raise DataError("the training dataset is empty")
        # drop_last keeps BatchNorm away from a final batch of one; a set smaller than a batch is one short batch.
        self.drop_last = len(train_set) >= train.batch_size
        self.iters_per_epoch = (len(train_set) // train.batch_size if self.drop_last else 1)
        self.total_iters = train.iterations or train.epochs * self.iters_per_epoch
        self.sampler = ResumableSampler(len(train_set), seed=train.seed, shuffle=True, batch_size=train.batch_size)
        # The optimizer holds every parameter the model trains, the backbone's too while the freeze schedule holds it.
        self.optimizer = build_optimizer(self.model, train)
        self.scheduler = build_scheduler(self.optimizer, self.total_iters, train)
        self.freeze = BackboneFreeze(self.model, train.freeze_backbone_iters) if train.freeze_backbone_iters else None
        self.ema = create_ema(self.model, train.ema_decay, train.ema_warmup_iters) if train.ema_decay else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.iteration = 0
        self.metric_name = self.eval_cfg.metric or task.default_metric
        self.best: dict[str, Any] = {"metric": self.metric_name, "value": None, "iteration": None}
        self.last_metrics: dict[str, Any] = {}
        self.timings = {"train_s": 0.0, "eval_s": 0.0}
        self.nonfinite = 0
        self.stale_evals = 0  # evaluations since the best one (eval.patience)
        self.stopped: dict[str, Any] | None = None

    # ---- loaders --------------------------------------------------------------------------------------------------
    def _train_loader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=self.sampler,
                          num_workers=self.cfg.num_workers, collate_fn=self.task.collate, drop_last=self.drop_last,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator())

    def val_loader(self) -> DataLoader | None:
        if self.val_set is None:
            return None
        return eval_loader(self.task, self.val_set, self.eval_cfg, self.cfg.num_workers)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "epoch": self.iteration // self.iters_per_epoch,
            "rng": rng_state(),
            "best": dict(self.best),
            "metrics": {k: v for k, v in self.task.summary(self.last_metrics).items()},
            "timings": dict(self.timings),
            "stale_evals": self.stale_evals,
            "config": self.config,
            **({"ema": ema_state(self.ema)} if self.ema is not None else {}),
        }

    def save(self, name: str = "last.pt") -> Path:
        return atomic_save(self.state_dict(), self.run_dir / name)

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        self.best = dict(ckpt.get("best") or self.best)
        self.timings = dict(ckpt.get("timings") or self.timings)
        self.stale_evals = int(ckpt.get("stale_evals", 0))
        self.last_metrics = dict(ckpt.get("metrics") or {})  # what metrics.json reports if no evaluation follows
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                load_ema_state(self.ema, ckpt["ema"])
            else:
                log.warning("the checkpoint holds no weight average; train.ema_decay starts one at iteration %d",
                            int(ckpt["iteration"]))
        set_rng_state(ckpt["rng"])

    def maybe_resume(self, path: str | os.PathLike | None = None) -> bool:
        """Resume from ``path`` or, when ``train.resume``, from ``run_dir/last.pt`` if present."""
        path = Path(path) if path else self.run_dir / "last.pt"
        if not path.exists() or (path == self.run_dir / "last.pt" and not self.cfg.resume):
            return False
        ckpt = load_checkpoint(path, map_location=self.device)
        self._check_recipe(ckpt, path)
        self.load_state(ckpt)
        log.info("resumed from %s at iteration %d of %d", path, self.iteration, self.total_iters)
        return True

    def _check_recipe(self, ckpt: dict[str, Any], path: Path) -> None:
        """Refuse to continue a run whose model or data section differs from this recipe's: the optimizer state,
        the schedule and the data order would continue with another model or other data."""
        stored = ckpt.get("config") or {}
        for section in ("model", "data"):
            if section not in stored or section not in self.config:
                continue
            found = first_difference(stored[section], self.config[section], section)
            if found is not None:
                key, *values = found
                old, new = (v if v == NOT_SET else repr(v) for v in values)
                raise ConfigError(f"{path}: resuming refused: the checkpoint was trained with {key} = {old}, "
                                  f"this recipe has {new}; use another train.output_dir, or --set "
                                  "train.resume=false to start afresh")

    # ---- the loop -------------------------------------------------------------------------------------------------
    def fit(self, resume: str | os.PathLike | None = None) -> dict[str, Any]:
        """Train to ``total_iters``, or until ``eval.patience`` or ``train.max_minutes`` stops it, evaluate and
        return the final metrics (also in ``run_dir/metrics.json``)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log.info("precision %s (%s)", self.precision.name, self.precision.reason)
        self.maybe_resume(resume)
        logger = RunLogger(self.run_dir)
        logger.resume_at(self.iteration)
        progress = self._progress()
        loader = self._train_loader()
        self.model.train()
        try:
            self.stopped = self._stop_reason(after_eval=True)  # a resumed run that had already stopped
            while self.iteration < self.total_iters and self.stopped is None:
                epoch, done = divmod(self.iteration, self.iters_per_epoch)
                self.sampler.set_epoch(epoch, done)
                tic = _now()
                for batch in loader:
                    losses = self._step(batch)
                    self.iteration += 1
                    self.timings["train_s"] += _now() - tic
                    self._after_step(losses, logger, progress)
                    if self.iteration >= self.total_iters or self.stopped is not None:
                        break
                    tic = _now()
            if self.stopped is not None:
                log.info("stopped at iteration %d of %d: %s", self.iteration, self.total_iters, self.stopped)
            if self.val_set is not None and self.best.get("evaluated_at") != self.iteration:
                self._evaluate(logger)
            self.save("last.pt")
        finally:
            progress.close()
            logger.close()
        return self._finish()

    def _stop_reason(self, after_eval: bool) -> dict[str, Any] | None:
        """Why training should stop now, before ``total_iters`` (``None``: it should not). The patience count changes
        only at evaluations, the budget is checked after every step; both come from stored state, so a run resumed
        after a stop stops again at once unless the limits were raised."""
        it = self.iteration
        if it >= self.total_iters:
            return None  # the run is complete: nothing was cut short
        budget = self.cfg.max_minutes
        if budget is not None and self.timings["train_s"] > 60.0 * budget:
            return {"reason": "max_minutes", "iteration": it, "train_s": round(self.timings["train_s"], 3)}
        patience = self.eval_cfg.patience
        if after_eval and patience is not None and self.stale_evals >= patience:
            return {"reason": "patience", "iteration": it}
        return None

    def _progress(self):
        from tqdm.auto import tqdm

        enabled = self.cfg.progress and sys.stderr.isatty() and "PYTEST_CURRENT_TEST" not in os.environ
        return tqdm(total=self.total_iters, initial=self.iteration, disable=not enabled, dynamic_ncols=True,
                    desc=self.config.get("name", "train"), unit="it")

    def _step(self, batch) -> dict[str, float]:
        if self.freeze is not None:
            self.freeze.apply(self.iteration)
        batch = self.task.to_device(batch, self.device)
        with self.autocast():
            losses = self.task.losses(self.model, batch)
        loss = sum(losses.values())
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["loss"] = float(loss.detach())
        if not math.isfinite(values["loss"]):
            self.nonfinite += 1
            if self.nonfinite > self.cfg.max_nonfinite:
                self._raise_nonfinite(values, batch)
            log.warning("iteration %d: non-finite loss %s, step skipped", self.iteration + 1, values)
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # the schedule advances even though this step was skipped
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            return values
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return values

    def _raise_nonfinite(self, values: dict[str, float], batch) -> None:
        ids = self.task.image_ids(batch, self.train_set.dataset)
        last = self.run_dir / "last.pt"
        kept = f"the last good checkpoint {last} is untouched" if last.exists() else "no checkpoint was written"
        terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
        raise NonFiniteLossError(
            f"iteration {self.iteration + 1}: non-finite loss ({terms}) on the batch with image ids {ids}; "
            f"training stopped, {kept}"
        )

    def _after_step(self, losses: dict[str, float], logger: RunLogger, progress) -> None:
        it = self.iteration
        lr = self.optimizer.param_groups[0]["lr"]
        progress.update(1)
        progress.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        self.stopped = self._stop_reason(after_eval=False)
        row = {"epoch": (it - 1) // self.iters_per_epoch, "lr": lr, **losses, "time_s": self.timings["train_s"]}
        logged = it % max(1, self.cfg.log_every) == 0 or it == self.total_iters or self.stopped is not None
        if logged:
            logger.log_train(it, row)
        if "after_step" in self.hooks:
            self.hooks["after_step"](self, it, losses)
        evaluated = False
        if self.val_set is not None and self.stopped is None and self._eval_due(it):
            self._evaluate(logger)
            evaluated = True
            self.stopped = self._stop_reason(after_eval=True)
            if self.stopped is not None and not logged:
                logger.log_train(it, row)  # the log ends where training did
        end_of_epoch = it % self.iters_per_epoch == 0
        if evaluated or (self.cfg.checkpoint_every and it % self.cfg.checkpoint_every == 0) or end_of_epoch:
            if it < self.total_iters and self.stopped is None:  # the final one is written after the final evaluation
                self.save("last.pt")

    def _eval_due(self, it: int) -> bool:
        if it == self.total_iters:
            return False  # fit() evaluates once at the end
        if self.eval_cfg.every_iters:
            return it % self.eval_cfg.every_iters == 0
        if self.eval_cfg.every_epochs and it % self.iters_per_epoch == 0:
            return (it // self.iters_per_epoch) % self.eval_cfg.every_epochs == 0
        return False

    @property
    def eval_model(self) -> nn.Module:
        """The weights that evaluation scores: the EMA's once it has averaged a step, else the model."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return self.ema.module
        return self.model

    def evaluate(self) -> dict[str, Any]:
        """Metrics of :attr:`eval_model` on the validation set (in eval mode; train mode restored after)."""
        return evaluate(self.eval_model, self.task, self.val_set, self.eval_cfg, self.device, dtype=self.amp_dtype,
                        num_workers=self.cfg.num_workers)

    def _evaluate(self, logger: RunLogger) -> None:
        tic = _now()
        metrics = self.evaluate()
        self.timings["eval_s"] += _now() - tic
        self.last_metrics = metrics
        summary = self.task.summary(metrics)
        logger.log_eval(self.iteration, summary)
        if self.metric_name not in metrics:
            raise ConfigError(f"eval.metric = {self.metric_name!r} is not among the task's metrics: "
                              f"{', '.join(sorted(summary))}")
        value = float(metrics[self.metric_name])
        log.info("iteration %d: %s", self.iteration,
                 ", ".join(f"{k}={v:.4f}" for k, v in summary.items() if "/" not in k or k.endswith("AP50")
                           or k.endswith("/AP")))
        self.best["evaluated_at"] = self.iteration
        better = self.best["value"] is None or (value > self.best["value"] if self.task.higher_is_better
                                                else value < self.best["value"])
        if better and math.isfinite(value):
            self.best.update(value=value, iteration=self.iteration)
            self.stale_evals = 0
            self.save("best.pt")
        else:
            self.stale_evals += 1

    def _finish(self) -> dict[str, Any]:
        summary = self.task.summary(self.last_metrics)
        result = {
            "task": self.task.name,
            "metric": self.metric_name,
            "iterations": self.iteration,
            "final": summary,
            "best": {k: v for k, v in self.best.items() if k != "evaluated_at"},
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "stopped": self.stopped,
            "evaluated_weights": "ema" if self.ema is not None else "model",
            "device": str(self.device),
            "precision": self.precision.as_dict(),
        }
        (self.run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        try:
            from resdense.visualize import plot_curves

            plot_curves(self.run_dir, self.run_dir / "curves.png")
        except Exception as err:  # a plotting problem must never lose a finished run
            log.warning("could not draw curves: %s", err)
        return result
