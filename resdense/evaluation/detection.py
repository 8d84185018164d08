"""Collecting a torchvision-style detector's outputs over a dataset and scoring them with :func:`coco_map`.

>>> evaluator = DetectionEvaluator(ds.coco, ds.label_to_cat_id, iou_types=("bbox", "segm"))   # doctest: +SKIP
>>> for images, targets in loader:                                                          # doctest: +SKIP
...     evaluator.update(model(images), targets)
>>> evaluator.gather().compute()["bbox/AP"]                                                 # doctest: +SKIP

Only the target keys of the data contract are read (``image_id``, ``orig_size``, ``size``); nothing of the data
package is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from resdense.coco.results import detection_results
from resdense.coco.rle import encode_masks
from resdense.errors import ConfigError, EvaluationError

from .coco import BACKENDS, CocoEvaluation, check_max_dets, coco_evaluate

__all__ = ["DetectionEvaluator", "flat_stats"]

logger = logging.getLogger(__name__)

_IOU_TYPES = ("bbox", "segm")


class DetectionEvaluator:
    """Accumulates COCO-format results per image, then computes COCO AP / AR for each IoU type.

    Args:
        coco_gt: the ground truth (a pycocotools ``COCO``, a COCO dict or a path), e.g. ``dataset.coco``.
        label_to_cat_id: contiguous model label (1..K) -> COCO category id, e.g. ``dataset.label_to_cat_id``.
        iou_types: any of ``"bbox"``, ``"segm"`` (segm needs ``masks`` in the outputs).
        backend, max_dets, classwise, renumber_ann_ids: passed to :func:`~resdense.evaluation.coco_map`.
        mask_threshold: a mask pixel belongs to the object when its probability is > this (torchvision's 0.5).

    The state is a plain dict ``image_id -> {"bbox": [...], "segm": [...]}`` of JSON-ready result dicts, so it
    pickles, merges (:meth:`merge`) and gathers across processes (:meth:`gather`). Only the images seen are
    evaluated, so a partial pass over a dataset is scored on those images, not penalised for the others.
    """

    def __init__(
        self,
        coco_gt: Any,
        label_to_cat_id: Mapping[int, int],
        iou_types: Sequence[str] = ("bbox",),
        *,
        backend: str = "faster",
        max_dets: Sequence[int] = (1, 10, 100),
        classwise: bool = False,
        mask_threshold: float = 0.5,
        renumber_ann_ids: bool = False,
    ) -> None:
        iou_types = tuple(iou_types)
        if not iou_types or len(set(iou_types)) != len(iou_types) or not set(iou_types) <= set(_IOU_TYPES):
            raise ConfigError(f"DetectionEvaluator: iou_types must be distinct values of {_IOU_TYPES}, got {iou_types}")
        if backend not in BACKENDS:
            raise ConfigError(f"DetectionEvaluator: backend must be one of {BACKENDS}, got {backend!r}")
        check_max_dets(max_dets)
        self.coco_gt = coco_gt
        self.label_to_cat_id = {int(k): v for k, v in label_to_cat_id.items()}
        self.iou_types = iou_types
        self.backend = backend
        self.max_dets = tuple(max_dets)
        self.classwise = classwise
        self.mask_threshold = float(mask_threshold)
        self.renumber_ann_ids = renumber_ann_ids
        self._results: dict[int, dict[str, list[dict]]] = {}
        self._warned_duplicate = False

    def reset(self) -> None:
        """Forget all results."""
        self._results = {}

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images seen so far, sorted."""
        return sorted(self._results)

    def results(self, iou_type: str = "bbox") -> list[dict]:
        """All results of one IoU type in COCO results format (``json.dump`` them for the official tools)."""
        return [r for image_id in self.image_ids for r in self._results[image_id].get(iou_type, [])]

    @torch.no_grad()
    def update(self, outputs: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add a batch.

        Args:
            outputs: one dict per image from a torchvision detector in eval mode: ``boxes`` [N, 4] xyxy in the
                ``size`` frame, ``labels`` [N] (1..K), ``scores`` [N], and for segm ``masks`` [N, 1, H, W]
                probabilities pasted into that frame.
            targets: the dataset's targets: ``image_id`` (COCO image id), ``orig_size`` and ``size`` ([2] = H, W
                of the image on disk and of the image given to the model; ``size`` defaults to ``orig_size``).
        """
        if len(outputs) != len(targets):
            raise EvaluationError(f"DetectionEvaluator.update: {len(outputs)} outputs for {len(targets)} targets")
        for output, target in zip(outputs, targets, strict=True):
            image_id = _as_int(target, "image_id")
            orig_h, orig_w = _size(target, "orig_size")
            h, w = _size(target, "size") if "size" in target else (orig_h, orig_w)
            per_type = self._convert(output, image_id, (orig_h, orig_w), (h, w))
            if image_id in self._results:
                self._note_duplicate(image_id)
                continue
            self._results[image_id] = per_type

    def _convert(
        self, output: Mapping[str, Tensor], image_id: int, orig: tuple[int, int], size: tuple[int, int]
    ) -> dict[str, list[dict]]:
        for key in ("boxes", "labels", "scores") + (("masks",) if "segm" in self.iou_types else ()):
            if key not in output:
                raise EvaluationError(f"DetectionEvaluator.update: output of image {image_id} has no {key!r}")
        boxes = output["boxes"].detach().to("cpu", torch.float64).reshape(-1, 4)
        scores = output["scores"].detach().to("cpu", torch.float64).reshape(-1).tolist()
        labels = output["labels"].detach().to("cpu").reshape(-1).tolist()
        if not len(labels) == len(scores) == len(boxes):
            raise EvaluationError(
                f"DetectionEvaluator.update: image {image_id}: {len(boxes)} boxes, {len(labels)} labels, "
                f"{len(scores)} scores"
            )
        unknown = sorted(set(labels) - set(self.label_to_cat_id))
        if unknown:
            raise EvaluationError(
                f"DetectionEvaluator.update: image {image_id}: labels {unknown[:10]} have no category id in "
                f"label_to_cat_id (known labels {sorted(self.label_to_cat_id)[:10]}...)"
            )
        cat_ids = [self.label_to_cat_id[label] for label in labels]
        # Boxes come in the frame the model saw (``size``); COCO wants the file's pixels, as [x, y, w, h].
        sy, sx = orig[0] / size[0], orig[1] / size[1]
        boxes = boxes * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
        out: dict[str, list[dict]] = {}
        if "bbox" in self.iou_types:
            out["bbox"] = detection_results(image_id, cat_ids, scores, boxes=boxes.numpy())
        if "segm" in self.iou_types:
            # no bbox in segm results: pycocotools would take the box's area as the instance's size
            rles = self._encode_masks(output["masks"], image_id, orig, size, len(labels))
            out["segm"] = detection_results(image_id, cat_ids, scores, segmentations=rles)
        return out

    def _encode_masks(
        self, masks: Tensor, image_id: int, orig: tuple[int, int], size: tuple[int, int], n: int
    ) -> list[dict]:
        masks = masks.detach()
        if masks.dim() == 3:
            masks = masks[:, None]
        if masks.dim() != 4 or masks.shape[0] != n or masks.shape[1] != 1 or tuple(masks.shape[2:]) != size:
            raise EvaluationError(
                f"DetectionEvaluator.update: image {image_id}: masks must be [{n}, 1, {size[0]}, {size[1]}] "
                f"(pasted into the 'size' frame), got {list(masks.shape)}"
            )
        if n == 0:
            return []
        masks = masks.float()
        if size != orig:
            # Resize the probabilities, then threshold (as detectron2 / mmdet do), so edges stay sub-pixel exact.
            masks = F.interpolate(masks, size=orig, mode="bilinear", align_corners=False)
        return encode_masks((masks[:, 0] > self.mask_threshold).to("cpu", torch.uint8).numpy())

    def _note_duplicate(self, image_id: int) -> None:
        # DistributedSampler pads the last batch by repeating images; counting them twice would add false positives.
        if not self._warned_duplicate:
            logger.warning("DetectionEvaluator: image id %s seen again; keeping its first results only", image_id)
            self._warned_duplicate = True

    def merge(self, other: DetectionEvaluator | Mapping[int, dict]) -> DetectionEvaluator:
        """Add another evaluator's results (or its ``state_dict()``); images already present keep their first
        results. Returns self."""
        state = other.state_dict() if isinstance(other, DetectionEvaluator) else other
        for image_id, per_type in state.items():
            if image_id in self._results:
                self._note_duplicate(image_id)
            else:
                self._results[int(image_id)] = per_type
        return self

    def state_dict(self) -> dict[int, dict[str, list[dict]]]:
        """The results per image (plain Python objects, picklable and JSON-ready)."""
        return self._results

    def gather(self) -> DetectionEvaluator:
        """Collect every process's results into this one (``torch.distributed.all_gather_object``); a no-op when
        not distributed. Call it on every rank before :meth:`compute`. Returns self."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, self._results)
            mine, self._results = self._results, {}
            for rank, state in enumerate(states):
                self.merge(mine if rank == dist.get_rank() else state)
        return self

    def evaluate(self) -> dict[str, CocoEvaluation]:
        """One :class:`~resdense.evaluation.CocoEvaluation` per IoU type, over the images seen: the statistics and
        the engine's arrays (per-class AP, precision-recall curves)."""
        if not self._results:
            raise EvaluationError("DetectionEvaluator: no images seen; call update() first")
        return {
            iou_type: coco_evaluate(
                self.coco_gt,
                self.results(iou_type),
                iou_type,
                self.backend,
                self.max_dets,
                self.classwise,
                img_ids=self.image_ids,
                renumber_ann_ids=self.renumber_ann_ids,
            )
            for iou_type in self.iou_types
        }

    def compute(self) -> dict[str, float]:
        """COCO statistics of the images seen, keyed ``"<iou_type>/<stat>"`` (e.g. ``"bbox/AP50"``)."""
        return flat_stats(self.evaluate())

    def __len__(self) -> int:
        return len(self._results)


def flat_stats(evaluations: Mapping[str, CocoEvaluation]) -> dict[str, float]:
    """The statistics of :meth:`DetectionEvaluator.evaluate`'s result in one dict, keyed ``"<iou_type>/<stat>"``."""
    return {f"{iou_type}/{k}": v for iou_type, ev in evaluations.items() for k, v in ev.stats.items()}


def _as_int(target: Mapping[str, Any], key: str) -> int:
    if key not in target:
        raise EvaluationError(f"DetectionEvaluator.update: target has no {key!r} (keys: {sorted(target)})")
    value = target[key]
    try:
        return int(value.item() if isinstance(value, Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        raise EvaluationError(f"DetectionEvaluator.update: target {key!r} must be an int, got {value!r}") from None


def _size(target: Mapping[str, Any], key: str) -> tuple[int, int]:
    if key not in target:
        raise EvaluationError(f"DetectionEvaluator.update: target has no {key!r} (keys: {sorted(target)})")
    value = target[key]
    values = value.tolist() if isinstance(value, Tensor) else list(value) if isinstance(value, Iterable) else None
    if values is None or len(values) != 2 or min(values) <= 0:
        raise EvaluationError(f"DetectionEvaluator.update: target {key!r} must be (H, W) > 0, got {value!r}")
    return int(values[0]), int(values[1])
