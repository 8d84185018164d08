"""From a recipe's ``model`` and ``data`` sections to objects: each key is a keyword argument of the constructor it
feeds, checked against that constructor's signature (unknown keys and wrong types name the file and the key).

``model.arch`` and ``data.dataset`` are names of :data:`resdense.registry.ARCHITECTURES` and
:data:`resdense.registry.DATASETS`: the library's own are registered in :mod:`resdense.engine.architectures` and
:mod:`resdense.engine.datasets` (their tables), a user's by the modules a recipe names in ``imports:``. Each entry holds
the builder or class, the task it serves and, for an architecture, its class-count argument, default metric and
export formats; checking, building, ``resdense list`` and export read them.

This is also where a recipe is checked as a whole: :func:`load_config` (= ``resdense.load_config``, the one public
loader) and :func:`config_from_dict` are :mod:`resdense.config`'s parsing (sections, task, ``train``, ``eval``) plus
:func:`check_config` (``model`` and ``data`` against the constructors below); the CLI and the runners go through
them.

``data.train`` / ``data.val`` are the dataset class's keyword arguments; ``data.train_transforms`` /
``data.val_transforms`` those of the task's preset (:func:`resdense.data.segmentation_transforms`,
:func:`resdense.data.detection_transforms`, or :func:`~resdense.engine.tasks.classification_transforms`); ``null`` means no
transforms. ``dataset: shapes`` takes ``data.shapes``, the arguments of :func:`resdense.data.make_shapes`.

Every shipped dataset class takes ``split`` (a text file of sample names, or a list of them) to serve part of a
folder or an annotation file. Training and validation sets that share images are refused when they are built
(:func:`build_datasets`): ``data.allow_overlap: true`` permits it, for smoke tests only, since the validation
scores then measure memorised images.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from resdense import config as recipe
from resdense.config import Config, check_type, unknown_key_error, wrong_type_error
from resdense.data import make_shapes
from resdense.errors import ConfigError
from resdense.registry import DATASETS, HOOKS
from resdense.registry import Dataset as DatasetEntry

from .architectures import architecture, model_params, signature_params
from .datasets import SHAPES, shapes_class
from .hooks import hook_entry
from .tasks import ClassificationTask, DetectionTask, SegmentationTask

__all__ = [
    "load_config",
    "config_from_dict",
    "check_config",
    "import_extensions",
    "is_checked",
    "build_model",
    "build_dataset",
    "build_datasets",
    "check_disjoint",
    "build_task",
    "check_model_section",
    "check_data_section",
    "fill_num_classes",
    "classes_key",
]

_DATA_KEYS = ("dataset", "train", "val", "shapes", "train_transforms", "val_transforms", "allow_overlap")


# ---- whole recipes -----------------------------------------------------------------------------------------------
def check_config(config: Config) -> Config:
    """Import the recipe's ``imports`` (:func:`import_extensions`), check its ``model`` and ``data`` keys against the
    constructors they feed (unknown keys and wrong types are one-line :class:`ConfigError` naming ``config.source``
    and the key), and fill in what the architecture's registration decides: ``task`` when the recipe leaves it
    out, and ``eval.metric`` / ``eval.mode`` when the architecture has a default metric and the recipe names none.
    Returns ``config``."""
    import_extensions(config)
    entry = architecture(config.model["arch"], config.source)
    if config.task is None:
        config.task = entry.task
    elif config.task != entry.task:
        raise ConfigError(f"{config.source}: task = {config.task!r} but model.arch = {config.model['arch']!r} is a "
                          f"{entry.task} architecture")
    check_model_section(config.model, config.source)
    check_data_section(config.data, config.task, config.source)
    for hook in config.train.hooks:  # the names now, not after the data is loaded
        HOOKS.get(hook_entry(hook)[0], config.source, "train.hooks")
    if config.eval.metric is None and entry.metric is not None:
        config.eval.metric, config.eval.mode = entry.metric, config.eval.mode or entry.mode
    config.checked = config.to_dict()
    return config


def import_extensions(config: Config) -> None:
    """Import the modules of ``config.imports`` (:func:`import_modules` from ``config.imports_from``)."""
    import_modules(config.imports, config.imports_from, config.source)


def import_modules(names: Sequence[str], folder: str | None = None, source: str = "<imports>") -> None:
    """Import the modules ``names`` (the architectures, datasets and hooks they register become names a recipe
    can use), with ``folder`` (default: the working directory) first on ``sys.path`` while they are imported. A
    module imported before is not run again.

    Raises:
        ConfigError: one line naming ``source``, ``imports``, the module and why it could not be imported.
    """
    if not names:
        return
    folder = folder or os.getcwd()
    sys.path.insert(0, folder)
    importlib.invalidate_caches()  # a module written since the last import (beside a recipe just made) is seen
    try:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as err:  # whatever the module's own code raised: the user's to fix, named in one line
                why = (str(err).strip().splitlines() or [""])[0]
                raise ConfigError(f"{source}: imports: cannot import {name!r} from {folder} or sys.path "
                                  f"({type(err).__name__}: {why})") from err
    finally:
        sys.path.remove(folder)


def is_checked(config: Config) -> bool:
    """Whether :func:`check_config` passed ``config`` as it is now (it has not been changed since)."""
    return config.checked is not None and config.checked == config.to_dict()


def config_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> Config:
    """A recipe dict as a :class:`Config`, every section validated: :func:`resdense.config.parse_config` and
    :func:`check_config`."""
    return check_config(recipe.parse_config(raw, source))


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a recipe, every section: a path or a shipped recipe's name, and ``--set`` style
    ``overrides`` (see :func:`resdense.config.parse_recipe`), with ``model`` / ``data`` checked by
    :func:`check_config`.

    Raises:
        ConfigError: missing file, bad YAML, unknown key (naming file and key), wrong type or value, a name that is
            not a registered architecture or dataset (naming the registered ones).
    """
    return check_config(recipe.parse_recipe(path, overrides))


