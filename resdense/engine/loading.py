"""A recipe's objects: build them for training (:func:`build_run`), or rebuild a trained model from its checkpoint
(:func:`load_model`). The runners and the :class:`~resdense.inference.predictor.Predictor` build on these."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset

from resdense.config import Config
from resdense.errors import ConfigError, WeightsError

from .architectures import architecture
from .build import (
    build_datasets,
    build_model,
    build_task,
    check_config,
    config_from_dict,
    dataset_classes,
    fill_num_classes,
    is_checked,
    load_config,
)
from .checkpoint import evaluated_weights, load_checkpoint, seed_everything
from .distributed import main_first, resolve_device
from .package import CONFIG_FILE, WEIGHTS_FILE, is_package, package_config, read_package
from .tasks.base import Task

__all__ = ["Run", "as_config", "build_run", "build_datasets_once", "load_model", "load_exactly"]


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
    """A checked :class:`Config` from a recipe path / name or a package folder (its ``config.yaml``, see
    :func:`~resdense.engine.package.package_config`), or a checked copy of the given one: checked here unless
    :func:`~resdense.engine.load_config` checked it and it is unchanged since (one parsed with :mod:`resdense.config`
    alone has not had its ``model`` / ``data`` keys checked). The caller's object is never changed by what the run
    does with its copy."""
    if isinstance(config, Config):
        if overrides:
            raise ConfigError("overrides apply to a recipe file; edit the Config object instead")
        own = copy.deepcopy(config)
        return own if is_checked(own) else check_config(own)
    if is_package(config):
        return package_config(config, overrides)
    return load_config(config, overrides)


def build_run(config: Config, splits: Sequence[str] = ("train", "val")) -> Run:
    """Build datasets, the model and the task adapter of a recipe.

    Args:
        splits: which datasets to build (``()`` builds none: the class names must then come from elsewhere).

    Raises:
        ConfigError: the training and validation sets share images and ``data.allow_overlap`` is not true.
    """
    seed_everything(config.train.seed)
    sets = build_datasets_once(config, splits)
    first = next(iter(sets.values()), None)
    class_names = dataset_classes(first, config.task) if first is not None else []
    model_kwargs = fill_num_classes(config.model, config.task, class_names) if class_names else dict(config.model)
    seed_everything(config.train.seed)
    model = build_model(model_kwargs, config.source)
    task = build_task(config.task, class_names, config)
    return Run(config, model, task, sets.get("train"), sets.get("val"), class_names)


def build_datasets_once(config: Config, splits: Sequence[str]) -> dict[str, Dataset]:
    """The recipe's datasets of ``splits``, built by rank 0 first under ``torchrun``: a dataset that writes files
    (``dataset: shapes``) is complete before the other ranks read it."""
    with main_first():
        return build_datasets(config.data, config.task, splits, config.source)


def _stored(path: Path) -> tuple[Config, list[str], dict[str, Tensor], Path]:
    """The recipe, class names and evaluated weights a checkpoint file or a package folder holds, and the file the
    weights came from."""
    if is_package(path):
        package = read_package(path)
        config = config_from_dict(package.config, str(path / CONFIG_FILE))
        return config, package.class_names, package.state_dict, path / WEIGHTS_FILE
    ckpt = load_checkpoint(path)
    raw = dict(ckpt.get("config") or {})
    class_names = list(raw.pop("class_names", []) or [])
    if not raw:
        raise WeightsError(f"{path}: the checkpoint holds no recipe; pass the recipe it was trained with")
    return config_from_dict(raw, f"{path} (stored recipe)"), class_names, evaluated_weights(ckpt), path


def load_exactly(model: nn.Module, state: dict[str, Tensor], source: str | os.PathLike, what: str) -> None:
    """``model.load_state_dict(state)`` once every key and shape fits; else one line naming ``source``, ``what``
    the model is and the first key that does not fit (a shape mismatch first, then a missing, then an extra key).

    Raises:
        WeightsError: the first misfit and how many there are.
    """
    own = model.state_dict()
    shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if shapes:
        k = shapes[0]
        why = (f"'{k}' has shape {list(state[k].shape)} in the file but {list(own[k].shape)} in the model "
               f"({len(shapes)} shape-mismatched keys in all)")
    elif missing:
        why = f"'{missing[0]}' is missing from the file ({len(missing)} missing keys in all)"
    elif extra:
        why = f"'{extra[0]}' is not a key of the model ({len(extra)} unexpected keys in all)"
    else:
        model.load_state_dict(state)
        return
    raise WeightsError(f"{source}: does not fit {what}: {why}")


def _build_for_checkpoint(model_kwargs: dict[str, Any], source: str) -> nn.Module:
    """Build the recipe's model for weights that come from a checkpoint: no ``weights`` / ``weights_backbone``
    download, but the same modules as in training: the norm the builder picked because it was given weights (the
    entry's ``pretrained_norm``) is kept explicitly, and the warnings about a random backbone do not apply."""
    dropped = {k: None for k in ("weights", "weights_backbone") if model_kwargs.get(k) is not None}
    kwargs = {**model_kwargs, **dropped}
    norm = architecture(kwargs["arch"], source).pretrained_norm
    if not (dropped and norm and isinstance(kwargs.get("backbone", ""), str)):
        return build_model(kwargs, source)
    kwargs["norm"] = kwargs.get("norm") or norm
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*FrozenBatchNorm2d on a randomly initialised backbone")
        warnings.filterwarnings("ignore", message=".*has no effect without weights")
        return build_model(kwargs, source)


def load_model(checkpoint: str | os.PathLike, config: Config | str | os.PathLike | None = None,
               device: str = "auto") -> tuple[nn.Module, Run]:
    """Rebuild a trained model from a checkpoint or a package folder (its stored recipe, or ``config`` when
    given) in eval mode.

    The weights are the ones the run evaluated (:func:`~resdense.engine.checkpoint.evaluated_weights`): the weight
    average of a run with ``train.ema_decay``, else the trained weights; a package holds only those.

    Returns:
        ``(model, run)``; ``run.class_names`` comes from the checkpoint, datasets are not built.

    Raises:
        WeightsError: an unreadable checkpoint, a bad package (see :func:`~resdense.engine.package.read_package`),
            or weights that do not fit the recipe's model (the first key that does not).
    """
    path = Path(checkpoint)
    stored, class_names, state, weights_file = _stored(path)
    cfg = as_config(config) if config is not None else stored
    if config is not None and cfg.task != stored.task:
        raise ConfigError(f"{path}: the checkpoint is a {stored.task} model but {cfg.source} is a {cfg.task} recipe")
    model_kwargs = fill_num_classes(cfg.model, cfg.task, class_names) if class_names else dict(cfg.model)
    model = _build_for_checkpoint(model_kwargs, cfg.source)
    load_exactly(model, state, weights_file, f"the {cfg.model['arch']} model of {cfg.source}")
    dev = resolve_device(device)
    model.to(dev).eval()
    task = build_task(cfg.task, class_names, cfg)
    return model, Run(cfg, model, task, None, None, class_names)
