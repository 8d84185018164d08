"""Semantic segmentation: models ``x [N, 3, H, W] -> logits [N, K, H, W]``, targets ``int64 [N, H, W]``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from resdense.backbones import pad_to_multiple
from resdense.data import segmentation_transforms
from resdense.errors import ConfigError
from resdense.evaluation import SegmentationMetrics
from resdense.visualize import overlay_mask

from ..distributed import sum_floats
from .base import Batch, Task, preset_arguments

__all__ = ["SegmentationTask", "model_divisor"]


class SegmentationTask(Task):
    """Cross-entropy, focal and/or Dice loss; mIoU (and the rest of :class:`~resdense.evaluation.SegmentationMetrics`).

    Args:
        num_classes: K (logit channels).
        ignore_index: target value left out of losses and metrics.
        loss: ``"ce"``, ``"dice"``, ``"ce+dice"``, ``"focal"``, ``"focal+dice"``, ``"lovasz"`` or ``"ce+lovasz"``:
            torch's ``cross_entropy``, smp's multiclass ``DiceLoss`` and ``FocalLoss`` (per class against the rest,
            summed over classes) and ``LovaszLoss`` (the Lovasz-softmax surrogate of the IoU, Berman et al. 2018,
            computed per image), each of which leaves out the ``ignore_index`` pixels and averages over the others.
            Each term is a loss entry (``loss_ce``, ``loss_focal``, ``loss_dice``, ``loss_lovasz``), summed by the
            trainer.
        class_weights: per-class cross-entropy weights ``[K]`` (``None``: uniform); they weight the ``ce`` term only.
        focal_gamma: focusing exponent of the focal loss.
        class_names: names for tables and legends.

    Raises:
        ConfigError: ``class_weights`` without ``K`` values, or with a loss that has no cross-entropy term.
    """

    name = "segmentation"
    default_metric = "mIoU"
    transforms = staticmethod(segmentation_transforms)

    def __init__(self, num_classes: int, ignore_index: int = 255, loss: str = "ce",
                 class_weights: list[float] | None = None, class_names: list[str] | None = None,
                 focal_gamma: float = 2.0) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.loss_name = loss
        self.terms = loss.split("+")
        if class_weights is not None:
            _check_class_weights(list(class_weights), num_classes, loss)
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self._dice = self._focal = self._lovasz = None
        if "dice" in self.terms:
            from segmentation_models_pytorch.losses import DiceLoss

            self._dice = DiceLoss("multiclass", ignore_index=ignore_index)
        if "focal" in self.terms:
            from segmentation_models_pytorch.losses import FocalLoss

            self._focal = FocalLoss("multiclass", gamma=focal_gamma, ignore_index=ignore_index)
        if "lovasz" in self.terms:
            from segmentation_models_pytorch.losses import LovaszLoss

            self._lovasz = LovaszLoss("multiclass", per_image=True, ignore_index=ignore_index)

    def collate(self, items: list[tuple[int, Any]]) -> Batch:
        indices = [i for i, _ in items]
        images = torch.stack([s[0] for _, s in items])
        masks = torch.stack([torch.as_tensor(s[1], dtype=torch.int64) for _, s in items])
        return Batch(indices, images, masks)

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        logits = model(batch.inputs)
        target = batch.targets
        out: dict[str, Tensor] = {}
        # Losses in float32 even under autocast: log-softmax over low-precision logits loses the small classes.
        logits = logits.float()
        if "ce" in self.terms:
            weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
            out["loss_ce"] = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index)
        if self._focal is not None:
            out["loss_focal"] = self._focal(logits, target)
        if self._dice is not None:
            out["loss_dice"] = self._dice(logits, target)
        if self._lovasz is not None:
            out["loss_lovasz"] = self._lovasz(logits, target)
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, autocast=None,
                 report: bool = False, **kwargs: Any) -> dict[str, Any]:
        """:meth:`SegmentationMetrics.compute`'s metrics, ``val_loss``, ``table`` and ``IoU/<class>``; with ``report``
        also ``confusion_matrix`` (int64 [K, K], rows ground truth, columns prediction; summed over processes)."""
        metrics = SegmentationMetrics(self.num_classes, ignore_index=self.ignore_index, class_names=self.class_names)
        total, count = 0.0, 0
        for batch, logits in self.outputs(model, loader, device, autocast):
            logits = logits.float()
            loss = F.cross_entropy(logits, batch.targets, ignore_index=self.ignore_index, reduction="sum")
            valid = int((batch.targets != self.ignore_index).sum())
            total, count = total + float(loss), count + valid
            metrics.update(logits, batch.targets)
        # the shards of torch.distributed: confusion matrices and loss sums add up exactly (no-ops in one process)
        metrics.confusion_matrix = metrics.confusion_matrix.to(device)  # NCCL wants it on the GPU, even if unused
        metrics.gather()
        total, count = sum_floats([total, count])
        result = metrics.compute()
        result["val_loss"] = total / max(count, 1)
        result["table"] = metrics.format_table(result)
        for i, name in enumerate(self.class_names):
            result[f"IoU/{name}"] = float(result["IoU"][i])
        if report:
            result["confusion_matrix"] = metrics.confusion_matrix.cpu().clone()
        return result

    def summary(self, metrics: dict[str, Any]) -> dict[str, float]:
        keys = ("mIoU", "mDice", "pixel_accuracy", "mean_accuracy", "fwIoU", "val_loss")
        out = {k: float(metrics[k]) for k in keys if k in metrics}
        out.update({k: float(v) for k, v in metrics.items() if k.startswith("IoU/")})
        return out

    @torch.no_grad()
    def predict(self, model: nn.Module, images: list[Tensor]) -> list[Tensor]:
        """Class maps ``int64 [H, W]`` for images ``[3, H, W]`` (normalised as in training; any size: padded to the
        model's divisor and cropped back)."""
        divisor = model_divisor(model)
        out = []
        for img in images:
            h, w = img.shape[-2:]
            out.append(model(pad_to_multiple(img[None], divisor)[0])[0, :, :h, :w].argmax(0).cpu())
        return out

    def preprocess(self, rgb: np.ndarray, transforms: dict[str, Any], *, tiled: bool = False) -> Tensor:
        kwargs = {k: v for k, v in transforms.items() if k != "train"}
        kwargs["pad_divisor"] = 1  # the windows are padded to the model's divisor and cropped back
        if tiled:
            kwargs["size"] = None  # tiles see the image at its own resolution
        return segmentation_transforms(train=False, **kwargs)(rgb, np.zeros(rgb.shape[:2], np.uint8))[0]

    def infer(self, predictor: Any, x: Tensor, rgb: np.ndarray) -> dict[str, Any]:
        """``mask`` (``int64 [H, W]``) and ``logits`` (``float32 [K, H, W]``) in ``rgb``'s frame."""
        logits = predictor.dense_logits(x)
        h, w = rgb.shape[:2]
        if tuple(logits.shape[-2:]) != (h, w):  # the recipe resized the image: logits back to its frame
            logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return {"mask": logits.argmax(0).cpu(), "logits": logits.cpu()}

    def preprocessing(self, model: nn.Module, transforms: dict[str, Any], tile: int | None) -> dict[str, Any]:
        kw, norm = preset_arguments(segmentation_transforms, transforms)
        return {"scale": "1/255 (RGB in [0, 1])", "resize_longer_side": None if tile is not None else kw["size"],
                **norm, "pad_to_multiple_of": model_divisor(model), "tile": tile}

    def picture(self, rgb: np.ndarray, pred: dict[str, Any], class_names: list[str], *,
                score_threshold: float = 0.0) -> np.ndarray:
        mask = pred["mask"].numpy()
        return overlay_mask(rgb, mask, class_names or [str(i) for i in range(int(mask.max()) + 1)])


def _check_class_weights(weights: list[float], num_classes: int, loss: str) -> None:
    if "ce" not in loss.split("+"):
        raise ConfigError(f"train.class_weights = {weights!r} weights the cross-entropy term and train.loss = "
                          f"{loss!r} has none (smp's Dice and focal losses take no class weights); use 'ce' or 'ce+dice'")
    if len(weights) != num_classes:
        raise ConfigError(f"train.class_weights = {weights!r} has {len(weights)} values but the model has "
                          f"{num_classes} classes")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise ConfigError(f"train.class_weights = {weights!r} must be finite, non-negative and not all zero")


def model_divisor(model: nn.Module) -> int:
    """The side multiple a model needs (its ``size_divisibility`` / ``output_stride``, or its encoder's; else 32)."""
    for attr in ("size_divisibility", "output_stride"):
        v = getattr(model, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    encoder = getattr(model, "encoder", None) or getattr(model, "backbone", None)
    v = getattr(encoder, "size_divisibility", None) or getattr(encoder, "output_stride", None)
    return v if isinstance(v, int) and v > 0 else 32