# ---- signatures --------------------------------------------------------------------------------------------------
def _check_kwargs(kwargs: Mapping[str, Any], params: Mapping[str, Any], section: str, source: str) -> None:
    for key, value in kwargs.items():
        if key not in params:
            raise unknown_key_error(source, f"{section}.{key}", list(params))
        if not check_type(value, params[key]):
            raise wrong_type_error(source, f"{section}.{key}", value, params[key])


def check_model_section(model: Mapping[str, Any], source: str) -> None:
    """``model.arch`` is a registered architecture and the other keys are arguments of its builder; a
    :class:`ConfigError` names ``source`` and the first unknown or mistyped key."""
    entry = architecture(model["arch"], source)
    _check_kwargs({k: v for k, v in model.items() if k != "arch"}, model_params(entry), "model", source)


def _dataset_entry(section: Mapping[str, Any], task: str, source: str) -> DatasetEntry:
    name = section.get("dataset")
    if name is None:
        raise ConfigError(f"{source}: data.dataset is missing; one of {', '.join(DATASETS)}")
    entry = DATASETS.get(name, source, "data.dataset")
    if task not in entry.tasks:
        raise ConfigError(f"{source}: data.dataset = {name!r} serves {' or '.join(entry.tasks)}, not {task}")
    return entry


def _transforms_fn(task: str) -> Callable:
    return {"segmentation": SegmentationTask, "detection": DetectionTask, "classification": ClassificationTask}[
        task].transforms


def _split_params(entry: DatasetEntry, task: str) -> dict[str, Any]:
    """The ``data.train`` / ``data.val`` keys of a dataset: its class's arguments but the transforms."""
    if entry.name == SHAPES:  # the set's paths and classes come from make_shapes
        fixed = ("images_dir", "masks_dir", "ann_file", "classes")
        params = {k: v for k, v in signature_params([shapes_class(task)]).items() if k not in fixed}
    else:
        params = signature_params([entry.cls])
    params.pop("transforms", None)
    params.pop("transform", None)
    return params


def check_data_section(section: Mapping[str, Any], task: str, source: str) -> None:
    """Check a recipe's ``data`` keys against the dataset class and the task's transform preset; a
    :class:`ConfigError` names ``source`` and the first unknown or mistyped key."""
    for key in section:
        if key not in _DATA_KEYS:
            raise unknown_key_error(source, f"data.{key}", _DATA_KEYS)
    entry = _dataset_entry(section, task, source)
    if not isinstance(section.get("allow_overlap", False), bool):
        raise recipe.wrong_type_error(source, "data.allow_overlap", section["allow_overlap"], bool)
    if entry.name == SHAPES:
        if not isinstance(section.get("shapes"), Mapping):
            raise ConfigError(f"{source}: data.shapes (make_shapes arguments: root, n_train, n_val, size, seed) "
                              "is missing")
        _check_kwargs(section["shapes"], signature_params([make_shapes]), "data.shapes", source)
    elif "shapes" in section:
        raise ConfigError(f"{source}: data.shapes applies only to dataset: shapes")
    params = _split_params(entry, task)
    for split in ("train", "val"):
        sub = section.get(split) or {}
        if not isinstance(sub, Mapping):
            raise ConfigError(f"{source}: data.{split} must be a mapping of {entry.name} arguments")
        _check_kwargs(sub, params, f"data.{split}", source)
    tparams = signature_params([_transforms_fn(task)])
    tparams.pop("train", None)
    for key in ("train_transforms", "val_transforms"):
        sub = section.get(key)
        if sub is not None:
            if not isinstance(sub, Mapping):
                raise ConfigError(f"{source}: data.{key} must be a mapping of preset arguments or null")
            _check_kwargs(sub, tparams, f"data.{key}", source)


# ---- datasets ----------------------------------------------------------------------------------------------------
def _transforms(section: Mapping[str, Any], task: str, split: str):
    key = f"{split}_transforms"
    if key not in section or section[key] is None:
        return None
    return _transforms_fn(task)(train=split == "train", **section[key])


