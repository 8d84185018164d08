"""The detection task's evaluation follows the recipe's ``eval`` section: ``max_dets`` decides how many detections
of a crowded image count, as pycocotools' ``params.maxDets`` does."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from resdense.config import EvalConfig
from resdense.data import CocoDetection
from resdense.engine import config_from_dict
from resdense.engine.build import build_task
from resdense.engine.evaluate import evaluate
from resdense.errors import ConfigError
from resdense.evaluation import coco_map

from .recipes import det_recipe


class _Oracle(nn.Module):
    """Returns each image's ground-truth boxes as detections, scored from 1 down in the file's order."""

    def __init__(self, dataset: CocoDetection) -> None:
        super().__init__()
        self.boxes = {i: dataset[i][1]["boxes"] for i in range(len(dataset))}
        self.calls = 0

    def forward(self, images):
        out = []
        for _ in images:
            boxes = self.boxes[self.calls]
            self.calls += 1
            n = len(boxes)
            out.append({"boxes": boxes, "labels": torch.ones(n, dtype=torch.int64),
                        "scores": torch.linspace(1.0, 0.5, n)})
        return out


def _crowded(tmp_path, n: int = 150):
    """One 200 x 300 image holding ``n`` disjoint 8 x 8 boxes (more than COCO's 100 detections per image)."""
    from PIL import Image

    Image.new("RGB", (300, 200)).save(tmp_path / "a.png")
    boxes = [[10.0 * (i % 25) + 1, 10.0 * (i // 25) + 1, 8.0, 8.0] for i in range(n)]
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": 200, "width": 300}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 64.0, "iscrowd": 0}
                          for i, b in enumerate(boxes)],
          "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return CocoDetection(tmp_path, tmp_path / "gt.json"), gt


@pytest.mark.parametrize("max_dets", [[1, 10, 100], [1, 10, 300]])
def test_eval_max_dets_reaches_the_task_and_counts_that_many_detections(tmp_path, max_dets):
    dataset, gt = _crowded(tmp_path)
    config = det_recipe(tmp_path / "shapes", tmp_path / "run")
    config["eval"]["max_dets"] = max_dets
    cfg = config_from_dict(config)
    task = build_task("detection", dataset.class_names, cfg)
    metrics = evaluate(_Oracle(dataset), task, dataset, cfg.eval, torch.device("cpu"))
    expected = coco_map(gt, [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 1.0 - i / 300}
                             for i, a in enumerate(gt["annotations"])], "bbox", max_dets=max_dets)
    assert metrics[f"bbox/AR{max_dets[-1]}"] == pytest.approx(min(1.0, max_dets[-1] / 150))
    assert metrics["bbox/AP"] == pytest.approx(expected["AP"], abs=1e-12)
    assert (metrics["bbox/AP"] == pytest.approx(1.0)) == (max_dets[-1] >= 150)


@pytest.mark.parametrize("bad", [[], [0, 10, 100], [10, 10, 100]])
def test_bad_eval_max_dets_are_refused(bad):
    with pytest.raises(ConfigError, match=r"eval.max_dets = .* must be distinct positive ints"):
        EvalConfig(max_dets=bad)
    assert EvalConfig(max_dets=[300, 1, 10]).max_dets == [1, 10, 300]
