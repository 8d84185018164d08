"""What the trainer and the predictor need to know about a task: batching, the loss, evaluation, naming the images
of a batch, and one image's preprocessing and prediction."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from resdense.evaluation import scalar_metrics

__all__ = ["Batch", "Task", "metric_mode", "preset_arguments"]


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
        transforms: the task's transform preset (``data.train_transforms`` / ``data.val_transforms`` are its
            keyword arguments).
    """

    name = "task"
    default_metric = "loss"
    transforms: Callable[..., Any]

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
    def outputs(self, model: nn.Module, loader: DataLoader, device: torch.device,
                autocast: Callable[[], Any] | None = None) -> Iterator[tuple[Batch, Any]]:
        """``(batch, model outputs)`` for each batch of ``loader``, moved to ``device``, the forward pass under
        ``autocast()`` when given."""
        for batch in loader:
            batch = self.to_device(batch, device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model(batch.inputs)
            yield batch, out

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

    # ---- one image, for the predictor ------------------------------------------------------------------------------
    def preprocess(self, rgb: np.ndarray, transforms: dict[str, Any], *, tiled: bool = False) -> Tensor:
        """An RGB ``uint8 [H, W, 3]`` image -> the model's input ``[3, H, W]`` on the CPU: the validation preset with
        ``transforms`` (``data.val_transforms`` and the predictor's ``preprocess``); ``tiled``: windows will cover
        the image at its own resolution."""
        raise NotImplementedError

    def infer(self, predictor: Any, x: Tensor, rgb: np.ndarray) -> dict[str, Any]:
        """The prediction of ``x`` (``rgb`` preprocessed) in ``rgb``'s frame. ``predictor``: the
        :class:`~resdense.inference.Predictor`, whose model, settings and tiled / augmented forward passes
        (``dense_logits``, ``detections``) this uses."""
        raise NotImplementedError

    def preprocessing(self, model: nn.Module, transforms: dict[str, Any], tile: int | None) -> dict[str, Any]:
        """What :meth:`preprocess` does, as plain values (for users outside resdense: a package records it)."""
        raise NotImplementedError

    def picture(self, rgb: np.ndarray, pred: dict[str, Any], class_names: list[str], *,
                score_threshold: float = 0.0) -> np.ndarray:
        """:meth:`infer`'s prediction drawn over (or beside) the image, ``uint8 [H', W', 3]``."""
        raise NotImplementedError


def preset_arguments(preset: Callable[..., Any], transforms: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arguments a transform preset gets (its defaults under ``transforms``) and its normalisation as plain
    values: ``normalize`` (then ``(x - mean) / std``, in ``[0, 1]`` units) and, when on, ``mean`` and ``std``."""
    kw = {k: p.default for k, p in inspect.signature(preset).parameters.items() if p.default is not p.empty}
    kw.update(transforms)
    normalize = bool(kw.get("normalize", True))
    return kw, {"normalize": normalize, **({"mean": list(kw["mean"]), "std": list(kw["std"])} if normalize else {})}


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

