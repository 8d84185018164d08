"""resdense: ResNet backbones for dense prediction, behind one feature contract (``feature_info``, ``dict[str, Tensor]``).

>>> import resdense
>>> net = resdense.create_backbone("resnet50", out_features=("c3", "c4", "c5"))     # doctest: +SKIP
>>> unet = resdense.UNet("resnet34", num_classes=2)                                 # doctest: +SKIP
>>> result = resdense.train("demo_shapes_unet_r18", ["train.iterations=20"])        # doctest: +SKIP

The entry points below are imported on first use, as timm and smp do for their heavy parts: ``import resdense``
alone loads no torch, so tools that only read recipes (:mod:`resdense.config`) stay quick. The subpackages hold the
rest: ``resdense.backbones``, ``.heads``, ``.data``, ``.evaluation``, ``.engine``, ``.inference``, ``.export`` (see the README's Architecture).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from resdense.version import VERSION as __version__

# Public name -> (module, attribute), resolved by __getattr__ on first access.
_EXPORTS = {
    "create_backbone": ("resdense.backbones", "create_backbone"),
    "create_classifier": ("resdense.heads", "create_classifier"),
    "optimize_for_inference": ("resdense.backbones", "optimize_for_inference"),
    "build_detector": ("resdense.heads", "build_detector"),
    "UNet": ("resdense.heads", "UNet"),
    "FPN": ("resdense.heads", "FPN"),
    "smp_model": ("resdense.heads", "smp_model"),
    "load_config": ("resdense.engine", "load_config"),  # every section checked, model/data included
    "train": ("resdense.engine", "run_training"),
    "evaluate": ("resdense.engine", "run_evaluation"),
    "predict": ("resdense.inference", "run_prediction"),
    "Predictor": ("resdense.inference", "Predictor"),
    "TTA": ("resdense.inference", "TTA"),
    # a user's architectures, datasets and training hooks, by name in recipes (with imports: [their module])
    "register_architecture": ("resdense.registry", "register_architecture"),
    "register_backbone": ("resdense.registry", "register_backbone"),
    "register_dataset": ("resdense.registry", "register_dataset"),
    "register_hook": ("resdense.registry", "register_hook"),
}

__all__ = [  # = _EXPORTS and __version__ (tests/test_package.py)
    "FPN",
    "Predictor",
    "TTA",
    "UNet",
    "__version__",
    "build_detector",
    "create_backbone",
    "create_classifier",
    "evaluate",
    "load_config",
    "optimize_for_inference",
    "predict",
    "register_architecture",
    "register_backbone",
    "register_dataset",
    "register_hook",
    "smp_model",
    "train",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports these lazily
    from resdense.backbones import create_backbone, optimize_for_inference
    from resdense.engine import load_config
    from resdense.engine import run_evaluation as evaluate
    from resdense.engine import run_training as train
    from resdense.heads import FPN, UNet, build_detector, create_classifier, smp_model
    from resdense.inference import TTA, Predictor
    from resdense.inference import run_prediction as predict
    from resdense.registry import register_architecture, register_backbone, register_dataset, register_hook


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'resdense' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
