"""Scoring a model on a dataset: the one evaluation path of training (periodic and final) and of ``resdense eval``.

Under torch.distributed each process scores the images ``rank, rank + world, ...``
(:func:`~resdense.engine.distributed.shard`): every image exactly once, where DistributedSampler would pad the last batch with repeats. The
task's evaluation gathers the shards (:meth:`DetectionEvaluator.gather`, :meth:`SegmentationMetrics.gather`, summed
counts), so every rank returns the numbers one process would.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from resdense.config import EvalConfig

from . import distributed
from .sampler import SeededDataset
from .tasks.base import Task

__all__ = ["autocast", "eval_loader", "evaluate"]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op context when ``dtype`` is ``None``."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def eval_loader(task: Task, dataset: Dataset, eval_cfg: EvalConfig, num_workers: int = 0) -> DataLoader:
    """The evaluation loader: the first ``eval.max_images`` images (all when ``None``) in order, batched by
    ``eval.batch_size`` with the task's collate (this rank's shard of them under torch.distributed); a private
    generator, so it never draws from the global one."""
    ds = dataset
    if eval_cfg.max_images is not None and eval_cfg.max_images < len(ds):
        ds = Subset(ds, range(eval_cfg.max_images))
    if distributed.world().size > 1:
        ds = Subset(ds, distributed.shard(len(ds)))
    return DataLoader(SeededDataset(ds), batch_size=eval_cfg.batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=task.collate, generator=torch.Generator(),
                      worker_init_fn=distributed.ignore_stop_signals if num_workers else None)


def evaluate(model: nn.Module, task: Task, dataset: Dataset, eval_cfg: EvalConfig, device: torch.device, *,
             dtype: torch.dtype | None = None, num_workers: int = 0, report: bool = False) -> dict[str, Any]:
    """The task's metrics of ``model`` on ``dataset`` (model in eval mode, its mode restored after).

    Args:
        dtype: autocast precision (``None``: float32).
        num_workers: loader worker processes.
        report: also return what a report draws (segmentation ``confusion_matrix``, detection ``coco``), computed
            like the metrics after the processes' shards are gathered (see :mod:`resdense.engine.report`).
    """
    loader = eval_loader(task, dataset, eval_cfg, num_workers)
    was_training = model.training
    model.eval()
    try:
        return task.evaluate(model, loader, device, autocast=lambda: autocast(device, dtype), report=report)
    finally:
        model.train(was_training)
