"""backbone_of: one way to find the backbone of every head (the part a freeze schedule or weights apply to)."""

import pytest
from torch import nn

from resdense.backbones import ResNet
from resdense.errors import ConfigError
from resdense.heads import (
    Classifier,
    DetectionBackbone,
    ResdenseEncoder,
    UNet,
    backbone_of,
    build_detector,
    smp_model,
)


def test_each_head_exposes_its_backbone():
    unet = UNet("resnet18", num_classes=2, decoder_channels=(8, 8))
    assert backbone_of(unet) is unet.backbone and isinstance(unet.backbone, ResNet)
    clf = Classifier("resnet18", num_classes=3)
    assert backbone_of(clf) is clf.backbone
    det = build_detector("retinanet", backbone="resnet18", num_classes=3, fpn_channels=32)
    assert isinstance(det.backbone, DetectionBackbone)
    assert backbone_of(det) is det.backbone.body  # the ResNet, not the FPN built on it
    seg = smp_model("FPN", backbone="resnet18", classes=2)
    assert backbone_of(seg) is seg.encoder and isinstance(seg.encoder, ResdenseEncoder)
    # every parameter of the backbone found is a backbone parameter of the model, and the rest are not
    head_params = {id(p) for p in det.parameters()} - {id(p) for p in backbone_of(det).parameters()}
    assert head_params == {id(p) for m in (det.backbone.fpn, det.head) for p in m.parameters()}


def test_a_model_without_a_backbone_is_refused():
    with pytest.raises(ConfigError, match=r"^Sequential has no backbone \(looked for"):
        backbone_of(nn.Sequential(nn.Conv2d(3, 2, 1)))
