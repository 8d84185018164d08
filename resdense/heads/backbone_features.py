"""Resolve the ``backbone`` argument of a head (a name or a feature extractor) into a feature extractor that
returns the features the head needs. Private plumbing shared by the detectors, the U-Net, the smp encoder and the
classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from resdense.backbones import FeatureExtractor, ResNet, create_backbone
from resdense.errors import ConfigError

__all__ = ["resolve_backbone", "ensure_features", "backbone_of"]


def resolve_backbone(
    backbone: str | FeatureExtractor,
    needed: Sequence[str],
    owner: str,
    weights_backbone: Any = None,
    **create_kwargs: Any,
) -> FeatureExtractor:
    """Return a feature extractor whose output dict contains ``needed``.

    Args:
        backbone: a name of :func:`resdense.backbones.list_backbones` (built here with ``out_features=needed``,
            ``weights=weights_backbone`` and ``create_kwargs``) or an instance, which is used as it is (not copied).
        needed: feature names the head reads, e.g. ``("c2", "c3", "c4", "c5")``.
        owner: the head's name, used in error messages.
    """
    if isinstance(backbone, str):
        return create_backbone(backbone, weights=weights_backbone, out_features=tuple(needed), **create_kwargs)
    if not isinstance(backbone, nn.Module) or not hasattr(backbone, "feature_info"):
        raise ConfigError(
            f"{owner}: backbone={type(backbone).__name__} is not a feature extractor; pass a name such as 'resnet50' "
            "or a module from resdense.backbones.create_backbone(...)"
        )
    if weights_backbone is not None:
        raise ConfigError(
            f"{owner}: weights_backbone={weights_backbone!r} applies only to a backbone name; load weights into the "
            "instance with create_backbone(name, weights=...)"
        )
    ensure_features(backbone, needed, owner)
    return backbone


def ensure_features(backbone: FeatureExtractor, needed: Sequence[str], owner: str) -> None:
    """Make ``backbone`` return ``needed`` as well as its own ``out_features``, or refuse.

    A resdense :class:`ResNet` built with fewer ``out_features`` (``create_backbone`` returns c2..c5 by default,
    while a U-Net also needs c1) is widened in place when the stages are built: only its output selection changes,
    never its weights. Any other extractor must already return ``needed``.
    """
    have = set(backbone.out_features)
    missing = [n for n in needed if n not in have]
    if not missing:
        return
    if not isinstance(backbone, ResNet):
        raise ConfigError(f"{owner}: the backbone returns {sorted(have)} but {list(needed)} are needed (missing {missing})")
    built = {"c1"} | {name for name, _ in backbone.stages()}
    unbuilt = [n for n in missing if n not in built]
    if unbuilt:
        raise ConfigError(
            f"{owner}: the backbone was built without the stages of {unbuilt}; create it with "
            f"out_features={tuple(needed)}"
        )
    backbone.set_out_features(sorted(have | set(needed)))


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone inside a head model, the part that ImageNet weights initialise.

    ``UNet`` and ``Classifier``: ``model.backbone``; a torchvision detector from :func:`build_detector` (or any with
    a ``BackboneWithFPN``): ``model.backbone.body``, not the FPN, which is new; an smp model: ``model.encoder``.

    Raises:
        ConfigError: the model has none of these.
    """
    backbone = getattr(model, "backbone", None)
    body = getattr(backbone, "body", None)
    for candidate in (body, backbone, getattr(model, "encoder", None)):
        if isinstance(candidate, nn.Module):
            return candidate
    raise ConfigError(f"{type(model).__name__} has no backbone (looked for .backbone.body, .backbone and .encoder)")
