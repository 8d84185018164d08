"""Mask R-CNN end to end: the demo recipe, shortened, learns boxes and masks on the shapes set, and the ``segm/AP``
it reports is pycocotools' ``segm`` evaluation of its detections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from resdense.engine import load_config, load_model, run_training
from resdense.engine.build import build_dataset
from resdense.engine.evaluate import autocast, eval_loader, evaluate
from resdense.engine.loading import build_run
from resdense.evaluation import COCO_STAT_KEYS, DetectionEvaluator
from resdense.hardware import choose_precision
from tests.evaluation._reference import reference_stats

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "demo_shapes_maskrcnn_r18_fpn.yaml"
CPU = torch.device("cpu")


def _short(tmp_path: Path) -> list[str]:
    """The demo recipe on fewer images and iterations (about a minute on one CPU thread), evaluated at the end."""
    return [f"data.shapes.root={tmp_path / 'shapes'}", "data.shapes.n_train=200", "data.shapes.n_val=20",
            "train.iterations=150", "train.warmup_iters=20", "eval.every_iters=0", "eval.every_epochs=0",
            f"train.output_dir={tmp_path / 'run'}", "train.progress=false"]


@pytest.mark.slow
def test_mask_rcnn_recipe_learns_boxes_and_masks_scored_as_pycocotools_does(tmp_path):
    config = load_config(RECIPE, _short(tmp_path))
    untrained = build_run(config, ("val",))
    before = evaluate(untrained.model, untrained.task, untrained.val_set, config.eval, CPU)

    result = run_training(config)
    after = result["final"]
    for key in ("segm/AP", "bbox/AP"):
        assert after[key] > 0.15 and after[key] > before[key] + 0.1, (key, before[key], after[key])

    # The run's final scores again, from the detections the engine's evaluation makes (same weights, loader and
    # precision), each IoU type scored by pycocotools' COCOeval on the shapes' own instances file.
    model, _ = load_model(tmp_path / "run" / "last.pt", device="cpu")
    model.eval()
    val_set = build_dataset(config.data, "detection", "val")
    evaluator = DetectionEvaluator(val_set.coco, val_set.label_to_cat_id, ("bbox", "segm"),
                                   max_dets=config.eval.max_dets)
    dtype = choose_precision(config.train.amp, CPU).dtype
    with torch.no_grad():
        for batch in eval_loader(untrained.task, val_set, config.eval):
            with autocast(CPU, dtype):
                outputs = model(batch.inputs)
            evaluator.update([{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs],
                             batch.targets)
    ours = evaluator.compute()
    gt = json.loads((tmp_path / "shapes" / "val" / "instances.json").read_text())
    for iou_type in ("segm", "bbox"):
        expected = reference_stats(gt, evaluator.results(iou_type), iou_type, max_dets=config.eval.max_dets)
        got = np.array([ours[f"{iou_type}/{k}"] for k in COCO_STAT_KEYS])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10, err_msg=iou_type)
        assert ours[f"{iou_type}/AP"] == pytest.approx(after[f"{iou_type}/AP"], abs=1e-10)
    assert ours["segm/AP"] != ours["bbox/AP"]  # two evaluations, not one number twice
