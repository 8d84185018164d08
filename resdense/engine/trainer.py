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

Under ``torchrun`` (see :mod:`resdense.engine.distributed`) the model trains in DistributedDataParallel: each rank
loads its slice of every global batch (the sampler's chunks), the ranks agree after each step on the logged losses,
on a non-finite loss and on a stop request (SIGTERM), rank 0 alone logs and writes files, and every checkpoint holds
every rank's random generator states, so a job killed and launched again resumes bit-exactly too.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from resdense.config import EvalConfig, TrainConfig
from resdense.errors import ConfigError, DataError, TrainingInterrupted
from resdense.files import make_dir, write_json
from resdense.hardware import choose_memory_format, choose_precision
from resdense.visualize import plot_curves

from . import distributed
from .checkpoint import seed_everything
from .distributed import resolve_device
from .ema import create_ema
from .evaluate import autocast, eval_loader, evaluate
from .logger import NullLogger, RunLogger
from .mlflow_logger import MlflowLogger
from .sampler import ResumableSampler, SeededDataset, groups
from .schedule import BackboneFreeze, build_optimizer, build_scheduler
from .step import NonFiniteLossError, forward_backward, nonfinite_error
from .tasks.base import Batch, Task, metric_mode
from .trainer_state import TrainerState

__all__ = ["Trainer", "NonFiniteLossError"]

log = logging.getLogger(__name__)
_now = time.perf_counter  # the clock of timings (a name of its own, so that tests can replace it)


def _version() -> str:
    """The installed resdense's version (the package facade, which holds ``__version__``, lies above the engine)."""
    try:
        return importlib.metadata.version("resdense")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Trainer(TrainerState):
    """Train ``model`` on ``train_set`` with ``task``'s loss, evaluating on ``val_set``.

    Args:
        model: the network (moved to the device).
        task: a :class:`~resdense.engine.tasks.base.Task` (loss, collate, evaluation).
        train_set / val_set: datasets returning ``(input, target)``; ``val_set`` may be ``None`` (no evaluation).
        train: :class:`TrainConfig`; eval: :class:`EvalConfig`.
        run_dir: where ``log.csv``, ``eval.csv``, ``last.pt``, ``best.pt``, ``metrics.json`` and ``curves.png`` go
            (and ``tb/`` and ``mlflow.json``, as ``train.loggers`` asks).
        config: the resolved recipe as plain types, stored in every checkpoint.
        hooks: optional ``{"after_step": fn(trainer, iteration, losses)}`` callbacks (used by tests and the demo).

    Under ``torchrun`` the process group is joined here when the caller has not (``train.dist_backend``), and
    ``train.batch_size`` is each process's; the global batch of a step is ``world * batch_size * accumulate``.

    Attributes:
        world: this process's :class:`~resdense.engine.distributed.World`.
        net: what training forward passes run through: ``DistributedDataParallel(model)`` under torchrun, else
            ``model``.
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
        self.world = w = distributed.init_from_env(train.dist_backend, train.device)
        self.device = resolve_device(train.device)
        self.precision = choose_precision(train.amp, self.device)
        self.amp_dtype = self.precision.dtype
        self.memory_format = choose_memory_format(train.channels_last, self.device, self.precision, task.name)
        model = self.memory_format.apply(model)  # before the optimizer, DDP and the EMA take the parameters
        # SyncBatchNorm replaces modules: before the optimizer, the freeze and the EMA take theirs. While the freeze
        # holds the backbone its parameters get no gradients, which DDP must be told to expect.
        self.model, self.net = distributed.wrap_model(model.to(self.device), self.device, sync_bn=train.sync_bn,
                                                      find_unused_parameters=train.freeze_backbone_iters > 0)
        if w.size > 1:
            seed_everything(train.seed + 1_000_003 * w.rank)  # each rank its own dropout, RPN sampling, ...
        self.train_set = SeededDataset(train_set)
        self.val_set = val_set
        self.accumulate = train.accumulate
        self.global_batch = w.size * train.batch_size * train.accumulate
        n = len(train_set)
        if n == 0:
            raise DataError("the training dataset is empty")
        if n < self.global_batch and self.global_batch > train.batch_size:
            raise DataError(f"the training set has {n} images, fewer than one global batch of {self.global_batch} "
                            f"({self._batch_words()})")
        # Whole global batches only (drop_last keeps BatchNorm away from a final batch of one); a set smaller than the
        # batch of a single process without accumulation is one short batch.
        self.drop_last = n >= self.global_batch
        self.iters_per_epoch = n // self.global_batch if self.drop_last else 1
        self.total_iters = train.iterations or train.epochs * self.iters_per_epoch
        self.sampler = ResumableSampler(n, seed=train.seed, shuffle=True, batch_size=train.batch_size, rank=w.rank,
                                        world_size=w.size,
                                        samples_per_epoch=self.iters_per_epoch * self.global_batch if self.drop_last
                                        else n)
        # The optimizer holds every parameter the model trains, the backbone's too while the freeze schedule holds it.
        self.optimizer = build_optimizer(self.model, train)
        self.schedule_clock = 0.0  # training seconds as the schedule sees them (rank 0's, set after every step)
        self.scheduler = build_scheduler(self.optimizer, self.total_iters, train, clock=lambda: self.schedule_clock)
        self.freeze = BackboneFreeze(self.model, train.freeze_backbone_iters) if train.freeze_backbone_iters else None
        self.ema = create_ema(self.model, train.ema_decay, train.ema_warmup_iters) if train.ema_decay else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.iteration = 0
        self.metric_name = self.eval_cfg.metric or task.default_metric
        self.metric_mode = metric_mode(self.metric_name, self.eval_cfg.mode)
        self.best: dict[str, Any] = {"metric": self.metric_name, "mode": self.metric_mode, "value": None,
                                     "iteration": None}
        self.last_metrics: dict[str, Any] = {}
        self.timings = {"train_s": 0.0, "eval_s": 0.0}
        self.nonfinite = 0
        self.stale_evals = 0  # evaluations since the best one (eval.patience)
        self.stopped: dict[str, Any] | None = None
        self.stop_request = distributed.StopRequest()
        self.stop_signal: int | None = None  # the signal all ranks agreed to stop on after the current step
        self.pending: dict[str, Any] | None = None  # the rest of an interrupted step (its log row), done on resume

    def _batch_words(self) -> str:
        return (f"{self.world.size} processes x train.batch_size {self.cfg.batch_size} x train.accumulate "
                f"{self.accumulate}")

    # ---- loaders --------------------------------------------------------------------------------------------------
    def _train_loader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=self.sampler,
                          num_workers=self.cfg.num_workers, collate_fn=self.task.collate, drop_last=self.drop_last,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                          worker_init_fn=distributed.ignore_stop_signals if self.cfg.num_workers else None)

    def val_loader(self) -> DataLoader | None:
        if self.val_set is None:
            return None
        return eval_loader(self.task, self.val_set, self.eval_cfg, self.cfg.num_workers)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    # ---- the loop -------------------------------------------------------------------------------------------------
    def fit(self, resume: str | os.PathLike | None = None) -> dict[str, Any]:
        """Train to ``total_iters``, or until ``eval.patience`` or ``train.max_minutes`` stops it, evaluate and
        return the final metrics (also in ``run_dir/metrics.json``)."""
        main = self.world.main
        if main:
            make_dir(self.run_dir, "run directory")
        log.info("precision %s (%s)", self.precision.name, self.precision.reason)
        log.info("memory format %s (%s)", self.memory_format.name, self.memory_format.reason)
        log.info("global batch %d (%s)", self.global_batch, self._batch_words())
        if self.val_set is not None:
            log.info("best.pt: the %s %s", "highest" if self.metric_mode == "max" else "lowest", self.metric_name)
        self.maybe_resume(resume)
        logger = self._open_logger()
        progress = self._progress()
        loader = self._train_loader()
        self.model.train()
        status = "FAILED"  # what the loggers record unless the run completes or is stopped by a signal
        try:
            with self.stop_request:  # SIGTERM: every rank finishes its step, then last.pt and one line
                self.stopped = self._stop_reason(after_eval=True)  # a resumed run that had already stopped
                pending, self.pending = self.pending, None
                if pending is not None and self.stopped is None:  # an interrupted step's evaluation and checkpoint
                    self._end_step(pending["row"], pending["logged"], logger)
                self._train(loader, logger, progress)
                if self.stopped is not None:
                    log.info("stopped at iteration %d of %d: %s", self.iteration, self.total_iters, self.stopped)
                if self.val_set is not None and self.best.get("evaluated_at") != self.iteration:
                    self._evaluate(logger)
                self.save("last.pt")  # a stop request after the last step changes nothing: the run is complete
            progress.close()
            result = self._finish(logger)
            status = "FINISHED"
        except (TrainingInterrupted, KeyboardInterrupt):
            status = "KILLED"  # last.pt holds the run: the same command resumes it
            raise
        finally:
            progress.close()
            logger.close(status)
        return result

    def _open_logger(self) -> RunLogger | NullLogger:
        """Rank 0's :class:`RunLogger` with the destinations of ``train.loggers``, opened at the iteration the run
        resumes from; :class:`NullLogger` on the other ranks. A failure to open on rank 0 (a missing package, an
        MLflow store that cannot be opened) is raised on every rank before training starts."""
        opened: list[RunLogger] = []

        def open_on_main() -> None:
            sinks = []
            if "mlflow" in self.cfg.loggers:
                params = self.config or {"train": dataclasses.asdict(self.cfg),
                                         "eval": dataclasses.asdict(self.eval_cfg)}
                tags = {"resdense.task": self.task.name, "resdense.version": _version(),
                        "resdense.precision": self.precision.name, "resdense.run_dir": str(self.run_dir.resolve())}
                experiment = self.cfg.mlflow_experiment or self.config.get("name") or self.run_dir.name
                sinks.append(MlflowLogger(self.run_dir, uri=self.cfg.mlflow_uri, experiment=experiment,
                                          params=params, tags=tags))
            logger = RunLogger(self.run_dir, tensorboard="tensorboard" in self.cfg.loggers, sinks=sinks)
            logger.resume_at(self.iteration)
            opened.append(logger)

        distributed.on_main(open_on_main)
        return opened[0] if opened else NullLogger()

    def _train(self, loader: DataLoader, logger: RunLogger, progress) -> None:
        while self.iteration < self.total_iters and self.stopped is None:
            epoch, done = divmod(self.iteration, self.iters_per_epoch)
            self.sampler.set_epoch(epoch, done * self.accumulate)
            tic = _now()
            for micro in groups(loader, self.accumulate):
                losses = self._step(micro)
                self.iteration += 1
                self.timings["train_s"] += _now() - tic
                self._after_step(losses, logger, progress)
                if self.stop_signal is not None:
                    self._interrupt()
                if self.iteration >= self.total_iters or self.stopped is not None:
                    break
                tic = _now()

    def _interrupt(self) -> None:
        """Write ``last.pt`` (with the rest of this step pending) and stop every rank with one line."""
        path = self.save("last.pt")
        name = signal.Signals(self.stop_signal).name
        raise TrainingInterrupted(f"{name} received: stopped after iteration {self.iteration} of {self.total_iters}, "
                                  f"{path} holds it; the same command resumes from there", self.stop_signal)

    def _stop_reason(self, after_eval: bool) -> dict[str, Any] | None:
        """Why training should stop now, before ``total_iters`` (``None``: it should not). The patience count changes
        only at evaluations, the budget is checked after every step; both come from stored state, so a run resumed
        after a stop stops again at once unless the limits were raised."""
        it = self.iteration
        if it >= self.total_iters:
            return None  # the run is complete: nothing was cut short
        budget = self.cfg.max_minutes
        if budget is not None and self.world.size > 1:  # every rank stops at the step where rank 0's clock says so
            self.timings["train_s"] = distributed.broadcast_object(self.timings["train_s"])
        self.schedule_clock = self.timings["train_s"]
        if budget is not None and self.timings["train_s"] > 60.0 * budget:
            return {"reason": "max_minutes", "iteration": it, "train_s": round(self.timings["train_s"], 3)}
        patience = self.eval_cfg.patience
        if after_eval and patience is not None and self.stale_evals >= patience:
            return {"reason": "patience", "iteration": it}
        return None

    def _progress(self):
        from tqdm.auto import tqdm

        enabled = self.cfg.progress and self.world.main and sys.stderr.isatty()
        return tqdm(total=self.total_iters, initial=self.iteration, disable=not enabled, dynamic_ncols=True,
                    desc=self.config.get("name", "train"), unit="it")

    def _step(self, micro: list[Batch]) -> dict[str, float]:
        """One optimizer step over ``train.accumulate`` micro-batches; returns the losses to log (means over the
        micro-batches and, under DDP, over the ranks). A non-finite loss skips the step (the schedule still
        advances) until ``train.max_nonfinite`` such steps, then stops training."""
        if self.freeze is not None:
            self.freeze.apply(self.iteration)
        self.optimizer.zero_grad(set_to_none=True)
        result = forward_backward(self.net, self.task, micro, self.device, self.autocast, self.scaler,
                                  world_size=self.world.size, stop=self.stop_request.signum)
        values, self.stop_signal = result.losses, result.stop
        if result.nonfinite:
            self.nonfinite += 1
            if self.nonfinite > self.cfg.max_nonfinite:
                ids = [i for batch in result.bad for i in self.task.image_ids(batch, self.train_set.dataset)]
                ids = [i for rank_ids in distributed.all_gather_object(ids) for i in rank_ids]  # every rank's
                raise nonfinite_error(self.iteration + 1, values, ids, self.run_dir / "last.pt")
            log.warning("iteration %d: non-finite loss %s, step skipped", self.iteration + 1, values)
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # the schedule advances even though this step was skipped
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            return values
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return values

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
        if self.stop_signal is not None:
            self.pending = {"row": row, "logged": logged}  # evaluation and checkpoint wait for the resumed run
            return
        self._end_step(row, logged, logger)

    def _end_step(self, row: dict[str, float], logged: bool, logger: RunLogger) -> None:
        """The evaluation and the checkpoint due after iteration ``self.iteration``."""
        it = self.iteration
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
        """Metrics of :attr:`eval_model` on the validation set (in eval mode; train mode restored after). Under
        torch.distributed every rank scores its shard with rank 0's BatchNorm statistics (what checkpoints hold)."""
        distributed.broadcast_buffers(self.eval_model)
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
        better = self.best["value"] is None or (value > self.best["value"] if self.metric_mode == "max"
                                                else value < self.best["value"])
        if better and math.isfinite(value):
            self.best.update(value=value, iteration=self.iteration)
            self.stale_evals = 0
            self.save("best.pt")
        else:
            self.stale_evals += 1

    def _finish(self, logger: RunLogger | NullLogger) -> dict[str, Any]:
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
            **self.hardware(),  # device, precision, memory_format, processes, machine
        }
        if self.world.main:
            write_json(self.run_dir / "metrics.json", result)
            try:
                plot_curves(self.run_dir, self.run_dir / "curves.png")
            except Exception as err:  # a plotting problem must never lose a finished run
                log.warning("could not draw curves: %s", err)
            logger.log_files([self.run_dir / name for name in ("metrics.json", "curves.png", "config.yaml")])
        distributed.barrier()  # the run directory is complete when fit() returns, on every rank
        return result

