"""The evaluation report: its confusion matrix is the segmentation metrics' counts (checked against numpy and
torchmetrics too), its tables have one row per class with the evaluation's numbers, and its PNGs are images."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resdense.engine import Batch, SegmentationTask
from resdense.engine.report import write_report
from resdense.errors import EvaluationError
from resdense.evaluation import SegmentationMetrics, coco_evaluate
from resdense.evaluation.detection import flat_stats
from resdense.visualize import plot_confusion_matrix
from tests.evaluation.synthetic import random_coco_problem

NAMES = ["background", "road", "car", "tree", "sky"]
IGNORE = 255


def _batches(seed: int, n: int = 3) -> list[Batch]:
    """Logits as the "images" (the model is nn.Identity), targets with ignored pixels; class 4 ("sky") never
    occurs in the ground truth, so its row is empty and its IoU is 0 or excluded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        logits = torch.randn(2, len(NAMES), 12, 10, generator=g)
        target = torch.randint(0, len(NAMES) - 1, (2, 12, 10), generator=g)
        target[torch.rand(2, 12, 10, generator=g) < 0.1] = IGNORE
        out.append(Batch([2 * i, 2 * i + 1], logits, target))
    return out


def _read_csv(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def seg_metrics():
    task = SegmentationTask(len(NAMES), ignore_index=IGNORE, class_names=NAMES)
    return task.evaluate(nn.Identity(), _batches(0), torch.device("cpu"), report=True)


def test_the_confusion_matrix_is_the_metrics_counts(seg_metrics):
    batches = _batches(0)
    metrics = SegmentationMetrics(len(NAMES), ignore_index=IGNORE)
    for b in batches:
        metrics.update(b.inputs, b.targets)
    cm = seg_metrics["confusion_matrix"]
    assert torch.equal(cm, metrics.confusion_matrix)
    # independently: numpy bincount of gt * C + pred over the non-ignored pixels
    pred = np.concatenate([b.inputs.argmax(1).numpy().ravel() for b in batches])
    gt = np.concatenate([b.targets.numpy().ravel() for b in batches])
    keep = gt != IGNORE
    counts = np.bincount(gt[keep] * len(NAMES) + pred[keep], minlength=len(NAMES) ** 2).reshape(len(NAMES), -1)
    np.testing.assert_array_equal(cm.numpy(), counts)
    # and torchmetrics' (rows target, columns prediction as well)
    from torchmetrics.classification import MulticlassConfusionMatrix

    tm = MulticlassConfusionMatrix(num_classes=len(NAMES), ignore_index=IGNORE)
    for b in batches:
        tm.update(b.inputs, b.targets)
    np.testing.assert_array_equal(cm.numpy(), tm.compute().numpy())


def test_without_report_the_metrics_carry_no_arrays():
    task = SegmentationTask(len(NAMES), ignore_index=IGNORE, class_names=NAMES)
    assert "confusion_matrix" not in task.evaluate(nn.Identity(), _batches(0), torch.device("cpu"))


def test_segmentation_report_files(seg_metrics, tmp_path):
    files = write_report(seg_metrics, NAMES, tmp_path, title="test")
    names = {f.name for f in files}
    assert names == {"metrics.json", "per_class_iou.md", "per_class_iou.csv", "confusion_matrix.csv",
                     "confusion_matrix.png", "report.md"}
    assert all(f.is_file() for f in files)
    # the CSV confusion matrix is the counts, named by class on both axes
    rows = _read_csv(tmp_path / "confusion_matrix.csv")
    assert rows[0][1:] == NAMES and [r[0] for r in rows[1:]] == NAMES
    written = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_array_equal(written, seg_metrics["confusion_matrix"].numpy())
    # one row per class with the evaluation's IoU (an empty cell where it is NaN)
    table = _read_csv(tmp_path / "per_class_iou.csv")
    assert table[0][:2] == ["class", "IoU"] and [r[0] for r in table[1:]] == NAMES
    for i, row in enumerate(table[1:]):
        iou = float(seg_metrics["IoU"][i])
        assert (row[1] == "") if math.isnan(iou) else float(row[1]) == iou
        assert int(row[4]) == int(seg_metrics["confusion_matrix"][i].sum())
    md = (tmp_path / "per_class_iou.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in md) == 1 + len(NAMES)  # the header and one row per class
    assert json.loads((tmp_path / "metrics.json").read_text())["mIoU"] == seg_metrics["mIoU"]
    report = (tmp_path / "report.md").read_text()
    assert "![confusion matrix](confusion_matrix.png)" in report and "| sky |" in report
    with Image.open(tmp_path / "confusion_matrix.png") as im:
        assert im.format == "PNG" and min(im.size) > 100


def test_detection_report_files(tmp_path):
    gt, bbox, _ = random_coco_problem(5, segm=False, num_categories=(3, 5))
    evaluation = coco_evaluate(gt, bbox, "bbox", backend="pycocotools")
    metrics = {**flat_stats({"bbox": evaluation}), "coco": {"bbox": evaluation}}
    files = write_report(metrics, [], tmp_path)
    assert {f.name for f in files} == {"metrics.json", "bbox_per_class_ap.md", "bbox_per_class_ap.csv",
                                       "bbox_pr_curves.png", "report.md"}
    table = _read_csv(tmp_path / "bbox_per_class_ap.csv")
    assert table[0] == ["category_id", "name", "AP", "AP50", "AP75"]
    assert [int(r[0]) for r in table[1:]] == sorted(c["id"] for c in gt["categories"])
    for row, expected in zip(table[1:], evaluation.per_class(), strict=True):
        for j, key in enumerate(("AP", "AP50", "AP75"), start=2):
            assert (row[j] == "") if expected[key] < 0 else float(row[j]) == expected[key]
    assert json.loads((tmp_path / "metrics.json").read_text())["bbox/AP"] == evaluation.stats["AP"]
    with Image.open(tmp_path / "bbox_pr_curves.png") as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100  # two panels side by side


def test_bad_input_is_named(tmp_path, seg_metrics):
    with pytest.raises(EvaluationError, match=r"confusion matrix \[5, 5\] for 3 class names"):
        write_report(seg_metrics, NAMES[:3], tmp_path / "a")
    (tmp_path / "file").write_text("")
    with pytest.raises(EvaluationError, match="the report folder is a file"):
        write_report(seg_metrics, NAMES, tmp_path / "file")
    with pytest.raises(EvaluationError, match=r"matrix of shape \[2, 2\] for 3 class names"):
        plot_confusion_matrix(np.eye(2), NAMES[:3], tmp_path / "cm.png")
