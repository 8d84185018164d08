"""feature_info is the truth: names, channels and strides equal the real outputs."""

import math

import pytest
import torch

from resdense.backbones import ARCHS, FeatureInfo, create_backbone, list_backbones
from tests.backbones.reference import ALL_ARCHS

EXPANSION = {"resnet18": 1, "resnet34": 1}


def test_list_backbones_has_the_ten_architectures():
    assert list_backbones() == sorted(ARCHS)
    assert len(ARCHS) == 10


@pytest.mark.parametrize("name", ALL_ARCHS)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_info_equals_output_shapes(name, output_stride):
    net = create_backbone(name, output_stride=output_stride, out_features=("c1", "c2", "c3", "c4", "c5")).eval()
    e = EXPANSION.get(name, 4)
    strides = {32: (2, 4, 8, 16, 32), 16: (2, 4, 8, 16, 16), 8: (2, 4, 8, 8, 8)}[output_stride]
    expected = tuple(FeatureInfo(f"c{i + 1}", c, s) for i, (c, s) in enumerate(zip((64, 64 * e, 128 * e, 256 * e, 512 * e), strides, strict=True)))
    assert net.feature_info == expected
    with torch.no_grad():
        for h, w in ((64, 64), (33, 47)):
            out = net(torch.zeros(1, 3, h, w))
            assert list(out) == [f.name for f in net.feature_info]
            for f in net.feature_info:
                assert tuple(out[f.name].shape) == (1, f.channels, math.ceil(h / f.stride), math.ceil(w / f.stride)), f


def test_out_features_subset_in_stride_order_and_unused_stages_not_built(tmp_path):
    net = create_backbone("resnet50", out_features=("c3", "c1"))
    assert net.out_features == ("c1", "c3")
    assert hasattr(net, "layer2") and not hasattr(net, "layer3") and not hasattr(net, "layer4")
    out = net(torch.zeros(1, 3, 32, 32))
    assert list(out) == ["c1", "c3"]
    stem_only = create_backbone("resnet18", out_features=("c1",))
    assert not hasattr(stem_only, "maxpool") and not hasattr(stem_only, "layer1")
    assert stem_only(torch.zeros(1, 3, 32, 32))["c1"].shape == (1, 64, 16, 16)


def test_unbuilt_stages_of_a_full_checkpoint_are_dropped(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    net = create_backbone("resnet18", weights=tmp_path / "r18.pth", out_features=("c2",))
    assert {k.split(".")[0] for k in net.load_report.dropped} == {"layer2", "layer3", "layer4", "fc"}


@pytest.mark.parametrize("norm,cls", [("bn", torch.nn.BatchNorm2d), ("gn", torch.nn.GroupNorm),
                                      ("sync_bn", torch.nn.SyncBatchNorm)])
def test_norm_choices(norm, cls):
    net = create_backbone("resnet18", norm=norm)
    assert isinstance(net.bn1, cls) and isinstance(net.layer4[1].bn2, cls)
    if norm == "gn":
        assert net.bn1.num_groups == 32
    net.eval()(torch.zeros(1, 3, 32, 32))


def test_frozen_bn_has_no_trainable_norm_parameters():
    from torchvision.ops import FrozenBatchNorm2d

    net = create_backbone("resnet18", norm="frozen_bn")
    assert isinstance(net.layer1[0].bn1, FrozenBatchNorm2d)
    conv_params = sum(p.numel() for n, p in net.named_parameters() if "conv" in n or "downsample.0" in n)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == conv_params


def test_size_divisibility_and_channel_properties():
    net = create_backbone("resnet34", out_features=("c2", "c5"))
    assert net.size_divisibility == 32
    assert net.channels == {"c2": 64, "c5": 512} and net.strides == {"c2": 4, "c5": 32}


def test_set_out_features_widens_within_built_stages():
    net = create_backbone("resnet18", out_features=("c3", "c4"))
    net.set_out_features(("c1", "c4", "c2"))
    assert net.out_features == ("c1", "c2", "c4")
    assert list(net(torch.zeros(1, 3, 32, 32))) == ["c1", "c2", "c4"]
    from resdense.errors import ConfigError

    with pytest.raises(ConfigError, match=r"resnet18: the stages of \['c5'\] were not built"):
        net.set_out_features(("c5",))