def _construct(entry: DatasetEntry, transforms: Any, kwargs: Mapping[str, Any]) -> Dataset:
    """``entry.cls(**kwargs)`` with the transforms passed as its signature names them (``transforms`` or, as
    torchvision's folder datasets have it, ``transform``)."""
    params = signature_params([entry.cls])
    if "transforms" in params or "transform" not in params:
        return entry.cls(transforms=transforms, **kwargs)
    return entry.cls(transform=transforms, **kwargs)


def build_dataset(section: Mapping[str, Any], task: str, split: str, transforms_of: str | None = None) -> Dataset:
    """The ``split`` (``"train"`` or ``"val"``) dataset of a recipe's ``data`` section, with the transforms of the
    ``transforms_of`` split (default: its own; ``"val"`` for deterministic training images, e.g. to calibrate)."""
    entry = DATASETS.get(section["dataset"], key="data.dataset")
    kwargs = dict(section.get(split) or {})
    transforms = _transforms(section, task, transforms_of or split)
    if entry.name == SHAPES:
        kwargs.update(shapes=section["shapes"], part=split, task=task)
    return _construct(entry, transforms, kwargs)


def build_datasets(section: Mapping[str, Any], task: str, splits: Sequence[str] = ("train", "val"),
                   source: str = "<dict>") -> dict[str, Dataset]:
    """The ``splits`` datasets of a recipe's ``data`` section, ``{split: dataset}``; when both ``train`` and ``val``
    are built they must not share images (:func:`check_disjoint`) unless ``data.allow_overlap`` is true."""
    sets = {s: build_dataset(section, task, s) for s in splits}
    if "train" in sets and "val" in sets and not section.get("allow_overlap", False):
        check_disjoint(sets["train"], sets["val"], source)
    return sets


def _image_files(dataset: Dataset) -> list[str]:
    """The dataset's image files (its ``image_paths``) as absolute paths (each folder resolved once, so links to one
    folder agree)."""
    folders: dict[Path, str] = {}
    out = []
    for p in dataset.image_paths:
        p = Path(p)
        if p.parent not in folders:
            folders[p.parent] = os.path.realpath(p.parent)
        out.append(os.path.join(folders[p.parent], p.name))
    return out


def check_disjoint(train: Dataset, val: Dataset, source: str = "<dict>") -> None:
    """Refuse a validation set that shares image files with the training set (datasets that do not list their
    files as ``image_paths``, as a user's may not, are not compared).

    Raises:
        ConfigError: naming ``source``, how many images are shared and the first of them.
    """
    if not (hasattr(train, "image_paths") and hasattr(val, "image_paths")):
        return
    seen = set(_image_files(train))
    shared = [p for p in _image_files(val) if p in seen]
    if shared:
        first = ", ".join(Path(p).name for p in shared[:5]) + (", ..." if len(shared) > 5 else "")
        raise ConfigError(f"{source}: data.train and data.val share {len(shared)} image(s) ({len(shared)} of the "
                          f"{len(val)} validation images are training images: {first}); give them disjoint splits "
                          "(data.train.split / data.val.split, written by `resdense data split`), or set "
                          "data.allow_overlap: true for a smoke test")


def dataset_classes(dataset: Dataset, task: str) -> list[str]:
    names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", None)
    if names is None:
        raise ConfigError(f"{type(dataset).__name__} has no class_names; set model.num_classes")
    return [str(n) for n in names]


def classes_key(model: Mapping[str, Any], source: str = "<dict>") -> str:
    """The builder argument that holds the class count (smp's ``classes``, resdense's ``num_classes``)."""
    return architecture(model["arch"], source).classes_key


def fill_num_classes(model: dict[str, Any], task: str, class_names: list[str]) -> dict[str, Any]:
    """Fill the model's class count from the dataset when the recipe leaves it out (detectors count background)."""
    model = dict(model)
    key = classes_key(model)
    if model.get(key) is None:
        model[key] = len(class_names) + (1 if task == "detection" else 0)
    return model


# ---- models ------------------------------------------------------------------------------------------------------
def build_model(model: Mapping[str, Any], source: str = "<dict>") -> nn.Module:
    """Build the ``model`` section with its architecture's builder; a refused value names ``source`` and the
    section."""
    kwargs = dict(model)
    entry = architecture(kwargs.pop("arch"), source)
    try:
        return entry.builder(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: model: {err}") from None


def build_task(task: str, class_names: list[str], config) -> Any:
    """The task adapter for ``task`` (see :mod:`resdense.engine.tasks`)."""
    if task == "segmentation":
        ignore = config.data.get("train", {}).get("ignore_index", 255) if isinstance(config.data.get("train"), Mapping) else 255
        num = config.model.get(classes_key(config.model, config.source))
        try:
            return SegmentationTask(num or len(class_names), ignore_index=ignore, loss=config.train.loss,
                                    class_weights=config.train.class_weights, class_names=class_names,
                                    focal_gamma=config.train.focal_gamma)
        except ConfigError as err:
            raise ConfigError(f"{config.source}: {err}") from None
    if task == "detection":
        iou = architecture(config.model["arch"], config.source).iou_types
        return DetectionTask(class_names, iou_types=iou, backend=config.eval.backend, max_dets=config.eval.max_dets)
    return ClassificationTask(class_names)
