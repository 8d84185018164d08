"""From a recipe's ``model`` and ``data`` sections to objects: each key is a keyword argument of the constructor it
feeds, checked against that constructor's signature (unknown keys and wrong types name the file and the key).

``model.arch`` picks the constructor:

============================================  =========================================================
``unet``                                      :class:`resdense.heads.UNet`
``smp.<Arch>`` (e.g. ``smp.DeepLabV3Plus``)   :func:`resdense.heads.smp_model` with ``arch=<Arch>``
``faster_rcnn``, ``mask_rcnn``,               :func:`resdense.heads.build_detector` (``kind=arch``); extra keys go
``retinanet``, ``fcos``                       to the torchvision class (``anchor_sizes``, ``aspect_ratios``,
                                              ``fpn_channels``, ``representation_size`` are its own arguments).
``classifier``                                :class:`resdense.heads.Classifier`
============================================  =========================================================

This is also where a recipe is checked as a whole: :func:`load_config` / :func:`config_from_dict` are
:mod:`resdense.config`'s (sections, task, ``train``, ``eval``) plus :func:`check_config` (``model`` and ``data``
against the constructors below); the CLI, the runners and ``resdense.load_config`` go through them.

``data.dataset`` picks the dataset class (``mask``, ``coco_semantic``, ``coco``, ``voc``, ``instance_masks``
(:class:`resdense.data.InstanceMaskDataset`), ``imagefolder``, or ``shapes``: :func:`resdense.data.make_shapes`
writes the synthetic set first). ``data.train`` / ``data.val`` are
that class's keyword arguments; ``data.train_transforms`` / ``data.val_transforms`` those of the task's preset
(:func:`resdense.data.segmentation_transforms`, :func:`resdense.data.detection_transforms`, or
:func:`classification_transforms` below); ``null`` means no transforms.

Every dataset class takes ``split`` (a text file of sample names, or a list of them) to serve part of a folder or an
annotation file. Training and validation sets that share images are refused when they are built
(:func:`build_datasets`): ``data.allow_overlap: true`` permits it, for smoke tests only, since the validation
scores then measure memorised images.
"""

from __future__ import annotations

import inspect
import json
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.models import detection as tvd

from resdense import config as recipe
from resdense.config import (
    DETECTOR_ARCHS,
    MODEL_ARCHS,
    Config,
    check_type,
    task_of,
    unknown_key_error,
    wrong_type_error,
)
from resdense.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SHAPES_CLASSES,
    CocoDetection,
    CocoSemantic,
    ImageFolder,
    InstanceMaskDataset,
    MaskDataset,
    ShapesDataset,
    ShapesSplit,
    VocDetection,
    detection_transforms,
    make_shapes,
    segmentation_transforms,
)
from resdense.errors import ConfigError
from resdense.files import write_text
from resdense.heads import Classifier, UNet, build_detector, smp_architectures, smp_model

from .tasks import ClassificationTask, DetectionTask, SegmentationTask

__all__ = [
    "MODEL_ARCHS",
    "DATASETS",
    "task_of",
    "load_config",
    "config_from_dict",
    "check_config",
    "build_model",
    "build_dataset",
    "build_datasets",
    "check_disjoint",
    "build_task",
    "check_model_section",
    "check_data_section",
    "classification_transforms",
    "fill_num_classes",
]

DETECTOR_KINDS = DETECTOR_ARCHS  # = resdense.heads.KINDS (tests/engine/test_config.py)
DATASETS = {"mask": "segmentation", "coco_semantic": "segmentation", "coco": "detection", "voc": "detection",
            "instance_masks": "detection", "imagefolder": "classification", "shapes": "segmentation|detection"}
_DATA_KEYS = ("dataset", "train", "val", "shapes", "train_transforms", "val_transforms", "allow_overlap")


# ---- whole recipes -----------------------------------------------------------------------------------------------
def check_config(config: Config) -> Config:
    """Check a recipe's ``model`` and ``data`` keys against the constructors they feed (unknown keys and wrong types
    are one-line :class:`ConfigError` naming ``config.source`` and the key); returns ``config``."""
    check_model_section(config.model, config.source)
    check_data_section(config.data, config.task, config.source)
    return config


