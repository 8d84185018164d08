"""What the trainer needs to know about a task: batching, the loss, evaluation and naming the images of a batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from resdense.evaluation import scalar_metrics

__all__ = ["Batch", "Task", "metric_mode"]


@dataclass
class Batch:
    """One batch: dataset ``indices``, model ``inputs`` and ``targets`` (task-specific structures)."""

    indices: list[int]
    inputs: Any
    targets: Any

    def __len__(self) -> int:
        return len(self.indices)


class Task:
    """Base class of the task adapters (segmentation, detection, classification).

    Attributes:
        name: the task's name.
        default_metric: key of :meth:`evaluate`'s dict that selects the best checkpoint (its direction comes from
            its name: :func:`metric_mode`).
    """

    name = "task"
    default_metric = "loss"

    # ---- batching -------------------------------------------------------------------------------------------------
    def collate(self, items: list[tuple[int, Any]]) -> Batch:
        """``[(index, (input, target)), ...]`` -> :class:`Batch` (default: stack inputs and targets)."""
        indices = [i for i, _ in items]
        inputs = torch.stack([s[0] for _, s in items])
        targets = torch.stack([torch.as_tensor(s[1]) for _, s in items])
        return Batch(indices, inputs, targets)

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        non_blocking = device.type == "cuda"
        return Batch(batch.indices, batch.inputs.to(device, non_blocking=non_blocking),
                     batch.targets.to(device, non_blocking=non_blocking))

    def image_ids(self, batch: Batch, dataset: Dataset) -> list:
        """Names of the batch's images for error messages: file names when the dataset has ``image_paths``."""
        paths = getattr(dataset, "image_paths", None)
        if paths is not None:
            try:
                return [str(getattr(paths[i], "name", paths[i])) for i in batch.indices]
            except (IndexError, TypeError):
                pass
        return list(batch.indices)

    # ---- training -------------------------------------------------------------------------------------------------
    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Loss terms of one batch (summed into the training loss)."""
        raise NotImplementedError

    # ---- evaluation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, **kwargs: Any) -> dict[str, Any]:
        """Metrics over ``loader`` (model in eval mode; the caller restores train mode). A ``report=True`` keyword
        asks for the non-scalar results a report draws from (a task without any ignores it)."""
        raise NotImplementedError

    def predict(self, model: nn.Module, images: list[Tensor]) -> list[Any]:
        """Inference on a list of preprocessed images ``[3, H, W]``."""
        raise NotImplementedError

    def summary(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The scalar metrics worth a CSV column / report line."""
        return scalar_metrics(metrics)


# A metric whose name has one of these words is minimised (mmengine's rule, less_keys = ["loss"], widened to errors).
_LOWER_IS_BETTER = ("loss", "error", "err", "mse", "mae", "rmse", "nll")


def metric_mode(metric: str, mode: str | None = None) -> str:
    """``"max"`` or ``"min"``: whether a higher or a lower ``metric`` is better. ``mode`` (``eval.mode``) wins;
    else a name holding a loss or an error word (``val_loss``, ``top1_err``, ``mae``) is minimised, any other
    (``mIoU``, ``bbox/AP``, ``top1``) maximised."""
    if mode is not None:
        return mode
    words = metric.lower().replace("/", "_").replace("-", "_").split("_")
    return "min" if any(w in _LOWER_IS_BETTER for w in words) or "loss" in metric.lower() else "max"

