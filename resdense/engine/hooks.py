"""Training hooks: everything the loop of :class:`~resdense.engine.trainer.Trainer` does around its steps.

A hook overrides any of ``before_train``, ``before_step``, ``after_step``, ``after_train`` and ``close``, and
stores what a resumed run needs in the checkpoint through ``state_dict`` / ``load_state_dict``. The trainer runs, in
this order (:func:`trainer_hooks`): :class:`~resdense.engine.ema.EMA` (``train.ema_decay``), :class:`Timer`
(``timings.train_s`` and ``train.max_minutes``), :class:`~resdense.engine.schedule.BackboneFreeze`
(``train.freeze_backbone_iters``), :class:`Logger`, then the recipe's ``train.hooks`` and those passed in Python,
then :class:`StopOnSignal`, :class:`Evaluator` and :class:`Checkpointer`: a user hook sees each step trained and
logged, before its evaluation and checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from resdense.config import EvalConfig
from resdense.errors import ConfigError, TrainingInterrupted
from resdense.registry import HOOKS
from resdense.version import VERSION

from . import distributed
from .ema import EMA
from .logger import NullLogger, RunLogger
from .mlflow_logger import MlflowLogger
from .schedule import BackboneFreeze
from .train_loop import HookBase

__all__ = ["Timer", "Logger", "StopOnSignal", "Evaluator", "Checkpointer", "recipe_hooks", "trainer_hooks"]

log = logging.getLogger("resdense.engine.trainer")  # the training messages, under the trainer's logger name


def hook_entry(entry: str | dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """``(name, options)`` of one ``train.hooks`` entry: a name, or ``{name: {option: value}}``."""
    return (entry, None) if isinstance(entry, str) else next(iter(entry.items()))


def recipe_hooks(entries: Sequence[str | dict[str, Any]], source: str) -> list[HookBase]:
    """The hooks of a recipe's ``train.hooks``: names of :data:`resdense.registry.HOOKS`, or ``{name: {option:
    value}}`` entries whose options are the hook's keyword arguments."""
    hooks = []
    for entry in entries:
        name, options = hook_entry(entry)
        if not HOOKS:
            raise ConfigError(f"{source}: train.hooks = {name!r} is not a registered hook; none is registered")
        cls = HOOKS.get(name, source, "train.hooks").cls
        try:
            hooks.append(cls(**(options or {})))
        except TypeError as err:
            raise ConfigError(f"{source}: train.hooks: {name}: {err}") from None
    return hooks


def trainer_hooks(trainer: Any, hooks: Sequence[HookBase], source: str) -> list[HookBase]:
    """A Trainer's hooks in this module's order (``hooks`` after ``train.hooks``); needs ``trainer.evaluator``."""
    t, cfg = trainer, trainer.cfg
    freeze = [BackboneFreeze(t.model, cfg.freeze_backbone_iters)] if cfg.freeze_backbone_iters else []
    return [*([EMA(t.ema)] if t.ema is not None else []), Timer(cfg.max_minutes), *freeze, Logger(),
            *recipe_hooks(cfg.hooks, source), *hooks, StopOnSignal(), t.evaluator,
            Checkpointer(cfg.checkpoint_every, lambda: t.evaluator.best.get("evaluated_at"))]


class Timer(HookBase):
    """``timings.train_s`` (data loading and steps, with the EMA and freeze hooks run inside the step's time) and
    the budget ``train.max_minutes`` on it, checked after every step and on resume. Under torchrun every rank takes
    rank 0's clock, so all stop at the same step."""

    def __init__(self, max_minutes: float | None) -> None:
        self.budget, self.tic = max_minutes, 0.0

    def before_train(self) -> None:
        self._check()

    def before_step(self) -> None:
        self.tic = self.trainer.clock()

    def after_step(self) -> None:
        self.trainer.timings["train_s"] += self.trainer.clock() - self.tic
        self._check()

    def _check(self) -> None:
        t = self.trainer
        if self.budget is None:
            return
        t.timings["train_s"] = distributed.broadcast_object(t.timings["train_s"])  # rank 0's clock
        if t.timings["train_s"] > 60.0 * self.budget:
            t.request_stop("max_minutes", train_s=round(t.timings["train_s"], 3))


