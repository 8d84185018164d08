"""Rebuilding a trained model from its checkpoint gives the modules it was trained with."""

from __future__ import annotations

import warnings

import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from resdense.engine import load_checkpoint
from resdense.engine.runner import load_model, run_training

from .recipes import det_recipe, write


def test_detector_trained_from_backbone_weights_reloads_with_frozen_batchnorm(tmp_path):
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    recipe = det_recipe(tmp_path / "shapes", tmp_path / "run", iterations=2, progress=False)
    recipe["model"]["weights_backbone"] = str(weights)
    run_training(write(recipe, tmp_path / "det.yaml"))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "random backbone" warnings: the weights come from the checkpoint
        model, _ = load_model(tmp_path / "run" / "last.pt", device="cpu")
    frozen = [n for n, m in model.backbone.body.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 20 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_eval_max_images_evaluates_the_first_images_only(tmp_path):
    from .recipes import seg_recipe

    recipe = seg_recipe(tmp_path / "shapes", tmp_path / "run", iterations=2)
    recipe["eval"] = {"every_iters": 0, "batch_size": 2, "max_images": 3}  # 4 validation images, a Subset of 3
    result = run_training(write(recipe, tmp_path / "seg.yaml"))
    assert result["iterations"] == 2 and 0.0 <= result["final"]["mIoU"] <= 1.0
