"""A thin high-level API over the engine: train / evaluate / predict a recipe, classify an image, list what exists.

>>> import resdense.api as rd                                               # doctest: +SKIP
>>> rd.train("configs/unet_r34_membrane.yaml", ["train.iterations=200"])   # doctest: +SKIP
>>> rd.classify("cat.jpg", arch="resnet50", weights="imagenet")            # doctest: +SKIP
[('tabby', 0.61), ('tiger cat', 0.22), ...]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchvision.models import get_model_weights

from resdense.backbones import list_backbones
from resdense.config import list_configs, read_yaml
from resdense.data import IMAGENET_MEAN, IMAGENET_STD
from resdense.engine import ClassificationTask, run_evaluation, run_training
from resdense.engine.architectures import builder_name
from resdense.engine.build import import_modules
from resdense.errors import ConfigError
from resdense.heads import create_classifier
from resdense.inference import Predictor, as_rgb, run_prediction
from resdense.registry import ARCHITECTURES, DATASETS, HOOKS

log = logging.getLogger(__name__)

__all__ = ["train", "evaluate", "predict", "classify", "available"]


def train(config, overrides: Sequence[str] = (), **kwargs: Any) -> dict[str, Any]:
    """Train a recipe (path, shipped name or :class:`~resdense.config.Config`); see :func:`run_training`."""
    return run_training(config, overrides, **kwargs)


def evaluate(config, checkpoint: str | os.PathLike, overrides: Sequence[str] = (), *,
             out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint on the recipe's validation split (and a readable report in ``out``)."""
    return run_evaluation(config, checkpoint, overrides, out=out)


def predict(config, checkpoint: str | os.PathLike, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            **kwargs: Any) -> list[Path]:
    """PNG overlays of a checkpoint's predictions; returns the written paths."""
    return run_prediction(config, checkpoint, images, out_dir, **kwargs)


def classify(image: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None, arch: str = "resnet50",
             weights: str | os.PathLike | None = None, top: int = 5) -> list[tuple[str, float]]:
    """Top-``top`` ``(class name, probability)`` of an image.

    Either a classifier ``checkpoint`` written by ``resdense train`` (class names from its stored recipe), or an
    ImageNet classifier ``arch`` with ``weights`` (a torchvision tag such as ``"imagenet"``, downloaded once, or a
    file; names from torchvision's ImageNet categories). Preprocessing follows torchvision's evaluation recipe:
    resize 256, centre crop 224, ImageNet mean/std.
    """
    if (checkpoint is None) == (weights is None):
        raise ConfigError("classify: give either checkpoint= or weights= (with arch=)")
    rgb = as_rgb(image)  # a bad image is reported before any model is loaded
    if checkpoint is not None:
        predictor = Predictor.from_checkpoint(checkpoint, top_k=top)
        if predictor.kind != "classification":
            raise ConfigError(f"{checkpoint}: a {predictor.kind} checkpoint, not a classifier")
    else:
        model = create_classifier(arch, weights=weights)
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        names = cfg.get("categories") or _imagenet_categories(arch) or []
        predictor = Predictor(model, ClassificationTask(names), top_k=top, preprocess={"mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
                                                  "std": tuple(cfg.get("std", IMAGENET_STD))})
    return predictor(rgb)["top"]


def _imagenet_categories(arch: str) -> list[str] | None:
    try:
        return list(get_model_weights(arch).DEFAULT.meta["categories"])
    except Exception as err:  # an architecture torchvision does not know: indices are printed instead
        log.info("classify: no ImageNet class names for %r (%s: %s); class indices are printed",
                 arch, type(err).__name__, err)
        return None


def available(imports: Sequence[str] = ()) -> dict[str, list[tuple[str, str]]]:
    """What ``resdense list`` prints: backbones, heads (the registered architectures: the recipe ``model.arch``
    that selects each, its task and builder), datasets (``data.dataset``, the tasks it serves and its class), training
    hooks (``train.hooks``) and the shipped recipes; ``imports``: modules imported first (from the working directory,
    as a recipe's ``imports``), whose registrations are listed too."""
    import_modules(imports, source="resdense list")
    backbones = [(name, "") for name in list_backbones()]
    heads = [(name, f"{entry.task}: {builder_name(entry.builder)}") for name, entry in ARCHITECTURES.items()]
    datasets = [(name, f"{' / '.join(entry.tasks)}: {builder_name(entry.cls)}") for name, entry in DATASETS.items()]
    hooks = [(name, builder_name(entry.cls)) for name, entry in HOOKS.items()]
    configs = []
    for path in list_configs():
        try:
            raw = read_yaml(path)
            model = raw.get("model", {}) if isinstance(raw, dict) else {}
            note = f"{raw.get('task', '')} {model.get('arch', '')} {model.get('backbone', '')}".strip()
        except ConfigError as err:
            note = f"(unreadable: {err})"
        configs.append((path.stem, note))
    return {"backbones": backbones, "heads": heads, "datasets": datasets, "hooks": hooks, "configs": configs}
