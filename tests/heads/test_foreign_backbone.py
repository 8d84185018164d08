"""A backbone that subclasses only FeatureExtractor plugs into every head, through the contract's default methods."""

import pytest
import torch
from torch import nn

from resdense.backbones import FeatureExtractor, FeatureInfo, quantize_backbone
from resdense.errors import ConfigError
from resdense.heads import FPN, Classifier, UNet, build_detector, quantize_unet, smp_model

NAMES = ("c1", "c2", "c3", "c4", "c5")


class Tiny(FeatureExtractor):
    """Five stride-2 convolutions, ``c1..c5`` at strides 2..32, 8 channels each."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Sequential(nn.Conv2d(3 if i == 0 else 8, 8, 3, 2, 1), nn.BatchNorm2d(8),
                                                 nn.ReLU()) for i in range(5))
        self.feature_info = tuple(FeatureInfo(n, 8, 2 ** (i + 1)) for i, n in enumerate(NAMES))

    def forward(self, x):
        out = {}
        for name, conv in zip(NAMES, self.convs, strict=True):
            x = conv(x)
            out[name] = x
        return out


def _trainable(module):
    return [n for n, p in module.named_parameters() if p.requires_grad]


def test_every_head_builds_and_runs_on_it():
    x = torch.rand(2, 3, 64, 64)
    assert UNet(Tiny(), num_classes=2, decoder_channels=(8, 8, 8, 8, 8))(x).shape == (2, 2, 64, 64)
    assert Classifier(Tiny(), num_classes=3)(x).shape == (2, 3)
    assert smp_model("FPN", backbone=Tiny(), classes=2, decoder_segmentation_channels=32,
                     decoder_pyramid_channels=32)(x).shape == (2, 2, 64, 64)
    assert list(FPN(Tiny(), 8)(Tiny()(x))) == ["p1", "p2", "p3", "p4", "p5", "p6"]
    for kind in ("faster_rcnn", "retinanet"):
        model = build_detector(kind, backbone=Tiny(), num_classes=3, fpn_channels=8, min_size=64, max_size=64).eval()
        with torch.no_grad():
            assert set(model([x[0]])[0]) >= {"boxes", "labels", "scores"}


def test_default_set_out_features_accepts_its_own_outputs_and_refuses_others():
    net = Tiny()
    net.set_out_features(("c5", "c1", "c2", "c3", "c4"))  # its own, in any order: nothing changes
    assert net.out_features == NAMES
    with pytest.raises(ConfigError, match=r"Tiny returns \['c1', 'c2', 'c3', 'c4', 'c5'\] and cannot be set to "
                                          r"return \['c6'\] \(it has no \['c6'\]\)"):
        net.set_out_features(("c6",))
    with pytest.raises(ConfigError, match=r"cannot be set to return \['c5'\]$"):
        net.set_out_features(("c5",))  # a fixed extractor cannot drop maps either


def test_a_head_that_needs_a_map_it_lacks_names_the_map():
    class NoC1(Tiny):
        def __init__(self):
            super().__init__()
            self.feature_info = self.feature_info[1:]

    with pytest.raises(ConfigError, match=r"^UNet: the backbone returns \['c2', 'c3', 'c4', 'c5'\] but .* \(missing "
                                          r"\['c1'\]\): NoC1 returns"):
        UNet(NoC1(), num_classes=2)


def test_default_freeze_is_one_stage_and_the_heads_use_it():
    net = Tiny()
    assert net.freeze(0) is net and net.frozen_stages == 0
    assert _trainable(net) == [] and not net.train().convs[0][1].training  # frozen norms stay in eval mode
    net.freeze(-1)
    assert len(_trainable(net)) == len(list(net.parameters())) and net.train().convs[0][1].training
    with pytest.raises(ConfigError, match=r"Tiny: freeze\(1\): stages must be an int in -1\.\.0"):
        net.freeze(1)
    clf = Classifier(Tiny(), num_classes=3)  # freeze_backbone=True: the whole backbone
    assert _trainable(clf) == ["fc.weight", "fc.bias"] and not clf.train().backbone.training
    clf.freeze_backbone = False
    assert len(_trainable(clf)) == len(list(clf.parameters())) and clf.train().backbone.training


@pytest.mark.parametrize("trainable_stages,frozen_stages", [(3, -1), (1, -1), (0, 0)])
def test_trainable_stages_count_the_backbones_own_stages_back_from_the_last(trainable_stages, frozen_stages):
    backbone = Tiny()
    backbone.pretrained_cfg = {"weights": "loaded"}  # trainable_stages applies to a backbone with weights
    body = build_detector("retinanet", backbone=backbone, num_classes=3, fpn_channels=8,
                          trainable_stages=trainable_stages).backbone.body
    assert body.frozen_stages == frozen_stages  # one stage: frozen only when no stage is to train
    assert bool(_trainable(body)) is (frozen_stages < 0)


def test_default_grad_checkpointing_is_refused_when_asked_for():
    net = Tiny()
    net.set_grad_checkpointing(False)
    with pytest.raises(ConfigError, match="Tiny does not support gradient checkpointing"):
        net.set_grad_checkpointing()


def test_int8_backbone_and_unet_on_it():
    net = Tiny().eval()
    calibration = torch.rand(4, 3, 64, 64)
    q = quantize_backbone(net, calibration, n=4)
    out, ref = q(calibration[:1]), net(calibration[:1])
    assert list(out) == list(NAMES) and all(out[k].shape == ref[k].shape for k in NAMES)
    unet = UNet(Tiny(), num_classes=2, decoder_channels=(8, 8, 8, 8, 8)).eval()
    assert quantize_unet(unet, calibration, n=4)(torch.rand(1, 3, 50, 70)).shape == (1, 2, 50, 70)
