"""Name -> entry tables: backbones, architectures, datasets and training hooks.

Every name a recipe can hold in ``model.backbone`` (``create_backbone``), ``model.arch``, ``data.dataset`` or
``train.hooks`` is one entry of a :class:`Registry`. Recipe checking, building, ``resdense list``, the API and export read these tables, so adding an
architecture, a dataset or a hook is one registration, in the library or in a user's module (a recipe's
``imports: [my_pkg.models]`` imports it before the recipe is checked)::

    import resdense

    @resdense.register_architecture("tiny_unet", task="segmentation")
    def tiny_unet(num_classes: int = 2, width: int = 16):
        ...

The builder of an architecture takes the recipe's ``model`` keys (``arch`` excluded) as keyword arguments.
Registering a name twice is an error unless ``override=True``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from resdense.errors import ConfigError

__all__ = [
    "Registry",
    "Architecture",
    "Dataset",
    "Hook",
    "BACKBONES",
    "ARCHITECTURES",
    "DATASETS",
    "HOOKS",
    "register_backbone",
    "register_architecture",
    "register_dataset",
    "register_hook",
]

TASK_NAMES = ("segmentation", "detection", "classification")
E = TypeVar("E")


class Registry(Generic[E]):
    """An ordered ``name -> entry`` table whose lookups fail with one line naming the known names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "architecture", "dataset", "hook": the word of the error messages
        self._entries: dict[str, E] = {}

    def add(self, name: str, entry: E, override: bool = False) -> E:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not override:
            raise ConfigError(f"{self.kind} {name!r} is already registered (override=True replaces it)")
        self._entries[name] = entry
        return entry

    def get(self, name: str, source: str = "<registry>", key: str | None = None) -> E:
        """The entry of ``name``; a missing name is a :class:`ConfigError` naming ``source``, ``key`` and the names
        known."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            where = f"{source}: {key} = {name!r}" if key else f"{source}: {self.kind} {name!r}"
            close = difflib.get_close_matches(name, self._entries, n=1) if isinstance(name, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where} is not a registered {self.kind}{hint}; one of "
                              f"{', '.join(self._entries)}") from None

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, E]]:
        return list(self._entries.items())


def _check_task(task: str, what: str) -> None:
    if task not in TASK_NAMES:
        raise ConfigError(f"{what}: task = {task!r} is not one of {', '.join(TASK_NAMES)}")


@dataclass(frozen=True)
class Architecture:
    """One ``model.arch``.

    Attributes:
        name: the recipe's ``model.arch``.
        builder: ``builder(**model_keys) -> nn.Module``.
        task: ``segmentation``, ``detection`` or ``classification``: the task adapter (loss, metrics, outputs).
        classes_key: the builder's class-count argument, filled from the dataset's classes when the recipe omits it.
        metric: the default ``eval.metric`` of the task's runs (``None``: the task's default).
        mode: ``max`` or ``min``: the direction of ``metric`` (``None``: from the metric's name).
        exports: the ``resdense export --format`` values the architecture supports.
        signature: callables whose keyword parameters are the accepted ``model`` keys (default: ``[builder]``).
        iou_types: detection: the COCO IoU types its runs are scored on (``("bbox", "segm")`` for a model whose
            outputs hold ``masks``).
        pretrained_norm: the ``norm`` its builder picks when given pretrained weights (detectors: ``frozen_bn``); a
            model rebuilt for a checkpoint's weights, without the download, is given the same.
    """

    name: str
    builder: Callable[..., Any]
    task: str
    classes_key: str = "num_classes"
    metric: str | None = None
    mode: str | None = None
    exports: tuple[str, ...] = ("onnx", "torchscript", "pt2", "package")
    signature: tuple[Callable[..., Any], ...] = field(default=())
    iou_types: tuple[str, ...] = ("bbox",)
    pretrained_norm: str | None = None


@dataclass(frozen=True)
class Dataset:
    """One ``data.dataset``: ``cls(**data_keys, split=..., transforms=...)`` serving ``tasks``."""

    name: str
    cls: Callable[..., Any]
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class Hook:
    """One ``train.hooks`` name: ``cls(**options)`` gives a training hook."""

    name: str
    cls: Callable[..., Any]


#: ``create_backbone`` names (``model.backbone``): name -> ``factory(weights=..., out_features=..., **kwargs)``.
BACKBONES: Registry[Callable[..., Any]] = Registry("backbone")
#: ``model.arch`` names: name -> :class:`Architecture`.
ARCHITECTURES: Registry[Architecture] = Registry("architecture")
#: ``data.dataset`` names: name -> :class:`Dataset`.
DATASETS: Registry[Dataset] = Registry("dataset")
#: ``train.hooks`` names: name -> :class:`Hook`.
HOOKS: Registry[Hook] = Registry("hook")


def register_backbone(name: str, factory: Callable[..., Any] | None = None, *, override: bool = False):
    """Register ``factory(weights=..., out_features=..., **kwargs) -> FeatureExtractor`` as a
    :func:`~resdense.backbones.create_backbone` name; without ``factory``, a decorator."""

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        BACKBONES.add(name, fn, override)
        return fn

    return add if factory is None else add(factory)


def register_architecture(name: str, builder: Callable[..., Any] | None = None, *, task: str,
                          classes_key: str = "num_classes", metric: str | None = None, mode: str | None = None,
                          exports: tuple[str, ...] = ("onnx", "torchscript", "pt2", "package"),
                          signature: tuple[Callable[..., Any], ...] = (), iou_types: tuple[str, ...] = ("bbox",),
                          pretrained_norm: str | None = None, override: bool = False):
    """Register ``builder`` as ``model.arch: name`` (the keywords are :class:`Architecture`'s fields); without
    ``builder``, a decorator."""
    _check_task(task, f"architecture {name!r}")
    if mode not in (None, "max", "min"):
        raise ConfigError(f"architecture {name!r}: mode = {mode!r} is not one of max, min")

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        ARCHITECTURES.add(name, Architecture(name, fn, task, classes_key, metric, mode, tuple(exports),
                                             tuple(signature) or (fn,), tuple(iou_types), pretrained_norm), override)
        return fn

    return add if builder is None else add(builder)


def register_dataset(name: str, cls: Callable[..., Any] | None = None, *, task: str | tuple[str, ...],
                     override: bool = False):
    """Register ``cls`` as ``data.dataset: name`` for ``task`` (one task or several); without ``cls``, a decorator."""
    tasks = (task,) if isinstance(task, str) else tuple(task)
    for t in tasks:
        _check_task(t, f"dataset {name!r}")

    def add(c: Callable[..., Any]) -> Callable[..., Any]:
        DATASETS.add(name, Dataset(name, c, tasks), override)
        return c

    return add if cls is None else add(cls)


def register_hook(name: str, cls: Callable[..., Any] | None = None, *, override: bool = False):
    """Register ``cls`` as ``train.hooks: [name]``; without ``cls``, a decorator."""

    def add(c: Callable[..., Any]) -> Callable[..., Any]:
        HOOKS.add(name, Hook(name, c), override)
        return c

    return add if cls is None else add(cls)
