"""Resolve the ``backbone`` argument of a head (a name or a feature extractor) into a feature extractor that
returns the features the head needs. Private plumbing shared by the detectors, the U-Net, the smp encoder and the
classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from resdense.backbones import FeatureExtractor, create_backbone
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
    if not isinstance(backbone, FeatureExtractor):
        raise ConfigError(
            f"{owner}: backbone={type(backbone).__name__} is not a feature extractor; pass a name such as 'resnet50', "
            "a module from resdense.backbones.create_backbone(...) or a subclass of resdense.backbones.FeatureExtractor"
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

    The backbone is widened with :meth:`~resdense.backbones.FeatureExtractor.set_out_features` (a resdense ResNet
    built with fewer ``out_features`` returns more of the stages it built; only its output selection changes, never
    its weights). An extractor that cannot return ``needed`` raises ``ConfigError`` naming ``owner``.
    """
    have = set(backbone.out_features)
    missing = [n for n in needed if n not in have]
    if not missing:
        return
    try:
        backbone.set_out_features(sorted(have | set(needed)))
    except ConfigError as err:
        raise ConfigError(f"{owner}: the backbone returns {sorted(have)} but {list(needed)} are needed (missing "
                          f"{missing}): {err}") from None


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
