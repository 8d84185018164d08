"""The shipped architectures: one registration each in :data:`resdense.registry.ARCHITECTURES`.

================================  =====================================================================  ==============
``model.arch``                    builder (the recipe's ``model`` keys are its keyword arguments)         class count
================================  =====================================================================  ==============
``unet``                          :class:`resdense.heads.UNet`                                           ``num_classes``
``smp.<Arch>``                    :func:`resdense.heads.smp_model` with ``arch=<Arch>`` (any name of     ``classes``
(e.g. ``smp.DeepLabV3Plus``)      :func:`~resdense.heads.smp_architectures`; extra keys go to smp's
                                  class)
``faster_rcnn``, ``mask_rcnn``,   :func:`resdense.heads.build_detector` with ``kind=arch``; extra keys   ``num_classes``
``retinanet``, ``fcos``           go to the torchvision class
``classifier``                    :class:`resdense.heads.Classifier`                                     ``num_classes``
================================  =====================================================================  ==============

A user's module adds its own with :func:`resdense.register_architecture` and is named in a recipe's ``imports:``.
Names are looked up exactly, then without regard to case (``smp.deeplabv3plus`` is ``smp.DeepLabV3Plus``).
"""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from collections.abc import Callable
from typing import Any

import segmentation_models_pytorch as smp
from torchvision.models import detection as tvd

from resdense.heads import KINDS, Classifier, UNet, build_detector, smp_architectures, smp_model
from resdense.registry import ARCHITECTURES, Architecture, register_architecture

__all__ = ["architecture", "model_params", "builder_name", "signature_params"]

# torchvision's class behind each build_detector kind: its keyword arguments are recipe keys too.
_DETECTOR_CLASSES = {"faster_rcnn": tvd.FasterRCNN, "mask_rcnn": tvd.MaskRCNN, "retinanet": tvd.RetinaNet,
                     "fcos": tvd.FCOS}
# Graph exports of detectors: no pt2 (torchvision's post-processing does not torch.export with dynamic sizes).
_DETECTOR_EXPORTS = ("onnx", "torchscript", "package")

register_architecture("unet", UNet, task="segmentation")
for _name in smp_architectures():
    _build = functools.partial(smp_model, _name)
    register_architecture(f"smp.{_name}", _build, task="segmentation", classes_key="classes",
                          signature=(_build, getattr(smp, _name)))
for _kind in KINDS:
    _build = functools.partial(build_detector, _kind)
    register_architecture(_kind, _build, task="detection", exports=_DETECTOR_EXPORTS,
                          signature=(_build, _DETECTOR_CLASSES[_kind]), pretrained_norm="frozen_bn",
                          iou_types=("bbox", "segm") if _kind == "mask_rcnn" else ("bbox",))
register_architecture("classifier", Classifier, task="classification")


def architecture(name: Any, source: str = "<dict>") -> Architecture:
    """The registered entry of ``model.arch = name``: the exact name, else the one name equal to it but for case.

    Raises:
        ConfigError: one line naming ``source``, ``model.arch``, the closest name and the registered names (a user's
            are registered by the modules of the recipe's ``imports``).
    """
    if isinstance(name, str) and name not in ARCHITECTURES:
        folded = [n for n in ARCHITECTURES if n.lower() == name.lower()]
        name = folded[0] if len(folded) == 1 else name
    return ARCHITECTURES.get(name, source, "model.arch")


def signature_params(targets: typing.Sequence[Callable]) -> dict[str, Any]:
    """Keyword parameters accepted by a chain of callables (each forwards ``**kwargs`` to the next), with their
    annotations (``Any`` where none resolves)."""
    out: dict[str, Any] = {}
    for fn in targets:
        init = fn.__init__ if inspect.isclass(fn) else fn
        try:
            hints = typing.get_type_hints(init.func if isinstance(init, functools.partial) else init)
        except Exception:  # annotations that do not resolve at runtime: accept any value, the constructor judges
            hints = {}
        for name, p in inspect.signature(init).parameters.items():
            if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or name in out:
                continue
            out[name] = hints.get(name, Any)
    return out


def model_params(entry: Architecture) -> dict[str, Any]:
    """The ``model`` keys of ``entry`` (``arch`` aside) and their types, from its builder's signature chain."""
    params = signature_params(entry.signature)
    params.pop("arch", None)  # the registry's key, never an argument
    return params


def builder_name(fn: Callable) -> str:
    """``module.Name`` of a builder or class (``module.fn('arg')`` for a partial), for listings."""
    args = ""
    if isinstance(fn, functools.partial):
        args = "(" + ", ".join(map(repr, fn.args)) + ")"
        fn = fn.func
    module = getattr(fn, "__module__", "") or ""
    name = getattr(fn, "__qualname__", type(fn).__name__)
    package = ".".join(module.split(".")[:2])
    if module.startswith("resdense.") and getattr(sys.modules.get(package), name, None) is fn:
        module = package  # the public path a user types (resdense.heads.UNet), not the defining file
    return f"{module}.{name}{args}"
