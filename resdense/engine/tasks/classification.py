"""Image classification: ``x [N, 3, H, W] -> logits [N, K]``, integer targets ``[N]``; top-1 / top-5 accuracy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from resdense.data import IMAGENET_MEAN, IMAGENET_STD
from resdense.visualize import side_by_side

from ..distributed import sum_floats
from .base import Batch, Task, preset_arguments

__all__ = ["ClassificationTask", "classification_transforms"]


def classification_transforms(train: bool = True, size: int = 224, *, resize: int = 256, hflip: float = 0.5,
                              scale: tuple[float, float] = (0.08, 1.0),
                              mean: tuple[float, float, float] = IMAGENET_MEAN,
                              std: tuple[float, float, float] = IMAGENET_STD) -> Callable:
    """torchvision's ImageNet recipe on PIL images: training ``RandomResizedCrop(size, scale)`` + flip; evaluation
    ``Resize(resize)`` + ``CenterCrop(size)``; then ``[3, size, size]`` float tensors normalised with mean/std."""
    ops = ([T.RandomResizedCrop(size, scale=tuple(scale)), T.RandomHorizontalFlip(hflip)] if train
           else [T.Resize(resize), T.CenterCrop(size)])
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


class ClassificationTask(Task):
    """Args:
        class_names: the K class names (index order of the logits).
        label_smoothing: cross-entropy label smoothing.
    """

    name = "classification"
    default_metric = "top1"
    transforms = staticmethod(classification_transforms)

    def __init__(self, class_names: list[str], label_smoothing: float = 0.0) -> None:
        self.class_names = list(class_names)
        self.label_smoothing = label_smoothing

    def collate(self, items: list[tuple[int, Any]]) -> Batch:
        indices = [i for i, _ in items]
        return Batch(indices, torch.stack([s[0] for _, s in items]),
                     torch.tensor([int(s[1]) for _, s in items], dtype=torch.int64))

    def image_ids(self, batch: Batch, dataset) -> list:
        samples = getattr(dataset, "samples", None)  # torchvision ImageFolder: [(path, class), ...]
        if samples is not None:
            return [str(samples[i][0]).rsplit("/", 1)[-1] for i in batch.indices]
        return super().image_ids(batch, dataset)

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        logits = model(batch.inputs).float()
        return {"loss_ce": F.cross_entropy(logits, batch.targets, label_smoothing=self.label_smoothing)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, autocast=None,
                 **kwargs: Any) -> dict[str, Any]:
        n, top1, top5, loss = 0, 0, 0, 0.0
        for batch, logits in self.outputs(model, loader, device, autocast):
            logits = logits.float()
            loss += float(F.cross_entropy(logits, batch.targets, reduction="sum"))
            k = min(5, logits.shape[1])
            pred = logits.topk(k, dim=1).indices
            hit = pred == batch.targets[:, None]
            top1 += int(hit[:, 0].sum())
            top5 += int(hit.any(dim=1).sum())
            n += len(batch.targets)
        n, top1, top5, loss = sum_floats([n, top1, top5, loss])  # the shards of torch.distributed
        n = max(n, 1)
        return {"top1": top1 / n, "top5": top5 / n, "val_loss": loss / n}

    @torch.no_grad()
    def predict(self, model: nn.Module, images: list[Tensor]) -> list[Tensor]:
        """Class probabilities ``[K]`` per image."""
        return [p for p in model(torch.stack(images)).float().softmax(dim=1).cpu()]

    def preprocess(self, rgb: np.ndarray, transforms: dict[str, Any], *, tiled: bool = False) -> Tensor:
        return classification_transforms(train=False, **transforms)(Image.fromarray(rgb))

    def infer(self, predictor: Any, x: Tensor, rgb: np.ndarray) -> dict[str, Any]:
        """``probs`` (``[K]``; with TTA flips, the mean with the mirrored image's) and ``top`` (the ``top_k`` best
        ``(class name, probability)``)."""
        probs = self.predict(predictor.model, [x])[0]
        if predictor.tta is not None and predictor.tta.flips:
            flipped = self.preprocess(np.ascontiguousarray(rgb[:, ::-1]), predictor.transforms).to(x.device)
            probs = (probs + self.predict(predictor.model, [flipped])[0]) / 2
        values, indices = probs.topk(min(predictor.top_k, len(probs)))
        names = predictor.class_names
        top = [(names[i] if i < len(names) else str(i), float(p))
               for p, i in zip(values.tolist(), indices.tolist(), strict=True)]
        return {"probs": probs, "top": top}

    def preprocessing(self, model: nn.Module, transforms: dict[str, Any], tile: int | None) -> dict[str, Any]:
        kw, norm = preset_arguments(classification_transforms, transforms)
        return {"scale": "1/255 (RGB in [0, 1])", "resize_shorter_side": kw["resize"], "center_crop": kw["size"],
                **norm}

    def picture(self, rgb: np.ndarray, pred: dict[str, Any], class_names: list[str], *,
                score_threshold: float = 0.0) -> np.ndarray:
        """A 224 px wide thumbnail beside the ``top`` classes."""
        thumb = np.asarray(Image.fromarray(rgb).resize((224, max(1, round(224 * rgb.shape[0] / rgb.shape[1])))))
        panel = Image.new("RGB", (220, thumb.shape[0]), (255, 255, 255))
        draw = ImageDraw.Draw(panel)
        for i, (name, p) in enumerate(pred["top"]):
            draw.text((6, 6 + 16 * i), f"{name}: {p:.3f}", fill=(0, 0, 0))
        return side_by_side([thumb, np.asarray(panel)])
