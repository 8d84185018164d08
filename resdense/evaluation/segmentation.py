"""Semantic segmentation metrics from one confusion matrix: IoU, Dice, accuracies, with a declared convention.

>>> m = SegmentationMetrics(num_classes=11, ignore_index=11)
>>> m.update(logits, masks)            # logits [N, 11, H, W] or label maps [N, H, W]      # doctest: +SKIP
>>> m.compute()["mIoU"]                                                                   # doctest: +SKIP

Definitions, from the confusion matrix ``cm[gt, pred]`` over all non-ignored pixels seen so far (dataset-level, not
a mean of per-image scores): ``IoU_c = tp / (tp + fp + fn)``, ``Dice_c = 2 tp / (2 tp + fp + fn)`` (= F1),
``Acc_c = tp / (tp + fn)`` (recall), ``pixel_accuracy = sum(tp) / pixels``, ``mean_accuracy`` = mean of ``Acc_c``
over classes present in the ground truth, ``fwIoU = sum_c (gt pixels of c / pixels) * IoU_c``.

Which classes enter the means (``convention``):

* ``"mmseg"`` (default; also torchmetrics' ``average="macro"``): a class absent from both ground truth and
  predictions is NaN and left out of ``mIoU`` / ``mDice``; a class predicted but absent from the ground truth
  has IoU = Dice = 0 and counts.
* ``"detectron2"`` (``SemSegEvaluator``): only classes present in the ground truth count; the others are NaN.

A class equal to ``ignore_index`` (when it lies in 0..C-1) is NaN and excluded under both conventions, as in
torchmetrics' macro average. Per-class values differ from torchmetrics' ``average=None`` only for classes that
are excluded here: torchmetrics reports ``zero_division`` (0.0) for them, this class reports NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from resdense.errors import ConfigError, EvaluationError

__all__ = ["SegmentationMetrics"]

_CONVENTIONS = ("mmseg", "detectron2")


class SegmentationMetrics:
    """Accumulates a confusion matrix over batches and derives IoU / Dice / accuracy from it.

    Args:
        num_classes: number of classes C (>= 2; a binary task is C = 2 with 1-channel logits).
        ignore_index: target value whose pixels are skipped (predictions there do not count); None for none.
        convention: ``"mmseg"`` or ``"detectron2"``: which classes enter the means (see the module docstring).
        class_names: names for :meth:`format_table` (length C); default ``"0" .. "C-1"``.

    The state is a single int64 tensor ``confusion_matrix`` [C, C] (rows ground truth, columns prediction) on the
    device of the first batch, so :meth:`merge` and :meth:`gather` (all-reduce) combine processes exactly.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        *,
        convention: str = "mmseg",
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(
                f"SegmentationMetrics: num_classes must be an int >= 2, got {num_classes!r} "
                "(a binary task is num_classes=2, with 1-channel logits thresholded at 0)"
            )
        if convention not in _CONVENTIONS:
            raise ConfigError(f"SegmentationMetrics: convention must be one of {_CONVENTIONS}, got {convention!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(
                f"SegmentationMetrics: {len(class_names)} class_names for num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.convention = convention
        self.class_names = [str(n) for n in class_names] if class_names is not None else None
        self.confusion_matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything seen so far (keeps the device)."""
        self.confusion_matrix = torch.zeros_like(self.confusion_matrix)

    @torch.no_grad()
    def update(self, preds_or_logits: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            preds_or_logits: logits / probabilities [N, C, H, W] (argmax over C; with C = 1 and num_classes = 2,
                class 1 where the logit is > 0) or an integer label map [N, H, W] with values in 0..C-1.
                A single image may drop the N dimension.
            target: integer ground truth [N, H, W] with values in 0..C-1 or ``ignore_index``.
        """
        preds, target = self._labels(preds_or_logits, target)
        if target.numel() == 0:
            return
        c = self.num_classes
        t = target.reshape(-1)
        t = t if t.dtype == torch.int64 else t.long()
        ignore_row = self.ignore_index
        if ignore_row is not None and ignore_row < c:
            # A negative or in-range ignore value is moved to row C, just past the matrix.
            t = torch.where(t == ignore_row, c, t)
            ignore_row = c
        # One bincount over gt * C + pred: bins [0, C*C) are the matrix, bins of the ignore row are dropped, any
        # other bin means a target value outside 0..C-1 (reported, never silently folded into another class).
        try:
            counts = torch.bincount(t * c + preds.reshape(-1), minlength=c * c)
        except RuntimeError:  # negative values
            self._raise_bad_target(target)
        outside = int(counts[c * c :].sum())
        if ignore_row is not None and outside:
            outside -= int(counts[ignore_row * c : ignore_row * c + c].sum())
        if outside:
            self._raise_bad_target(target)
        cm = counts[: c * c].reshape(c, c)
        if self.confusion_matrix.device != cm.device and not self.confusion_matrix.any():
            self.confusion_matrix = self.confusion_matrix.to(cm.device)  # follow the data's device
        self.confusion_matrix += cm.to(self.confusion_matrix.device)

    def _labels(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Validate shapes and turn logits into an int64 label map with the target's shape."""
        if not isinstance(preds, Tensor) or not isinstance(target, Tensor):
            raise EvaluationError(
                f"SegmentationMetrics.update: expected tensors, got {type(preds).__name__} and {type(target).__name__}"
            )
        if target.is_floating_point() or target.is_complex():
            raise EvaluationError(f"SegmentationMetrics.update: target must be an integer tensor, got {target.dtype}")
        if preds.device != target.device:
            raise EvaluationError(
                f"SegmentationMetrics.update: preds on {preds.device} but target on {target.device}"
            )
        if target.dim() == 2:  # a single image
            target, preds = target[None], preds[None]
        if target.dim() != 3:
            raise EvaluationError(f"SegmentationMetrics.update: target must be [N, H, W], got {list(target.shape)}")
        shapes = f"preds {list(preds.shape)} vs target {list(target.shape)}"
        if preds.dim() == 4:
            if not preds.is_floating_point():
                raise EvaluationError(f"SegmentationMetrics.update: [N, C, H, W] input must be float logits ({shapes})")
            if preds.shape[0] != target.shape[0] or preds.shape[2:] != target.shape[1:]:
                raise EvaluationError(f"SegmentationMetrics.update: shapes differ: {shapes}")
            if preds.shape[1] == 1 and self.num_classes == 2:
                return (preds[:, 0] > 0).long(), target
            if preds.shape[1] != self.num_classes:
                raise EvaluationError(
                    f"SegmentationMetrics.update: logits have {preds.shape[1]} channels, num_classes is "
                    f"{self.num_classes} ({shapes})"
                )
            # max(1).indices picks the same (first) maximum as argmax(1) but is ~2.5x faster on CPU (torch 2.x).
            return preds.max(1).indices, target
        if preds.shape != target.shape:
            raise EvaluationError(f"SegmentationMetrics.update: shapes differ: {shapes}")
        if preds.is_floating_point():
            raise EvaluationError(
                "SegmentationMetrics.update: a float tensor of the target's shape is ambiguous; pass logits "
                f"[N, C, H, W] or an integer label map ({shapes}, dtype {preds.dtype})"
            )
        preds = preds if preds.dtype == torch.int64 else preds.long()
        if preds.numel():
            lo, hi = torch.aminmax(preds)
            if int(lo) < 0 or int(hi) >= self.num_classes:
                bad = int(lo) if int(lo) < 0 else int(hi)
                raise EvaluationError(
                    f"SegmentationMetrics.update: predicted label {bad} outside 0..{self.num_classes - 1}"
                )
        return preds, target

    def _raise_bad_target(self, target: Tensor) -> None:
        t = target.reshape(-1)
        bad = (t < 0) | (t >= self.num_classes)
        if self.ignore_index is not None:
            bad &= t != self.ignore_index
        values = torch.unique(t[bad])[:10].tolist()
        raise EvaluationError(
            f"SegmentationMetrics.update: target values {values} are neither a class in 0..{self.num_classes - 1} "
            f"nor ignore_index={self.ignore_index}"
        )

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """Add ``other``'s confusion matrix into this one (e.g. from another process); returns self."""
        if not isinstance(other, SegmentationMetrics):
            raise EvaluationError(f"SegmentationMetrics.merge: expected SegmentationMetrics, got {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise EvaluationError(
                f"SegmentationMetrics.merge: num_classes/ignore_index {other.num_classes}/{other.ignore_index} "
                f"!= {self.num_classes}/{self.ignore_index}"
            )
        self.confusion_matrix += other.confusion_matrix.to(self.confusion_matrix.device)
        return self

    def gather(self) -> SegmentationMetrics:
        """Sum the confusion matrices of all processes (``torch.distributed.all_reduce``); a no-op when not
        distributed. Call it on every rank before :meth:`compute`. Returns self."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.confusion_matrix)
        return self

    def compute(self) -> dict[str, Tensor | float]:
        """Metrics of everything seen so far.

        Returns:
            ``IoU``, ``Dice``, ``Acc``: float64 tensors [C] (NaN for classes excluded by the convention);
            ``mIoU``, ``mDice``, ``mean_accuracy``, ``pixel_accuracy``, ``fwIoU``: floats (NaN before any pixel).
        """
        cm = self.confusion_matrix.double().cpu()
        tp = cm.diagonal()
        gt = cm.sum(1)  # tp + fn
        pred = cm.sum(0)  # tp + fp
        union = gt + pred - tp
        nan = torch.full_like(tp, math.nan)
        counted = gt > 0 if self.convention == "detectron2" else union > 0
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            counted[self.ignore_index] = False
        iou = torch.where(counted, tp / union, nan)
        dice = torch.where(counted, 2 * tp / (gt + pred), nan)
        has_gt = gt > 0
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            has_gt[self.ignore_index] = False
        acc = torch.where(has_gt, tp / gt, nan)
        total = gt.sum()
        freq = gt / total
        return {
            "IoU": iou,
            "mIoU": _nanmean(iou),
            "Dice": dice,
            "mDice": _nanmean(dice),
            "Acc": acc,
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
            "mean_accuracy": _nanmean(acc),
            "fwIoU": float((freq[has_gt] * iou[has_gt]).sum()) if has_gt.any() else math.nan,
        }

    def format_table(self, metrics: dict | None = None, *, digits: int = 2) -> str:
        """A plain-text table: one row per class (IoU, Dice, Acc in percent, ground-truth pixel share) and the
        summary metrics below it. ``-`` marks a class excluded by the convention. ``metrics`` defaults to
        :meth:`compute`'s output."""
        m = self.compute() if metrics is None else metrics
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        gt = self.confusion_matrix.sum(1).double().cpu()
        share = gt / gt.sum() if gt.sum() > 0 else torch.full_like(gt, math.nan)
        width = max(8, *(len(n) for n in names))

        def pct(v: float) -> str:
            return "-" if math.isnan(v) else f"{100 * v:.{digits}f}"

        head = f"{'class':<{width}} {'IoU':>8} {'Dice':>8} {'Acc':>8} {'pixels%':>8}"
        lines = [head, "-" * len(head)]
        for i, name in enumerate(names):
            row = (float(m["IoU"][i]), float(m["Dice"][i]), float(m["Acc"][i]), float(share[i]))
            lines.append(f"{name:<{width}} " + " ".join(f"{pct(v):>8}" for v in row))
        lines.append("-" * len(head))
        lines.append(f"{'mean':<{width}} {pct(m['mIoU']):>8} {pct(m['mDice']):>8} {pct(m['mean_accuracy']):>8}")
        lines.append(f"pixel accuracy {pct(m['pixel_accuracy'])}   fwIoU {pct(m['fwIoU'])}   ({self.convention} convention)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"SegmentationMetrics(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"convention={self.convention!r}, pixels={int(self.confusion_matrix.sum())})"
        )


def _nanmean(values: Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan
