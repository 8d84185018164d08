"""Image classification: ``x [N, 3, H, W] -> logits [N, K]``, integer targets ``[N]``; top-1 / top-5 accuracy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..distributed import sum_floats
from .base import Batch, Task

__all__ = ["ClassificationTask"]


class ClassificationTask(Task):
    """Args:
        class_names: the K class names (index order of the logits).
        label_smoothing: cross-entropy label smoothing.
    """

    name = "classification"
    default_metric = "top1"

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
        for batch in loader:
            batch = self.to_device(batch, device)
            if autocast is not None:
                with autocast():
                    logits = model(batch.inputs)
            else:
                logits = model(batch.inputs)
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