class Logger(HookBase):
    """``log.csv`` rows every ``train.log_every`` steps and at the last one (with TensorBoard and MLflow as
    ``train.loggers`` asks, on rank 0; :attr:`Trainer.logger <resdense.engine.trainer.Trainer>` for the others'
    rows) and the progress bar. A step cut by a stop signal leaves its row in the ``pending`` entry."""

    def __init__(self) -> None:
        self.row: dict[str, float] | None = None
        self.logged, self.bar = True, None

    def before_train(self) -> None:
        from tqdm.auto import tqdm  # imported when a run starts: the bar's module is slow to import

        t = self.trainer
        opened: list[RunLogger] = []
        distributed.on_main(lambda: opened.append(self._open()))  # an error on rank 0 stops every rank
        t.logger = opened[0] if opened else NullLogger()
        enabled = t.cfg.progress and t.world.main and sys.stderr.isatty()
        self.bar = tqdm(total=t.total_iters, initial=t.iteration, disable=not enabled, dynamic_ncols=True,
                        desc=t.config.get("name", "train"), unit="it")

    def _open(self) -> RunLogger:
        t, sinks = self.trainer, []
        if "mlflow" in t.cfg.loggers:
            params = t.config or {"train": dataclasses.asdict(t.cfg), "eval": dataclasses.asdict(t.eval_cfg)}
            tags = {"resdense.task": t.task.name, "resdense.version": VERSION,
                    "resdense.precision": t.precision.name, "resdense.run_dir": str(t.run_dir.resolve())}
            experiment = t.cfg.mlflow_experiment or t.config.get("name") or t.run_dir.name
            sinks.append(MlflowLogger(t.run_dir, uri=t.cfg.mlflow_uri, experiment=experiment, params=params,
                                      tags=tags))
        logger = RunLogger(t.run_dir, tensorboard="tensorboard" in t.cfg.loggers, sinks=sinks)
        logger.resume_at(t.iteration)
        return logger

    def after_step(self) -> None:
        t, it = self.trainer, self.trainer.iteration
        lr = t.optimizer.param_groups[0]["lr"]
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{t.losses['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        self.row = {"epoch": (it - 1) // t.iters_per_epoch, "lr": lr, **t.losses, "time_s": t.timings["train_s"]}
        self.logged = it % max(1, t.cfg.log_every) == 0 or it == t.total_iters
        if self.logged:
            t.logger.log_train(it, self.row)

    def after_train(self) -> None:
        if not self.logged:  # stopped early: the log ends where training did
            self.trainer.logger.log_train(self.trainer.iteration, self.row)
            self.logged = True

    def close(self, status: str) -> None:
        t = self.trainer
        if self.bar is not None:
            self.bar.close()
        if status == "FINISHED":
            t.logger.log_files([t.run_dir / name for name in ("metrics.json", "curves.png", "config.yaml")])
        t.logger.close(status)

    def state_dict(self) -> dict[str, Any]:
        return {"pending": {"row": self.row, "logged": self.logged}} if self.trainer.signal is not None else {}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("pending") is not None:
            self.row, self.logged = checkpoint["pending"]["row"], checkpoint["pending"]["logged"]


class StopOnSignal(HookBase):
    """SIGTERM or SIGINT (:class:`~resdense.engine.distributed.StopRequest`, agreed by every rank in the step):
    rank 0 writes ``last.pt`` and :class:`TrainingInterrupted` ends the run with one line; the step's evaluation and
    checkpoint are done by the resumed run."""

    def after_step(self) -> None:
        t = self.trainer
        if t.signal is None:
            return
        path = t.save("last.pt")
        raise TrainingInterrupted(f"{signal.Signals(t.signal).name} received: stopped after iteration {t.iteration} "
                                  f"of {t.total_iters}, {path} holds it; the same command resumes from there",
                                  t.signal)


class Evaluator(HookBase):
    """Evaluations every ``eval.every_iters`` or ``eval.every_epochs`` and at the end, ``best.pt`` at the best
    ``eval.metric``, and early stopping after ``eval.patience`` evaluations in a row without improvement; the
    ``best``, ``stale_evals`` and ``metrics`` entries. Nothing without a validation set."""

    def __init__(self, cfg: EvalConfig, metric: str, mode: str) -> None:
        self.cfg = cfg
        self.best: dict[str, Any] = {"metric": metric, "mode": mode, "value": None, "iteration": None}
        self.stale = 0  # evaluations since the best one
        self.metrics: dict[str, Any] = {}  # the last evaluation's

    def before_train(self) -> None:
        t = self.trainer
        if t.val_set is not None:
            log.info("best.pt: the %s %s", "highest" if self.best["mode"] == "max" else "lowest", self.best["metric"])
        self._patience()
        if self.best.get("evaluated_at") != t.iteration:  # a run cut by a signal evaluates the step it ended on
            self.after_step()

    def after_step(self) -> None:
        t = self.trainer
        if t.val_set is not None and t.stopped is None and self._due(t.iteration):
            self.evaluate()
            self._patience()

    def after_train(self) -> None:
        if self.trainer.val_set is not None and self.best.get("evaluated_at") != self.trainer.iteration:
            self.evaluate()

    def _due(self, it: int) -> bool:
        per_epoch = self.trainer.iters_per_epoch
        if it == 0 or it == self.trainer.total_iters:
            return False  # the end is evaluated by after_train
        if self.cfg.every_iters:
            return it % self.cfg.every_iters == 0
        return bool(self.cfg.every_epochs) and it % per_epoch == 0 and (it // per_epoch) % self.cfg.every_epochs == 0

    def _patience(self) -> None:
        if self.cfg.patience is not None and self.stale >= self.cfg.patience:
            self.trainer.request_stop("patience")

    def evaluate(self) -> None:
        t, name = self.trainer, self.best["metric"]
        tic = t.clock()
        self.metrics = t.evaluate()
        t.timings["eval_s"] += t.clock() - tic
        summary = t.task.summary(self.metrics)
        t.logger.log_eval(t.iteration, summary)
        if name not in self.metrics:
            raise ConfigError(f"eval.metric = {name!r} is not among the task's metrics: {', '.join(sorted(summary))}")
        value = float(self.metrics[name])
        log.info("iteration %d: %s", t.iteration, ", ".join(f"{k}={v:.4f}" for k, v in summary.items()
                                                             if "/" not in k or k.endswith(("AP50", "/AP"))))
        self.best["evaluated_at"] = t.iteration
        old = self.best["value"]
        if math.isfinite(value) and (old is None or (value > old if self.best["mode"] == "max" else value < old)):
            self.best.update(value=value, iteration=t.iteration)
            self.stale = 0
            t.save("best.pt")
        else:
            self.stale += 1

    def report(self) -> dict[str, Any]:
        """``metric``, ``final`` (the last evaluation's summary) and ``best`` of ``metrics.json``."""
        best = {k: v for k, v in self.best.items() if k != "evaluated_at"}
        return {"metric": self.best["metric"], "final": self.trainer.task.summary(self.metrics), "best": best}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "stale_evals": self.stale, "metrics": self.trainer.task.summary(self.metrics)}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        self.best = dict(checkpoint.get("best") or self.best)
        self.stale = int(checkpoint.get("stale_evals", 0))
        self.metrics = dict(checkpoint.get("metrics") or {})  # what metrics.json reports if no evaluation follows


class Checkpointer(HookBase):
    """``last.pt`` after every evaluation, every ``train.checkpoint_every`` steps and at every epoch's end, and at
    the end of training (after the final evaluation)."""

    def __init__(self, every: int, evaluated_at: Callable[[], int | None]) -> None:
        self.every, self.evaluated_at = every, evaluated_at

    def after_step(self) -> None:
        t, it = self.trainer, self.trainer.iteration
        due = self.evaluated_at() == it or (self.every and it % self.every == 0) or it % t.iters_per_epoch == 0
        if due and it < t.total_iters and t.stopped is None:
            t.save("last.pt")

    def after_train(self) -> None:
        self.trainer.save("last.pt")