def config_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> Config:
    """:func:`resdense.config.config_from_dict` and :func:`check_config`: every section validated."""
    return check_config(recipe.config_from_dict(raw, source))


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a recipe, every section: a path or a shipped recipe's name, and ``--set`` style
    ``overrides`` (see :func:`resdense.config.load_config`), with ``model`` / ``data`` checked by :func:`check_config`.

    Raises:
        ConfigError: missing file, bad YAML, unknown key (naming file and key), wrong type or value.
    """
    return check_config(recipe.load_config(path, overrides))


# ---- signatures --------------------------------------------------------------------------------------------------
def _model_targets(arch: str) -> list[Callable]:
    if arch == "unet":
        return [UNet]
    if arch.startswith("smp."):
        names = {n.lower(): n for n in smp_architectures()}
        name = names.get(arch[4:].lower())
        return [smp_model] + ([getattr(smp, name)] if name else [])
    if arch == "classifier":
        return [Classifier]
    cls = {"faster_rcnn": tvd.FasterRCNN, "mask_rcnn": tvd.MaskRCNN, "retinanet": tvd.RetinaNet, "fcos": tvd.FCOS}[arch]
    return [build_detector, cls]


def _params(targets: list[Callable]) -> dict[str, Any]:
    """Keyword parameters accepted by a chain of callables (the first forwards ``**kwargs`` to the next)."""
    out: dict[str, Any] = {}
    for fn in targets:
        init = fn.__init__ if inspect.isclass(fn) else fn
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # annotations that do not resolve at runtime: accept any value, the constructor judges
            hints = {}
        for name, p in inspect.signature(init).parameters.items():
            if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or name in out:
                continue
            out[name] = hints.get(name, Any)
    return out


def _check_kwargs(kwargs: Mapping[str, Any], params: Mapping[str, Any], section: str, source: str) -> None:
    for key, value in kwargs.items():
        if key not in params:
            raise unknown_key_error(source, f"{section}.{key}", list(params))
        if not check_type(value, params[key]):
            raise wrong_type_error(source, f"{section}.{key}", value, params[key])


def check_model_section(model: Mapping[str, Any], source: str) -> None:
    """Check a recipe's ``model`` keys against the constructor ``model.arch`` picks; a :class:`ConfigError` names
    ``source`` and the first unknown or mistyped key."""
    arch = model["arch"]
    task_of(arch, source)
    if arch.startswith("smp."):
        if arch[4:].lower() not in {n.lower() for n in smp_architectures()}:
            raise ConfigError(f"{source}: model.arch = {arch!r}: smp has no {arch[4:]!r}; "
                              f"choose from {', '.join('smp.' + n for n in smp_architectures())}")
    params = _params(_model_targets(arch))
    params.pop("kind", None)
    params.pop("arch", None)
    _check_kwargs({k: v for k, v in model.items() if k != "arch"}, params, "model", source)


def _dataset_class(name: str):
    return {"mask": MaskDataset, "coco_semantic": CocoSemantic, "coco": CocoDetection, "voc": VocDetection,
            "instance_masks": InstanceMaskDataset, "imagefolder": ImageFolder}[name]


def _transforms_fn(task: str) -> Callable:
    return {"segmentation": segmentation_transforms, "detection": detection_transforms,
            "classification": classification_transforms}[task]


def check_data_section(section: Mapping[str, Any], task: str, source: str) -> None:
    """Check a recipe's ``data`` keys against the dataset class and the task's transform preset; a
    :class:`ConfigError` names ``source`` and the first unknown or mistyped key."""
    for key in section:
        if key not in _DATA_KEYS:
            raise unknown_key_error(source, f"data.{key}", _DATA_KEYS)
    name = section.get("dataset")
    if name is None:
        raise ConfigError(f"{source}: data.dataset is missing; one of {', '.join(DATASETS)}")
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(f"{source}: data.dataset = {name!r} is not one of {', '.join(DATASETS)}")
    if task not in DATASETS[name]:
        raise ConfigError(f"{source}: data.dataset = {name!r} serves {DATASETS[name]}, not {task}")
    if not isinstance(section.get("allow_overlap", False), bool):
        raise recipe.wrong_type_error(source, "data.allow_overlap", section["allow_overlap"], bool)
    if name == "shapes":
        if not isinstance(section.get("shapes"), Mapping):
            raise ConfigError(f"{source}: data.shapes (make_shapes arguments: root, n_train, n_val, size, seed) "
                              "is missing")
        _check_kwargs(section["shapes"], _params([make_shapes]), "data.shapes", source)
        cls = _dataset_class("mask" if task == "segmentation" else "coco")
        fixed = ("images_dir", "masks_dir", "ann_file", "classes")
        params = {k: v for k, v in _params([cls]).items() if k not in fixed}
    else:
        if "shapes" in section:
            raise ConfigError(f"{source}: data.shapes applies only to dataset: shapes")
        params = _params([_dataset_class(name)])
    params.pop("transforms", None)
    params.pop("transform", None)
    for split in ("train", "val"):
        sub = section.get(split) or {}
        if not isinstance(sub, Mapping):
            raise ConfigError(f"{source}: data.{split} must be a mapping of {name} arguments")
        _check_kwargs(sub, params, f"data.{split}", source)
    tparams = _params([_transforms_fn(task)])
    tparams.pop("train", None)
    for key in ("train_transforms", "val_transforms"):
        sub = section.get(key)
        if sub is not None:
            if not isinstance(sub, Mapping):
                raise ConfigError(f"{source}: data.{key} must be a mapping of preset arguments or null")
            _check_kwargs(sub, tparams, f"data.{key}", source)


# ---- datasets ----------------------------------------------------------------------------------------------------
def classification_transforms(train: bool = True, size: int = 224, *, resize: int = 256, hflip: float = 0.5,
                              scale: tuple[float, float] = (0.08, 1.0),
                              mean: tuple[float, float, float] = IMAGENET_MEAN,
                              std: tuple[float, float, float] = IMAGENET_STD) -> Callable:
    """torchvision's ImageNet recipe on PIL images: training ``RandomResizedCrop(size, scale)`` + flip; evaluation
    ``Resize(resize)`` + ``CenterCrop(size)``; then ``[3, size, size]`` float tensors normalised with mean/std."""
    ops = ([T.RandomResizedCrop(size, scale=tuple(scale)), T.RandomHorizontalFlip(hflip)] if train
           else [T.Resize(resize), T.CenterCrop(size)])
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


def _transforms(section: Mapping[str, Any], task: str, split: str):
    key = f"{split}_transforms"
    if key not in section or section[key] is None:
        return None
    return _transforms_fn(task)(train=split == "train", **section[key])


def _shapes(kwargs: Mapping[str, Any]):
    """``make_shapes(**kwargs)``, skipped when ``root`` already holds the set made with the same arguments (a
    marker file records them), so train and val, and later ``eval`` / ``predict`` runs, reuse one generation."""
    root = Path(kwargs["root"])
    marker = root / ".resdense_shapes.json"
    key = json.dumps({k: v for k, v in sorted(kwargs.items()) if k != "root"})
    if marker.exists() and marker.read_text() == key:
        splits = {}
        for name in ("train", "val"):
            d = root / name
            splits[name] = ShapesSplit(root=d, images=d / "images", masks=d / "masks",
                                       instances=d / "instances.json",
                                       num_images=len(list((d / "images").glob("*.jpg"))))
        if all(s.instances.exists() for s in splits.values()):
            return ShapesDataset(root=root, **splits)
    marker.unlink(missing_ok=True)
    made = make_shapes(**kwargs)
    write_text(marker, key)
    return made


def build_dataset(section: Mapping[str, Any], task: str, split: str, transforms_of: str | None = None) -> Dataset:
    """The ``split`` (``"train"`` or ``"val"``) dataset of a recipe's ``data`` section, with the transforms of the
    ``transforms_of`` split (default: its own; ``"val"`` for deterministic training images, e.g. to calibrate)."""
    name = section["dataset"]
    kwargs = dict(section.get(split) or {})
    transforms = _transforms(section, task, transforms_of or split)
    if name == "shapes":
        part = _shapes(section["shapes"]).split(split)
        if task == "segmentation":
            return MaskDataset(part.images, part.masks, classes=["background", *SHAPES_CLASSES],
                               transforms=transforms, **kwargs)
        return CocoDetection(part.images, part.instances, transforms=transforms, **kwargs)
    cls = _dataset_class(name)
    if name == "imagefolder":
        return cls(transform=transforms, **kwargs)
    return cls(transforms=transforms, **kwargs)


def build_datasets(section: Mapping[str, Any], task: str, splits: Sequence[str] = ("train", "val"),
                   source: str = "<dict>") -> dict[str, Dataset]:
    """The ``splits`` datasets of a recipe's ``data`` section, ``{split: dataset}``; when both ``train`` and ``val``
    are built they must not share images (:func:`check_disjoint`) unless ``data.allow_overlap`` is true."""
    sets = {s: build_dataset(section, task, s) for s in splits}
    if "train" in sets and "val" in sets and not section.get("allow_overlap", False):
        check_disjoint(sets["train"], sets["val"], source)
    return sets


def _image_files(dataset: Dataset) -> list[str]:
    """The dataset's image files as absolute paths (each folder resolved once, so links to one folder agree)."""
    folders: dict[Path, str] = {}
    out = []
    for p in dataset.image_paths:
        p = Path(p)
        if p.parent not in folders:
            folders[p.parent] = os.path.realpath(p.parent)
        out.append(os.path.join(folders[p.parent], p.name))
    return out


