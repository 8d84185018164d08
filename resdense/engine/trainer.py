"""The :class:`~resdense.engine.train_loop.TrainLoop` of resdense's tasks: one model, one task adapter, a train and a
val dataset, a :class:`TrainConfig`, and the hooks of :mod:`resdense.engine.hooks` with the recipe's ``train.hooks``.

Exact resume: every random draw is a function of the seed and the position in the run. The data order comes from
:class:`ResumableSampler` (epoch ``e``'s permutation from ``seed + e``; a resumed epoch skips its finished
batches), each sample's augmentation from ``(seed, epoch, index)`` (:class:`SeededDataset`), and the model's own
randomness (dropout, RPN sampling) from the torch generator, whose state the checkpoint carries together with the
numpy and Python ones. The loaders get private generators, so creating one never advances the global torch state.
On CPU a run killed at any iteration and resumed ends with the same weights, bit for bit, as an uninterrupted one.

Under ``torchrun`` (see :mod:`resdense.engine.distributed`) the model trains in DistributedDataParallel: each rank
loads its slice of every global batch (the sampler's chunks), the ranks agree after each step on the logged losses,
on a non-finite loss and on a stop request (SIGTERM), rank 0 alone logs and writes files, and every checkpoint holds
every rank's random generator states, so a job killed and launched again resumes bit-exactly too.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from resdense.config import EvalConfig, TrainConfig
from resdense.errors import DataError, WeightsError
from resdense.files import make_dir, write_json
from resdense.hardware import choose_memory_format, choose_precision, machine_summary
from resdense.visualize import plot_curves

from . import distributed
from .checkpoint import (
    CHECKPOINT_FORMAT,
    check_resumable,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from .ema import EMA, create_ema
from .evaluate import autocast, eval_loader, evaluate
from .hooks import Checkpointer, Evaluator, Logger, StopOnSignal, Timer, recipe_hooks
from .logger import NullLogger
from .sampler import ResumableSampler, SeededDataset, groups
from .schedule import BackboneFreeze, build_optimizer, build_scheduler
from .step import NonFiniteLossError, forward_backward, nonfinite_error
from .tasks.base import Batch, Task, metric_mode
from .train_loop import HookBase, TrainLoop

__all__ = ["Trainer", "NonFiniteLossError"]

log = logging.getLogger(__name__)
_now = time.perf_counter  # the clock of timings (a name of its own, so that tests can replace it)


class Trainer(TrainLoop):
    """Train ``model`` on ``train_set`` with ``task``'s loss, evaluating on ``val_set``.

    Args:
        model: the network (moved to the device).
        task: a :class:`~resdense.engine.tasks.base.Task` (loss, collate, evaluation).
        train_set / val_set: datasets returning ``(input, target)``; ``val_set`` may be ``None`` (no evaluation).
        train: :class:`TrainConfig`; eval: :class:`EvalConfig`.
        run_dir: where ``log.csv``, ``eval.csv``, ``last.pt``, ``best.pt``, ``metrics.json`` and ``curves.png`` go
            (and ``tb/`` and ``mlflow.json``, as ``train.loggers`` asks).
        config: the resolved recipe as plain types, stored in every checkpoint.
        hooks: :class:`~resdense.engine.hooks.HookBase` instances, run after those of ``train.hooks``.
        source: the recipe's name in the messages of ``train.hooks``.

    Under ``torchrun`` the process group is joined here when the caller has not (``train.dist_backend``), and
    ``train.batch_size`` is each process's; the global batch of a step is ``world * batch_size * accumulate``.

    Attributes:
        world: this process's :class:`~resdense.engine.distributed.World`.
        net: what training forward passes run through: ``DistributedDataParallel(model)`` under torchrun, else
            ``model``.
        ema: the :class:`~torch.optim.swa_utils.AveragedModel` of ``train.ema_decay`` (``None`` when off).
        hooks: the hooks, in the order they run.
        stopped: why :meth:`fit` stopped before ``total_iters`` (``{"reason": ..., "iteration": ...}``), else ``None``.
    """

    def __init__(self, model: nn.Module, task: Task, train_set: Dataset, val_set: Dataset | None,
                 train: TrainConfig, eval: EvalConfig | None = None, run_dir: str | os.PathLike = "runs/run",
                 config: dict[str, Any] | None = None, hooks: Sequence[HookBase] = (),
                 source: str = "<train config>") -> None:
        self.task, self.cfg, self.eval_cfg = task, train, eval or EvalConfig()
        self.run_dir, self.config = Path(run_dir), config or {}
        self.world = w = distributed.init_from_env(train.dist_backend, train.device)
        self.device = device = distributed.resolve_device(train.device)
        self.precision = choose_precision(train.amp, device)
        self.amp_dtype = self.precision.dtype
        self.memory_format = choose_memory_format(train.channels_last, device, self.precision, task.name)
        model = self.memory_format.apply(model)  # before the optimizer, DDP and the EMA take the parameters
        # SyncBatchNorm replaces modules: before the optimizer, the freeze and the EMA take theirs. While the freeze
        # holds the backbone its parameters get no gradients, which DDP must be told to expect.
        self.model, self.net = distributed.wrap_model(model.to(device), device, sync_bn=train.sync_bn,
                                                      find_unused_parameters=train.freeze_backbone_iters > 0)
        if w.size > 1:
            seed_everything(train.seed + 1_000_003 * w.rank)  # each rank its own dropout, RPN sampling, ...
        self.train_set, self.val_set, self.accumulate = SeededDataset(train_set), val_set, train.accumulate
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
                                        world_size=w.size, samples_per_epoch=self.iters_per_epoch * self.global_batch
                                        if self.drop_last else n)
        # The optimizer holds every parameter the model trains, the backbone's too while the freeze schedule holds it.
        self.optimizer = build_optimizer(self.model, train)
        self.timings = {"train_s": 0.0, "eval_s": 0.0}  # the schedule's clock is train_s (rank 0's under torchrun)
        self.scheduler = build_scheduler(self.optimizer, self.total_iters, train, clock=lambda: self.timings["train_s"])
        self.ema = create_ema(self.model, train.ema_decay, train.ema_warmup_iters) if train.ema_decay else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.iteration, self.nonfinite, self.losses, self.skipped = 0, 0, {}, False
        self.stop_request = distributed.StopRequest()
        self.signal: int | None = None  # the stop signal all ranks agreed on in the last step
        self.logger = NullLogger()  # the Logger hook's RunLogger on rank 0 while fit() runs
        self.evaluator = Evaluator(self.eval_cfg, m := self.eval_cfg.metric or task.default_metric,
                                   metric_mode(m, self.eval_cfg.mode))
        freeze = BackboneFreeze(self.model, train.freeze_backbone_iters) if train.freeze_backbone_iters else None
        self.register_hooks([*([EMA(self.ema)] if self.ema else []), Timer(train.max_minutes), *filter(None, [freeze]),
                             Logger(), *recipe_hooks(train.hooks, source), *hooks, StopOnSignal(), self.evaluator,
                             Checkpointer(train.checkpoint_every, lambda: self.evaluator.best.get("evaluated_at"))])

    def clock(self) -> float:
        return _now()

    def _batch_words(self) -> str:
        return (f"{self.world.size} processes x train.batch_size {self.cfg.batch_size} x train.accumulate "
                f"{self.accumulate}")

    def val_loader(self) -> DataLoader | None:
        return None if self.val_set is None else eval_loader(self.task, self.val_set, self.eval_cfg,
                                                             self.cfg.num_workers)

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    # ---- the loop -------------------------------------------------------------------------------------------------
    def fit(self, resume: str | os.PathLike | None = None) -> dict[str, Any]:
        """Train to ``total_iters``, or until a hook stops it (``eval.patience``, ``train.max_minutes``), evaluate and
        return the final metrics (also in ``run_dir/metrics.json``)."""
        if self.world.main:
            make_dir(self.run_dir, "run directory")
        log.info("precision %s (%s)", self.precision.name, self.precision.reason)
        log.info("memory format %s (%s)", self.memory_format.name, self.memory_format.reason)
        log.info("global batch %d (%s)", self.global_batch, self._batch_words())
        self.maybe_resume(resume)
        self.model.train()
        return self.train()

    def batches(self) -> Iterator[list[Batch]]:
        """The steps' micro-batches from the current iteration on, epoch after epoch."""
        loader = DataLoader(self.train_set, batch_size=self.cfg.batch_size, sampler=self.sampler,
                            num_workers=self.cfg.num_workers, collate_fn=self.task.collate, drop_last=self.drop_last,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                            worker_init_fn=distributed.ignore_stop_signals if self.cfg.num_workers else None)
        while True:
            epoch, done = divmod(self.iteration, self.iters_per_epoch)
            self.sampler.set_epoch(epoch, done * self.accumulate)
            yield from groups(loader, self.accumulate)

    def run_step(self, micro: list[Batch]) -> None:
        """One optimizer step over ``train.accumulate`` micro-batches; sets :attr:`losses` (means over the
        micro-batches and, under DDP, over the ranks). A non-finite loss skips the step (the schedule still
        advances) until ``train.max_nonfinite`` such steps, then stops training."""
        self.optimizer.zero_grad(set_to_none=True)
        result = forward_backward(self.net, self.task, micro, self.device, self.autocast, self.scaler,
                                  world_size=self.world.size, stop=self.stop_request.signum)
        self.losses, self.signal, self.skipped = result.losses, result.stop, bool(result.nonfinite)
        if self.skipped:
            self.nonfinite += 1
            if self.nonfinite > self.cfg.max_nonfinite:
                ids = [i for batch in result.bad for i in self.task.image_ids(batch, self.train_set.dataset)]
                ids = [i for rank_ids in distributed.all_gather_object(ids) for i in rank_ids]  # every rank's
                raise nonfinite_error(self.iteration + 1, self.losses, ids, self.run_dir / "last.pt")
            log.warning("iteration %d: non-finite loss %s, step skipped", self.iteration + 1, self.losses)
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # the schedule advances even though this step was skipped
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        else:
            if self.cfg.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                self.losses["grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        self.iteration += 1

    @property
    def eval_model(self) -> nn.Module:
        """The weights that evaluation scores: the EMA's once it has averaged a step, else the model."""
        return self.ema.module if self.ema is not None and int(self.ema.n_averaged) > 0 else self.model

    def evaluate(self) -> dict[str, Any]:
        """Metrics of :attr:`eval_model` on the validation set (in eval mode; train mode restored after). Under
        torch.distributed every rank scores its shard with rank 0's BatchNorm statistics (what checkpoints hold)."""
        distributed.broadcast_buffers(self.eval_model)
        return evaluate(self.eval_model, self.task, self.val_set, self.eval_cfg, self.device, dtype=self.amp_dtype,
                        num_workers=self.cfg.num_workers)

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def own_state(self) -> dict[str, Any]:
        """Weights, optimizer, schedule, iteration, generators (every rank's: a collective under torchrun)."""
        w = self.world
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "iteration": self.iteration, "epoch": self.iteration // self.iters_per_epoch, "rng": rng_state(),
                **({"rng_ranks": distributed.all_gather_object(rng_state())} if w.size > 1 else {}),
                "world": {"size": w.size, "batch_size": self.cfg.batch_size, "accumulate": self.accumulate},
                "timings": dict(self.timings), "config": self.config, "hardware": self.hardware()}

    def load_own_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        self.timings = dict(ckpt.get("timings") or self.timings)
        stored = ckpt.get("rng_ranks") or [ckpt["rng"]]
        if len(stored) == self.world.size:
            set_rng_state(stored[self.world.rank])
        else:  # the data order continues exactly (same global batch); the model's random draws cannot
            seed_everything(self.cfg.seed + 1_000_003 * self.world.rank + self.iteration)
            log.warning("resumed on %d processes from a run on %d: the data order continues exactly, the random "
                        "draws of the model (dropout, detector sampling) do not", self.world.size, len(stored))

    def maybe_resume(self, path: str | os.PathLike | None = None) -> bool:
        """Resume from ``path`` or, when ``train.resume``, from ``run_dir/last.pt`` if present."""
        last = self.run_dir / "last.pt"
        path = Path(path) if path else last
        if not path.exists() or (path == last and not self.cfg.resume):
            return False
        try:
            ckpt = load_checkpoint(path, map_location=self.device)
        except WeightsError as err:
            if path != last:
                raise
            best = self.run_dir / "best.pt"
            other = f", or resume from {best} with --resume {best}" if best.exists() else ""
            raise WeightsError(f"{err}; cannot resume: --set train.resume=false starts afresh{other}") from None
        check_resumable(ckpt, path, self.config, self.global_batch, self._batch_words())
        self.load_state_dict(ckpt)
        log.info("resumed from %s at iteration %d of %d", path, self.iteration, self.total_iters)
        return True

    def hardware(self) -> dict[str, Any]:
        """Where and how the run trains: device, precision, memory format, processes and the machine's line
        (:func:`resdense.hardware.machine_summary`); a package's model card quotes it."""
        return {"device": str(self.device), "precision": self.precision.as_dict(),
                "memory_format": self.memory_format.as_dict(), "processes": self.world.size,
                "machine": machine_summary()}

    def finish(self) -> dict[str, Any]:
        report = self.evaluator.report()
        result = {"task": self.task.name, "metric": report["metric"], "iterations": self.iteration,
                  "final": report["final"], "best": report["best"], "timings": {k: round(v, 3) for k, v in self.timings.items()}, "stopped": self.stopped,
                  "evaluated_weights": "ema" if self.ema is not None else "model", **self.hardware()}
        if self.world.main:
            write_json(self.run_dir / "metrics.json", result)
            try:
                plot_curves(self.run_dir, self.run_dir / "curves.png")
            except Exception as err:  # a plotting problem must never lose a finished run
                log.warning("could not draw curves: %s", err)
        distributed.barrier()  # the run directory is complete when fit() returns, on every rank
        return result
