"""Recipe runners: a :class:`~resdense.config.Config` in, a trained / evaluated model out.

These are the library functions behind ``resdense train`` and ``eval`` (``predict``'s is
:func:`resdense.inference.run_prediction`); the CLI only parses arguments and calls them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resdense.config import Config, save_config
from resdense.files import make_dir
from resdense.hardware import choose_memory_format, choose_precision

from .build import build_task, dataset_classes
from .distributed import init_from_env, on_main, resolve_device
from .evaluate import evaluate
from .loading import Run, as_config, build_datasets_once, build_run, load_model
from .package import trained_model_path
from .report import check_report_folder, write_report
from .train_loop import HookBase
from .trainer import Trainer

__all__ = ["Run", "build_run", "run_training", "run_evaluation", "load_model", "as_config"]

log = logging.getLogger(__name__)


def run_training(config: Config | str | os.PathLike, overrides: Sequence[str] = (), *,
                 output_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
                 hooks: Sequence[HookBase] = ()) -> dict[str, Any]:
    """Train a recipe; returns the final metrics (also written to ``<output_dir>/metrics.json``).

    Args:
        config: a :class:`Config` or a recipe path / shipped recipe name.
        overrides: ``--set`` style ``key=value`` strings.
        output_dir: replaces ``train.output_dir``.
        resume: a checkpoint to resume from (default: ``<output_dir>/last.pt`` when present and ``train.resume``).
        hooks: :class:`~resdense.engine.train_loop.HookBase` instances, run after the recipe's ``train.hooks``.

    Under ``torchrun`` every process calls this: they train one DistributedDataParallel model (see
    :mod:`resdense.engine.distributed`), rank 0 writes the run directory, and every rank returns the result.
    """
    config = as_config(config, overrides)
    if output_dir is not None:
        config.train.output_dir = str(output_dir)
    run_dir = config.output_dir
    world = init_from_env(config.train.dist_backend, config.train.device)
    if world.main:
        make_dir(run_dir, "run directory")
    run = build_run(config)
    if world.main:
        save_config(config, run_dir / "config.yaml")
    plain = {**config.to_dict(), "class_names": run.class_names}
    trainer = Trainer(run.model, run.task, run.train_set, run.val_set, config.train, config.eval, run_dir,
                      config=plain, hooks=hooks, source=config.source)
    log.info("%s: %s on %s, %d iterations (%d per epoch), run directory %s", config.name, config.model["arch"],
             trainer.device, trainer.total_iters, trainer.iters_per_epoch, run_dir)
    return trainer.fit(resume=resume)


def run_evaluation(config: Config | str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                   overrides: Sequence[str] = (), *, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the recipe's validation split; returns the task's metrics.

    Args:
        config: a recipe (path, shipped name or :class:`Config`), or a package folder (:mod:`~resdense.engine.package`):
            its ``config.yaml`` names the data, ``overrides`` can point it elsewhere.
        checkpoint: the trained model: a checkpoint or a package folder (default: ``config``, when a package).
        out: also write a report into this folder (:func:`~resdense.engine.report.write_report`: ``metrics.json``,
            per-class tables, confusion matrix or precision-recall curves, ``report.md``); the files written are
            listed under ``"report_files"`` and the report's arrays (``confusion_matrix`` / ``coco``) are returned.

    Under ``torchrun`` each process scores its shard of the images (each image once) and every rank returns the
    metrics of the whole split, equal to one process's; rank 0 writes the report, from the gathered results.
    """
    checkpoint = trained_model_path(config, checkpoint)
    config = as_config(config, overrides)
    if out is not None:
        check_report_folder(out)
    init_from_env(config.train.dist_backend, config.train.device)
    model, run = load_model(checkpoint, config, device=config.train.device)
    val = build_datasets_once(config, ("val",))["val"]
    if not run.class_names:
        run.class_names = dataset_classes(val, config.task)
        run.task = build_task(config.task, run.class_names, config)
    # The loaded weights are already the evaluated ones (the average of an EMA run): no average to keep here.
    device = resolve_device(config.train.device)
    precision = choose_precision(config.train.amp, device)
    # The precision and memory format of training's own evaluations, so that a checkpoint scores what it scored there
    model = choose_memory_format(config.train.channels_last, device, precision, config.task).apply(model)
    dtype = precision.dtype
    metrics = evaluate(model, run.task, val, config.eval, device, dtype=dtype, num_workers=config.train.num_workers,
                       report=out is not None)
    if out is not None:
        n = len(val) if config.eval.max_images is None else min(len(val), config.eval.max_images)
        title = f"{config.name}: {Path(checkpoint).name} on the validation split ({n} images)"
        files = on_main(lambda: write_report(metrics, run.class_names, out, title=title))
        metrics["report_files"] = [str(f) for f in files]
    return metrics
