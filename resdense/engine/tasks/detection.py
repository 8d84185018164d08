"""Object detection with torchvision's detectors: lists of images ``[3, H, W]`` in [0, 1] and target dicts.

The model computes its own losses in train mode; evaluation runs it in eval mode and scores the outputs with
:class:`~resdense.evaluation.DetectionEvaluator` against the dataset's COCO ground truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from resdense.data import detection_transforms, to_image_tensor
from resdense.evaluation import DetectionEvaluator, scalar_metrics
from resdense.evaluation.detection import flat_stats
from resdense.visualize import draw_boxes

from ..distributed import on_main
from .base import Batch, Task

__all__ = ["DetectionTask"]


class DetectionTask(Task):
    """Args:
        class_names: the K class names (label k <-> ``class_names[k - 1]``).
        iou_types: ``("bbox",)`` or ``("bbox", "segm")`` for Mask R-CNN.
        backend: COCO evaluation backend (``faster`` or ``pycocotools``).
        max_dets: COCO's detections per image (see :class:`~resdense.evaluation.DetectionEvaluator`).
    """

    name = "detection"
    default_metric = "bbox/AP"
    transforms = staticmethod(detection_transforms)

    def __init__(self, class_names: list[str], iou_types: tuple[str, ...] = ("bbox",), backend: str = "faster",
                 max_dets: tuple[int, ...] = (1, 10, 100)) -> None:
        self.class_names = list(class_names)
        self.iou_types = tuple(iou_types)
        self.backend = backend
        self.max_dets = tuple(max_dets)

    def collate(self, items: list[tuple[int, Any]]) -> Batch:
        return Batch([i for i, _ in items], [s[0] for _, s in items], [s[1] for _, s in items])

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        if device.type == "cpu":
            return batch
        images = [img.to(device, non_blocking=True) for img in batch.inputs]
        targets = [{k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
                   for t in batch.targets]
        return Batch(batch.indices, images, targets)

    def image_ids(self, batch: Batch, dataset: Dataset) -> list:
        return [int(t["image_id"]) if "image_id" in t else i for i, t in zip(batch.indices, batch.targets, strict=True)]

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        return dict(model(batch.inputs, batch.targets))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device, autocast=None,
                 report: bool = False, **kwargs: Any) -> dict[str, Any]:
        """``"<iou_type>/<stat>"`` COCO statistics; with ``report`` also ``"coco"``: ``{iou_type: CocoEvaluation}``
        (the engine's arrays, for per-class AP and precision-recall curves)."""
        dataset = _base_dataset(loader.dataset)
        evaluator = DetectionEvaluator(dataset.coco, dataset.label_to_cat_id, iou_types=self.iou_types,
                                       backend=self.backend, max_dets=self.max_dets)
        for batch, outputs in self.outputs(model, loader, device, autocast):
            outputs = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in outputs]
            targets = [{k: v.cpu() if isinstance(v, Tensor) else v for k, v in t.items()} for t in batch.targets]
            evaluator.update(outputs, targets)
        # torch.distributed: every rank's images to every rank, scored once on rank 0 (no-ops in one process); the
        # report's arrays come from that same scoring of the whole split
        evaluator.gather()
        evaluations = on_main(evaluator.evaluate)
        result: dict[str, Any] = flat_stats(evaluations)
        if report:
            result["coco"] = evaluations
        return result

    def summary(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {k: v for k, v in scalar_metrics(metrics).items() if "/" in k}

    @torch.no_grad()
    def predict(self, model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """torchvision outputs (``boxes`` xyxy in the input's pixels, ``labels``, ``scores``, ``masks``)."""
        return [{k: v.cpu() for k, v in o.items()} for o in model(images)]

    def preprocess(self, rgb: np.ndarray, transforms: dict[str, Any], *, tiled: bool = False) -> Tensor:
        return to_image_tensor(rgb)  # the detector resizes and normalises inside

    def infer(self, predictor: Any, x: Tensor, rgb: np.ndarray) -> dict[str, Any]:
        """``boxes`` (xyxy, ``rgb``'s pixels), ``labels``, ``scores`` and a Mask R-CNN's ``masks`` or ``rles``."""
        return predictor.detections(x)

    def preprocessing(self, model: nn.Module, transforms: dict[str, Any], tile: int | None) -> dict[str, Any]:
        t = getattr(model, "transform", None)  # torchvision's GeneralizedRCNNTransform
        inside = {} if t is None else {"min_size": list(t.min_size), "max_size": t.max_size,
                                       "mean": list(t.image_mean), "std": list(t.image_std),
                                       "size_divisible": t.size_divisible}
        return {"scale": "1/255 (RGB in [0, 1]); the model resizes and normalises", **inside}

    def picture(self, rgb: np.ndarray, pred: dict[str, Any], class_names: list[str], *,
                score_threshold: float = 0.0) -> np.ndarray:
        return draw_boxes(rgb, pred["boxes"], pred["labels"], pred["scores"], class_names,
                          score_threshold=score_threshold, masks=pred.get("rles", pred.get("masks")))


def _base_dataset(dataset: Dataset) -> Dataset:
    while not hasattr(dataset, "coco") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset
