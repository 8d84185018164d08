"""The backbone freeze schedule (train.freeze_backbone_iters): trainable parameter counts before and after N, no
update and unchanged BatchNorm statistics while frozen, the model's own frozen stages kept frozen afterwards."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resdense.backbones import create_backbone
from resdense.config import EvalConfig, TrainConfig
from resdense.engine import SegmentationTask, Trainer
from resdense.engine.schedule import BackboneFreeze
from resdense.errors import ConfigError
from resdense.heads import Classifier, UNet, build_detector

from .recipes import AfterStep
from .test_trainer import Stripes, tiny_net


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _trainable(model) -> int:
    return _count(p for p in model.parameters() if p.requires_grad)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_unet_backbone_frozen_for_n_iterations_then_trained_except_its_frozen_stages(tmp_path):
    n, iters = 3, 6
    torch.manual_seed(0)
    net = create_backbone("resnet18", frozen_stages=1, out_features=("c1", "c2", "c3", "c4", "c5"))
    model = UNet(net, num_classes=2, decoder_channels=(8, 8, 8, 8, 8))
    heads = _count(model.decoder.parameters()) + _count(model.segmentation_head.parameters())
    later_stages = _count(p for name in ("layer2", "layer3", "layer4") for p in getattr(net, name).parameters())
    assert _trainable(model) == heads + later_stages  # frozen_stages=1: stem and layer1 never train
    initial = _snapshot(net)
    decoder_initial = _snapshot(model.decoder)
    seen = {}

    def after_step(trainer, it, losses):
        bn = net.layer2[0].bn1
        seen[it] = {"trainable": _trainable(trainer.model), "layer2_bn_training": bn.training,
                    "stem_bn_training": net.bn1.training, "backbone": _snapshot(net),
                    "optimizer_state": len(trainer.optimizer.state.get(net.layer2[0].conv1.weight, {}))}

    cfg = TrainConfig(iterations=iters, batch_size=4, lr=0.01, progress=False, freeze_backbone_iters=n)
    trainer = Trainer(model, SegmentationTask(2), Stripes(16), Stripes(4, seed=1), cfg,
                      EvalConfig(every_iters=2, batch_size=4), run_dir=tmp_path / "run",
                      hooks=[AfterStep(after_step)])
    trainer.fit()

    for it in range(1, n + 1):  # frozen (an evaluation at 2 in between): nothing of the backbone moves
        assert seen[it]["trainable"] == heads, it
        assert not seen[it]["layer2_bn_training"] and seen[it]["optimizer_state"] == 0
        assert all(torch.equal(v, initial[k]) for k, v in seen[it]["backbone"].items()), it
    assert any(not torch.equal(v, decoder_initial[k]) for k, v in model.decoder.state_dict().items())
    for it in range(n + 1, iters + 1):
        assert seen[it]["trainable"] == heads + later_stages, it
        assert seen[it]["layer2_bn_training"] and seen[it]["optimizer_state"] > 0
        assert not seen[it]["stem_bn_training"]
    final = _snapshot(net)
    for k, v in final.items():  # stem and layer1 are still the initial ones; layer2..4 weights and statistics moved
        if k.startswith(("conv1", "bn1", "layer1.")):
            assert torch.equal(v, initial[k]), k
    assert not torch.equal(final["layer2.0.conv1.weight"], initial["layer2.0.conv1.weight"])
    assert not torch.equal(final["layer2.0.bn1.running_mean"], initial["layer2.0.bn1.running_mean"])


def test_detector_body_frozen_then_its_trainable_stages(tmp_path):
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    model = build_detector("faster_rcnn", backbone="resnet18", num_classes=3, weights_backbone=str(weights),
                           trainable_stages=2, fpn_channels=32, representation_size=64)
    body = model.backbone.body
    total = _trainable(model)
    body_trainable = _count(p for name in ("layer3", "layer4") for p in getattr(body, name).parameters())
    freeze = BackboneFreeze(model, 5)
    model.train()
    freeze.apply(0)
    assert _trainable(model) == total - body_trainable
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    freeze.apply(5)
    assert _trainable(model) == total
    assert not any(p.requires_grad for name in ("conv1", "bn1", "layer1", "layer2")
                   for p in getattr(body, name).parameters())


def test_classifier_with_its_own_frozen_backbone_stays_frozen():
    model = Classifier("resnet18", num_classes=3, freeze_backbone=True)
    freeze = BackboneFreeze(model, 2)
    model.train()
    for it in (0, 1, 2, 3):
        freeze.apply(it)
        assert _trainable(model) == _count(model.fc.parameters())
        assert not model.backbone.training and model.fc.training


def test_state_is_a_function_of_the_iteration():
    for start in (0, 2, 3, 5):  # a schedule built at any iteration (as on resume) is in the state of a running one
        model = Classifier("resnet18", num_classes=3, freeze_backbone=False)
        total, backbone = _trainable(model), _count(model.backbone.parameters())
        model.train()
        BackboneFreeze(model, 3).apply(start)
        assert _trainable(model) == (total - backbone if start < 3 else total)
        assert model.backbone.training == (start >= 3)


def test_model_without_a_backbone_is_refused(tmp_path):
    cfg = TrainConfig(iterations=2, batch_size=4, progress=False, freeze_backbone_iters=2)
    with pytest.raises(ConfigError, match=r"^train\.freeze_backbone_iters = 2: Sequential has no backbone"):
        Trainer(tiny_net(), SegmentationTask(2), Stripes(8), None, cfg, run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^train\.freeze_backbone_iters = -1 must be at least 0"):
        TrainConfig(iterations=2, freeze_backbone_iters=-1)
