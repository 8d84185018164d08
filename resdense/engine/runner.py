"""Recipe runners: a :class:`~resdense.config.Config` in, a trained / evaluated / predicting model out.

These are the library functions behind ``resdense train``, ``eval`` and ``predict``; the CLI only parses
arguments and calls them.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import Dataset

from resdense.config import Config, save_config
from resdense.data import read_image, segmentation_transforms, to_image_tensor
from resdense.errors import ConfigError, WeightsError
from resdense.hardware import choose_precision
from resdense.visualize import draw_boxes, overlay_mask, save_image, side_by_side

from .build import (
    DETECTOR_KINDS,
    build_datasets,
    build_model,
    build_task,
    check_config,
    classification_transforms,
    config_from_dict,
    dataset_classes,
    fill_num_classes,
    load_config,
)
from .checkpoint import evaluated_weights, load_checkpoint, seed_everything
from .distributed import init_from_env, main_first, on_main, resolve_device
from .evaluate import evaluate
from .report import check_report_folder, write_report
from .tasks.base import Task
from .trainer import Trainer

__all__ = ["Run", "build_run", "run_training", "run_evaluation", "run_prediction", "load_model", "as_config"]

log = logging.getLogger(__name__)


@dataclass
class Run:
    """The objects a recipe builds."""

    config: Config
    model: nn.Module
    task: Task
    train_set: Dataset | None
    val_set: Dataset | None
    class_names: list[str]


def as_config(config: Config | str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """A checked :class:`Config` from a recipe path / name, or the given one (checked too: one made with
    :mod:`resdense.config` alone has not had its ``model`` / ``data`` keys checked)."""
    if isinstance(config, Config):
        if overrides:
            raise ConfigError("overrides apply to a recipe file; edit the Config object instead")
        return check_config(config)
    return load_config(config, overrides)


def build_run(config: Config, splits: Sequence[str] = ("train", "val")) -> Run:
    """Build datasets, the model and the task adapter of a recipe.

    Args:
        splits: which datasets to build (``()`` builds none: the class names must then come from elsewhere).

    Raises:
        ConfigError: the training and validation sets share images and ``data.allow_overlap`` is not true.
    """
    seed_everything(config.train.seed)
    sets = _build_datasets(config, splits)
    first = next(iter(sets.values()), None)
    class_names = dataset_classes(first, config.task) if first is not None else []
    model_kwargs = fill_num_classes(config.model, config.task, class_names) if class_names else dict(config.model)
    seed_everything(config.train.seed)
    model = build_model(model_kwargs, config.source)
    task = build_task(config.task, class_names, config)
    return Run(config, model, task, sets.get("train"), sets.get("val"), class_names)


def _build_datasets(config: Config, splits: Sequence[str]) -> dict[str, Dataset]:
    # Under torchrun rank 0 builds first: a dataset that writes files (dataset: shapes) is complete before the other
    # ranks read it.
    with main_first():
        return build_datasets(config.data, config.task, splits, config.source)


def run_training(config: Config | str | os.PathLike, overrides: Sequence[str] = (), *,
                 output_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
                 hooks: dict[str, Callable] | None = None) -> dict[str, Any]:
    """Train a recipe; returns the final metrics (also written to ``<output_dir>/metrics.json``).

    Args:
        config: a :class:`Config` or a recipe path / shipped recipe name.
        overrides: ``--set`` style ``key=value`` strings.
        output_dir: replaces ``train.output_dir``.
        resume: a checkpoint to resume from (default: ``<output_dir>/last.pt`` when present and ``train.resume``).

    Under ``torchrun`` every process calls this: they train one DistributedDataParallel model (see
    :mod:`resdense.engine.distributed`), rank 0 writes the run directory, and every rank returns the result.
    """
    config = as_config(config, overrides)
    if output_dir is not None:
        config.train.output_dir = str(output_dir)
    run_dir = config.output_dir
    world = init_from_env(config.train.dist_backend, config.train.device)
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    run = build_run(config)
    if world.main:
        save_config(config, run_dir / "config.yaml")
    plain = {**config.to_dict(), "class_names": run.class_names}
    trainer = Trainer(run.model, run.task, run.train_set, run.val_set, config.train, config.eval, run_dir,
                      config=plain, hooks=hooks)
    log.info("%s: %s on %s, %d iterations (%d per epoch), run directory %s", config.name, config.model["arch"],
             trainer.device, trainer.total_iters, trainer.iters_per_epoch, run_dir)
    return trainer.fit(resume=resume)


def _checkpoint_config(ckpt: dict[str, Any], path: Path) -> tuple[Config, list[str]]:
    raw = dict(ckpt.get("config") or {})
    class_names = list(raw.pop("class_names", []) or [])
    if not raw:
        raise WeightsError(f"{path}: the checkpoint holds no recipe; pass the recipe it was trained with")
    return config_from_dict(raw, f"{path} (stored recipe)"), class_names


def _build_for_checkpoint(model_kwargs: dict[str, Any], source: str) -> nn.Module:
    """Build the recipe's model for weights that come from a checkpoint: no ``weights`` / ``weights_backbone``
    download, but the same modules as in training. A detector picks FrozenBatchNorm2d because it was given weights,
    so that choice is kept explicitly (and build_detector's warnings about a random backbone do not apply)."""
    kwargs = dict(model_kwargs)
    pretrained = any(kwargs.get(k) is not None for k in ("weights", "weights_backbone"))
    for key in ("weights", "weights_backbone"):
        if kwargs.get(key) is not None:
            kwargs[key] = None
    if not (pretrained and kwargs.get("arch") in DETECTOR_KINDS and isinstance(kwargs.get("backbone", ""), str)):
        return build_model(kwargs, source)
    kwargs["norm"] = kwargs.get("norm") or "frozen_bn"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*FrozenBatchNorm2d on a randomly initialised backbone")
        warnings.filterwarnings("ignore", message=".*has no effect without weights")
        return build_model(kwargs, source)


def load_model(checkpoint: str | os.PathLike, config: Config | str | os.PathLike | None = None,
               device: str = "auto") -> tuple[nn.Module, Run]:
    """Rebuild a trained model from a checkpoint (its stored recipe, or ``config`` when given) in eval mode.

    The weights are the ones the run evaluated (:func:`~resdense.engine.checkpoint.evaluated_weights`): the weight
    average of a run with ``train.ema_decay``, else the trained weights.

    Returns:
        ``(model, run)``; ``run.class_names`` comes from the checkpoint, datasets are not built.
    """
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    stored, class_names = _checkpoint_config(ckpt, path)
    cfg = as_config(config) if config is not None else stored
    if config is not None and cfg.task != stored.task:
        raise ConfigError(f"{path}: the checkpoint is a {stored.task} model but {cfg.source} is a {cfg.task} recipe")
    model_kwargs = fill_num_classes(cfg.model, cfg.task, class_names) if class_names else dict(cfg.model)
    model = _build_for_checkpoint(model_kwargs, cfg.source)
    try:
        model.load_state_dict(evaluated_weights(ckpt))
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise WeightsError(f"{path}: does not fit the model of {cfg.source}: "
                           f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    dev = resolve_device(device)
    model.to(dev).eval()
    task = build_task(cfg.task, class_names, cfg)
    return model, Run(cfg, model, task, None, None, class_names)


def run_evaluation(config: Config | str | os.PathLike, checkpoint: str | os.PathLike,
                   overrides: Sequence[str] = (), *, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the recipe's validation split; returns the task's metrics.

    Args:
        out: also write a report into this folder (:func:`~resdense.engine.report.write_report`: ``metrics.json``,
            per-class tables, confusion matrix or precision-recall curves, ``report.md``); the files written are
            listed under ``"report_files"`` and the report's arrays (``confusion_matrix`` / ``coco``) are returned.

    Under ``torchrun`` each process scores its shard of the images (each image once) and every rank returns the
    metrics of the whole split, equal to one process's; rank 0 writes the report, from the gathered results.
    """
    config = as_config(config, overrides)
    if out is not None:
        check_report_folder(out)
    init_from_env(config.train.dist_backend, config.train.device)
    model, run = load_model(checkpoint, config, device=config.train.device)
    val = _build_datasets(config, ("val",))["val"]
    if not run.class_names:
        run.class_names = dataset_classes(val, config.task)
        run.task = build_task(config.task, run.class_names, config)
    # The loaded weights are already the evaluated ones (the average of an EMA run): no average to keep here.
    device = resolve_device(config.train.device)
    dtype = choose_precision(config.train.amp, device).dtype
    metrics = evaluate(model, run.task, val, config.eval, device, dtype=dtype, num_workers=config.train.num_workers,
                       report=out is not None)
    if out is not None:
        n = len(val) if config.eval.max_images is None else min(len(val), config.eval.max_images)
        title = f"{config.name}: {Path(checkpoint).name} on the validation split ({n} images)"
        files = on_main(lambda: write_report(metrics, run.class_names, out, title=title))
        metrics["report_files"] = [str(f) for f in files]
    return metrics


def run_prediction(config: Config | str | os.PathLike | None, checkpoint: str | os.PathLike,
                   images: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                   score_threshold: float | None = None, overrides: Sequence[str] = ()) -> list[Path]:
    """Predict on image files and write one readable PNG overlay per image into ``out_dir``.

    Segmentation: class-coloured mask blended over the image with a legend. Detection: boxes with
    ``"label score"`` captions (``score_threshold``, default ``eval.score_threshold``). Classification: the top-5
    classes written on the image.
    """
    cfg = as_config(config, overrides) if config is not None else None
    model, run = load_model(checkpoint, cfg)
    cfg = run.config
    device = next(model.parameters()).device
    thr = cfg.eval.score_threshold if score_threshold is None else score_threshold
    out_dir = Path(out_dir)
    written = []
    for path in images:
        img = read_image(path)
        name = Path(path).stem + ".png"
        if cfg.task == "segmentation":
            pred = _predict_mask(model, run, img, device)
            picture = overlay_mask(img, pred, run.class_names or [str(i) for i in range(int(pred.max()) + 1)])
        elif cfg.task == "detection":
            with torch.no_grad():
                out = run.task.predict(model, [to_image_tensor(img).to(device)])[0]
            picture = draw_boxes(img, out["boxes"], out["labels"], out["scores"], run.class_names,
                                 score_threshold=thr)
        else:
            picture = _classification_picture(model, run, path, device)
        written.append(save_image(picture, out_dir / name))
    return written


def _predict_mask(model: nn.Module, run: Run, img: np.ndarray, device) -> np.ndarray:
    kwargs = dict(run.config.data.get("val_transforms") or {})
    kwargs["pad_divisor"] = 1  # the task pads to the model's divisor itself and crops back
    tf = segmentation_transforms(train=False, **{k: v for k, v in kwargs.items() if k != "train"})
    x, _ = tf(img, np.zeros(img.shape[:2], np.uint8))
    with torch.no_grad():
        pred = run.task.predict(model, [x.to(device)])[0].numpy().astype(np.int32)
    if pred.shape != img.shape[:2]:
        pred = cv2.resize(pred.astype(np.float32), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    return pred.astype(np.int64)


def _classification_picture(model, run: Run, path, device) -> np.ndarray:
    kwargs = dict(run.config.data.get("val_transforms") or {})
    tf = classification_transforms(train=False, **kwargs)
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        x = tf(rgb)
        thumb = np.asarray(rgb.resize((224, max(1, round(224 * rgb.height / rgb.width)))))
    probs = run.task.predict(model, [x.to(device)])[0]
    top = probs.topk(min(5, len(probs)))
    lines = [f"{run.class_names[i] if i < len(run.class_names) else i}: {p:.3f}"
             for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
    panel = Image.new("RGB", (220, thumb.shape[0]), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, line in enumerate(lines):
        draw.text((6, 6 + 16 * i), line, fill=(0, 0, 0))
    return side_by_side([thumb, np.asarray(panel)])
