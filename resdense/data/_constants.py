"""Normalisation statistics: the backbones' ImageNet mean/std, re-exported so data code has one import."""

from __future__ import annotations

from resdense.backbones import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]
