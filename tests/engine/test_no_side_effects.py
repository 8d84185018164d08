"""The public API leaves what it is given as it was, and every silent fallback leaves a line in the log."""

from __future__ import annotations

import copy
import logging

import torch

from resdense.engine import config_from_dict, run_evaluation, run_training
from resdense.inference import run_prediction

from .recipes import det_recipe, seg_recipe


def test_runners_do_not_change_the_config_or_overrides_they_are_given(tmp_path):
    config = config_from_dict(seg_recipe(tmp_path / "shapes", tmp_path / "recipe_dir", iterations=2))
    before = copy.deepcopy(config.to_dict())
    result = run_training(config, output_dir=tmp_path / "elsewhere")
    assert config.to_dict() == before  # output_dir went to the run, not into the caller's object
    assert (tmp_path / "elsewhere" / "last.pt").exists() and not (tmp_path / "recipe_dir").exists()
    assert result["iterations"] == 2
    run_evaluation(config, tmp_path / "elsewhere" / "best.pt")
    image = next((tmp_path / "shapes" / "val" / "images").iterdir())
    images = [str(image)]
    run_prediction(config, tmp_path / "elsewhere" / "best.pt", images, tmp_path / "preds")
    assert config.to_dict() == before and images == [str(image)]
    overrides = ["train.iterations=1"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(__import__("yaml").safe_dump(det_recipe(tmp_path / "shapes", tmp_path / "det")))
    run_training(recipe, overrides)
    assert overrides == ["train.iterations=1"]


def test_builders_do_not_change_their_arguments():
    from resdense.backbones import create_backbone
    from resdense.heads import build_detector

    anchors = [[8], [16], [32], [64], [128]]
    features = ["c2", "c3"]
    build_detector("retinanet", backbone="resnet18", num_classes=3, anchor_sizes=anchors)
    create_backbone("resnet18", out_features=features)
    assert anchors == [[8], [16], [32], [64], [128]] and features == ["c2", "c3"]


def test_fallbacks_are_logged_at_info(caplog):
    from resdense import api

    with caplog.at_level(logging.INFO, logger="resdense"):
        assert api._imagenet_categories("no_such_architecture") is None
    assert any(r.levelno == logging.INFO and "no ImageNet class names for 'no_such_architecture'" in r.message
               for r in caplog.records)


def test_the_onednn_probe_logs_once_when_it_cannot_answer(caplog, monkeypatch):
    from resdense import _torch_private as tp

    monkeypatch.setattr(tp, "_logged", set())
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # a build without oneDNN
    with caplog.at_level(logging.INFO, logger="resdense"):
        assert tp.onednn_bf16_supported() is False
        assert tp.onednn_bf16_supported() is False
    lines = [r.message for r in caplog.records if "oneDNN bf16 probe" in r.message]
    assert lines == ["oneDNN bf16 probe: taken as unsupported (this torch build has no oneDNN)"]
