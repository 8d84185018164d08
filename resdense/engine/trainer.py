"""The :class:`~resdense.engine.train_loop.TrainLoop` of resdense's tasks, with :mod:`resdense.engine.hooks`.

Data order and augmentation are functions of the seed and the position in the run (:mod:`resdense.engine.sampler`)
and checkpoints carry every rank's generator states: on CPU a run killed at any iteration and resumed ends with the
same weights, bit for bit, as an uninterrupted one, under ``torchrun`` (DistributedDataParallel) too.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from resdense.config import EvalConfig, TrainConfig
from resdense.files import make_dir
from resdense.hardware import choose_memory_format, choose_precision, machine_summary

from . import checkpoint, distributed
from .ema import create_ema
from .evaluate import autocast, eval_loader, evaluate
from .hooks import Evaluator, trainer_hooks
from .logger import NullLogger, write_results
from .sampler import SeededDataset, groups, train_sampler
from .schedule import build_optimizer, build_scheduler
from .step import NonFiniteLossError, finish_step, forward_backward, nonfinite_error
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

    Under ``torchrun`` the process group is joined here when the caller has not (``train.dist_backend``), rank 0
    alone logs and writes files, and a step's global batch is ``world * train.batch_size * train.accumulate``.

    Attributes:
        world: this process's :class:`~resdense.engine.distributed.World`.
        net: the training forward passes' module: ``DistributedDataParallel(model)`` under torchrun, else ``model``.
        ema: the :class:`~torch.optim.swa_utils.AveragedModel` of ``train.ema_decay`` (``None`` when off).
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
        self.autocast = functools.partial(autocast, device, self.amp_dtype)  # the training forward passes' context
        self.memory_format = choose_memory_format(train.channels_last, device, self.precision, task.name)
        model = self.memory_format.apply(model)  # before the optimizer, DDP and the EMA take the parameters
        # SyncBatchNorm swaps modules before the optimizer, freeze and EMA take them; DDP must expect a frozen backbone
        self.model, self.net = distributed.wrap_model(model.to(device), device, sync_bn=train.sync_bn,
                                                      find_unused_parameters=train.freeze_backbone_iters > 0)
        if w.size > 1:
            checkpoint.seed_rank(train.seed, w.rank)
        self.train_set, self.val_set, self.accumulate = SeededDataset(train_set), val_set, train.accumulate
        self.global_batch = w.size * train.batch_size * train.accumulate
        self.batch_words = checkpoint.batch_words(w.size, train.batch_size, train.accumulate)
        self.sampler, self.iters_per_epoch = train_sampler(len(train_set), train.seed, train.batch_size,
                                                           train.accumulate, w.rank, w.size, self.batch_words)
        self.drop_last = len(train_set) >= self.global_batch  # whole global batches, unless one short batch
        self.total_iters = train.iterations or train.epochs * self.iters_per_epoch
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
        self.register_hooks(trainer_hooks(self, hooks, source))

    def clock(self) -> float:
        return _now()

    def val_loader(self) -> DataLoader | None:
        return None if self.val_set is None else eval_loader(self.task, self.val_set, self.eval_cfg,
                                                             self.cfg.num_workers)

    def fit(self, resume: str | os.PathLike | None = None) -> dict[str, Any]:
        """Train to ``total_iters`` or until a hook stops it, evaluate, return the metrics of ``metrics.json``."""
        if self.world.main:
            make_dir(self.run_dir, "run directory")
        log.info("precision %s (%s)", self.precision.name, self.precision.reason)
        log.info("memory format %s (%s)", self.memory_format.name, self.memory_format.reason)
        log.info("global batch %d (%s)", self.global_batch, self.batch_words)
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
                raise nonfinite_error(self.iteration + 1, self.losses, ids, self.run_dir / "last.pt")
            log.warning("iteration %d: non-finite loss %s, step skipped", self.iteration + 1, self.losses)
        finish_step(self.optimizer, self.scheduler, self.scaler, self.model.parameters(), self.cfg.grad_clip,
                    self.skipped, self.losses)
        self.iteration += 1

    def evaluate(self) -> dict[str, Any]:
        """Metrics on the validation set of the EMA's weights once it has averaged a step, else the model's (in eval
        mode; train mode restored after). Under torch.distributed every rank scores its shard with rank 0's
        BatchNorm statistics (what checkpoints hold)."""
        model = self.ema.module if self.ema is not None and int(self.ema.n_averaged) > 0 else self.model
        distributed.broadcast_buffers(model)
        return evaluate(model, self.task, self.val_set, self.eval_cfg, self.device, dtype=self.amp_dtype,
                        num_workers=self.cfg.num_workers)

    def own_state(self) -> dict[str, Any]:
        """Weights, optimizer, schedule, iteration, generators (every rank's: a collective under torchrun)."""
        return {"format": checkpoint.CHECKPOINT_FORMAT,
                **{name: getattr(self, name).state_dict() for name in ("model", "optimizer", "scheduler", "scaler")},
                "iteration": self.iteration, "epoch": self.iteration // self.iters_per_epoch,
                **checkpoint.rng_entries(self.world),
                "world": {"size": self.world.size, "batch_size": self.cfg.batch_size, "accumulate": self.accumulate},
                "timings": dict(self.timings), "config": self.config, "hardware": self.hardware()}

    def load_own_state(self, ckpt: dict[str, Any]) -> None:
        for name in ("model", "optimizer", "scheduler"):
            getattr(self, name).load_state_dict(ckpt[name])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        self.timings = dict(ckpt.get("timings") or self.timings)
        checkpoint.restore_rng(ckpt, self.world, self.cfg.seed, self.iteration)

    def maybe_resume(self, path: str | os.PathLike | None = None) -> bool:
        """Resume from ``path`` or, when ``train.resume``, from ``run_dir/last.pt`` if present."""
        path, ckpt = checkpoint.read_resume(path, self.run_dir, self.cfg.resume, self.device)
        if ckpt is None:
            return False
        checkpoint.check_resumable(ckpt, path, self.config, self.global_batch, self.batch_words)
        self.load_state_dict(ckpt)
        log.info("resumed from %s at iteration %d of %d", path, self.iteration, self.total_iters)
        return True

    def hardware(self) -> dict[str, Any]:
        """Device, precision, memory format, processes and :func:`resdense.hardware.machine_summary`."""
        return {"device": str(self.device), "precision": self.precision.as_dict(), "memory_format":
                self.memory_format.as_dict(), "processes": self.world.size, "machine": machine_summary()}

    def finish(self) -> dict[str, Any]:
        result = {"task": self.task.name, **self.evaluator.report(), "iterations": self.iteration,
                  "timings": {k: round(v, 3) for k, v in self.timings.items()}, "stopped": self.stopped,
                  "evaluated_weights": "ema" if self.ema is not None else "model", **self.hardware()}
        if self.world.main:
            write_results(self.run_dir, result)
        distributed.barrier()  # the run directory is complete when fit() returns, on every rank
        return result
