"""The training loop: one model, one task adapter, a train and a val dataset, a :class:`TrainConfig`.

Exact resume: every random draw is a function of the seed and the position in the run. The data order comes from
:class:`ResumableSampler` (epoch ``e``'s permutation from ``seed + e``; a resumed epoch skips its finished
batches), each sample's augmentation from ``(seed, epoch, index)`` (:class:`SeededDataset`), and the model's own
randomness (dropout, RPN sampling) from the torch generator, whose state the checkpoint carries together with the
numpy and Python ones. The loaders get private generators, so creating one never advances the global torch state.
On CPU a run killed at any iteration and resumed ends with the same weights, bit for bit, as an uninterrupted one.
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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from resdense.config import EvalConfig, TrainConfig
from resdense.errors import ResdenseError
from resdense.hardware import choose_precision

from .checkpoint import CHECKPOINT_FORMAT, atomic_save, load_checkpoint, rng_state, set_rng_state
from .logger import RunLogger
from .sampler import ResumableSampler, SeededDataset
from .schedule import build_optimizer, build_scheduler
from .tasks.base import Task

__all__ = ["Trainer", "NonFiniteLossError", "resolve_device"]

log = logging.getLogger(__name__)


class NonFiniteLossError(ResdenseError, FloatingPointError):
    """Training produced a NaN or infinite loss (the message names the iteration, the losses and the images)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from resdense.errors import ConfigError

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
            from resdense.errors import DataError

            raise DataError("the training dataset is empty")
        # drop_last keeps BatchNorm away from a final batch of one; a set smaller than a batch is one short batch.
        self.drop_last = len(train_set) >= train.batch_size
        self.iters_per_epoch = (len(train_set) // train.batch_size if self.drop_last else 1)
        self.total_iters = train.iterations or train.epochs * self.iters_per_epoch
        self.sampler = ResumableSampler(len(train_set), seed=train.seed, shuffle=True, batch_size=train.batch_size)
        self.optimizer = build_optimizer(self.model, train)
        self.scheduler = build_scheduler(self.optimizer, self.total_iters, train)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.iteration = 0
        self.metric_name = self.eval_cfg.metric or task.default_metric
        self.best: dict[str, Any] = {"metric": self.metric_name, "value": None, "iteration": None}
        self.last_metrics: dict[str, Any] = {}
        self.timings = {"train_s": 0.0, "eval_s": 0.0}
        self.nonfinite = 0

    # ---- loaders --------------------------------------------------------------------------------------------------
    def _train_loader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=self.sampler,
                          num_workers=self.cfg.num_workers, collate_fn=self.task.collate, drop_last=self.drop_last,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator())

    def val_loader(self) -> DataLoader | None:
        if self.val_set is None:
            return None
        ds = self.val_set
        if self.eval_cfg.max_images is not None and self.eval_cfg.max_images < len(ds):
            ds = Subset(ds, range(self.eval_cfg.max_images))
        return DataLoader(SeededDataset(ds), batch_size=self.eval_cfg.batch_size, shuffle=False,
                          num_workers=self.cfg.num_workers, collate_fn=self.task.collate,
                          generator=torch.Generator())

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

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
            "config": self.config,
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
        set_rng_state(ckpt["rng"])

    def maybe_resume(self, path: str | os.PathLike | None = None) -> bool:
        """Resume from ``path`` or, when ``train.resume``, from ``run_dir/last.pt`` if present."""
        path = Path(path) if path else self.run_dir / "last.pt"
        if not path.exists() or (path == self.run_dir / "last.pt" and not self.cfg.resume):
            return False
        ckpt = load_checkpoint(path, map_location=self.device)
        self.load_state(ckpt)
        log.info("resumed from %s at iteration %d of %d", path, self.iteration, self.total_iters)
        return True

    # ---- the loop -------------------------------------------------------------------------------------------------
    def fit(self, resume: str | os.PathLike | None = None) -> dict[str, Any]:
        """Train to ``total_iters`` and return the final metrics (also in ``run_dir/metrics.json``)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log.info("precision %s (%s)", self.precision.name, self.precision.reason)
        self.maybe_resume(resume)
        logger = RunLogger(self.run_dir)
        logger.resume_at(self.iteration)
        progress = self._progress()
        loader = self._train_loader()
        self.model.train()
        try:
            while self.iteration < self.total_iters:
                epoch, done = divmod(self.iteration, self.iters_per_epoch)
                self.sampler.set_epoch(epoch, done)
                tic = time.perf_counter()
                for batch in loader:
                    losses = self._step(batch)
                    self.iteration += 1
                    self.timings["train_s"] += time.perf_counter() - tic
                    self._after_step(losses, logger, progress)
                    if self.iteration >= self.total_iters:
                        break
                    tic = time.perf_counter()
                else:
                    continue
                break
            if self.val_set is not None and self.best.get("evaluated_at") != self.iteration:
                self._evaluate(logger)
            self.save("last.pt")
        finally:
            progress.close()
            logger.close()
        return self._finish()

    def _progress(self):
        from tqdm.auto import tqdm

        enabled = self.cfg.progress and sys.stderr.isatty()
        return tqdm(total=self.total_iters, initial=self.iteration, disable=not enabled, dynamic_ncols=True,
                    desc=self.config.get("name", "train"), unit="it")

    def _step(self, batch) -> dict[str, float]:
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
        if it % max(1, self.cfg.log_every) == 0 or it == self.total_iters:
            logger.log_train(it, {"epoch": (it - 1) // self.iters_per_epoch, "lr": lr, **losses,
                                  "time_s": self.timings["train_s"]})
        if "after_step" in self.hooks:
            self.hooks["after_step"](self, it, losses)
        evaluated = False
        if self.val_set is not None and self._eval_due(it):
            self._evaluate(logger)
            evaluated = True
        end_of_epoch = it % self.iters_per_epoch == 0
        if evaluated or (self.cfg.checkpoint_every and it % self.cfg.checkpoint_every == 0) or end_of_epoch:
            if it < self.total_iters:  # the final one is written after the final evaluation
                self.save("last.pt")

    def _eval_due(self, it: int) -> bool:
        if it == self.total_iters:
            return False  # fit() evaluates once at the end
        if self.eval_cfg.every_iters:
            return it % self.eval_cfg.every_iters == 0
        if self.eval_cfg.every_epochs and it % self.iters_per_epoch == 0:
            return (it // self.iters_per_epoch) % self.eval_cfg.every_epochs == 0
        return False

    def evaluate(self) -> dict[str, Any]:
        """Metrics on the validation set (model in eval mode, train mode restored after)."""
        loader = self.val_loader()
        was_training = self.model.training
        self.model.eval()
        try:
            return self.task.evaluate(self.model, loader, self.device, autocast=self.autocast)
        finally:
            self.model.train(was_training)

    def _evaluate(self, logger: RunLogger) -> None:
        tic = time.perf_counter()
        metrics = self.evaluate()
        self.timings["eval_s"] += time.perf_counter() - tic
        self.last_metrics = metrics
        summary = self.task.summary(metrics)
        logger.log_eval(self.iteration, summary)
        if self.metric_name not in metrics:
            from resdense.errors import ConfigError

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
            self.save("best.pt")

    def _finish(self) -> dict[str, Any]:
        summary = self.task.summary(self.last_metrics)
        result = {
            "task": self.task.name,
            "metric": self.metric_name,
            "iterations": self.iteration,
            "final": summary,
            "best": {k: v for k, v in self.best.items() if k != "evaluated_at"},
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
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