def check_disjoint(train: Dataset, val: Dataset, source: str = "<dict>") -> None:
    """Refuse a validation set that shares image files with the training set.

    Raises:
        ConfigError: naming ``source``, how many images are shared and the first of them.
    """
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


def fill_num_classes(model: dict[str, Any], task: str, class_names: list[str]) -> dict[str, Any]:
    """Fill the model's class count from the dataset when the recipe leaves it out (detectors count background)."""
    model = dict(model)
    key = "classes" if model["arch"].startswith("smp.") else "num_classes"
    if model.get(key) is None:
        model[key] = len(class_names) + (1 if task == "detection" else 0)
    return model


# ---- models ------------------------------------------------------------------------------------------------------
def build_model(model: Mapping[str, Any], source: str = "<dict>") -> nn.Module:
    """Build the ``model`` section (see the module docstring); a refused value names ``source`` and the section."""
    kwargs = dict(model)
    arch = kwargs.pop("arch")
    try:
        if arch == "unet":
            return UNet(**kwargs)
        if arch.startswith("smp."):
            return smp_model(arch[4:], **kwargs)
        if arch == "classifier":
            return Classifier(**kwargs)
        return build_detector(arch, **kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: model: {err}") from None


def build_task(task: str, class_names: list[str], config) -> Any:
    """The task adapter for ``task`` (see :mod:`resdense.engine.tasks`)."""
    if task == "segmentation":
        ignore = config.data.get("train", {}).get("ignore_index", 255) if isinstance(config.data.get("train"), Mapping) else 255
        num = config.model.get("classes" if config.model["arch"].startswith("smp.") else "num_classes")
        try:
            return SegmentationTask(num or len(class_names), ignore_index=ignore, loss=config.train.loss,
                                    class_weights=config.train.class_weights, class_names=class_names,
                                    focal_gamma=config.train.focal_gamma)
        except ConfigError as err:
            raise ConfigError(f"{config.source}: {err}") from None
    if task == "detection":
        iou = ("bbox", "segm") if config.model["arch"] == "mask_rcnn" else ("bbox",)
        return DetectionTask(class_names, iou_types=iou, backend=config.eval.backend, max_dets=config.eval.max_dets)
    return ClassificationTask(class_names)
