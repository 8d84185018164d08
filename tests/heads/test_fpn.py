import math
from collections import OrderedDict

import pytest
import torch
from torch.testing import assert_close
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from resdense.backbones import FeatureExtractor, FeatureInfo, create_backbone
from resdense.errors import ConfigError
from resdense.heads import FPN

H, W = 128, 160


@pytest.fixture(scope="module")
def r18_features():
    torch.manual_seed(0)
    net = create_backbone("resnet18").eval()
    with torch.no_grad():
        return net.feature_info, net(torch.rand(2, 3, H, W))


@pytest.mark.parametrize("subset", [("c2", "c3", "c4", "c5"), ("c3", "c4", "c5"), ("c3", "c5"), ("c2",), ("c4", "c5")])
@pytest.mark.parametrize("extra", ["maxpool", "p6p7", None])
def test_outputs_equal_feature_info(r18_features, subset, extra):
    info, feats = r18_features
    fpn = FPN([f for f in info if f.name in subset], out_channels=64, extra_levels=extra).eval()
    assert isinstance(fpn, FeatureExtractor) and isinstance(fpn, FeaturePyramidNetwork)
    expected_names = [f"p{int(c[1])}" for c in subset]
    top = int(subset[-1][1])
    expected_names += {"maxpool": [f"p{top + 1}"], "p6p7": [f"p{top + 1}", f"p{top + 2}"], None: []}[extra]
    assert list(fpn.out_features) == expected_names
    with torch.no_grad():
        out = fpn(feats)  # the backbone dict has more keys than the FPN uses
    assert list(out) == list(fpn.out_features)
    for f in fpn.feature_info:
        assert f.stride == 2 ** int(f.name[1:]) and f.channels == 64
        assert tuple(out[f.name].shape) == (2, 64, math.ceil(H / f.stride), math.ceil(W / f.stride)), f.name


@pytest.mark.parametrize("extra,p6_from", [("maxpool", "p5"), ("p6p7", "p5"), ("p6p7", "c5")])
def test_equals_torchvision_fpn(r18_features, extra, p6_from):
    info, feats = r18_features
    ours = FPN(info, 256, extra, p6_from=p6_from).eval()
    in_list = [f.channels for f in info]
    block = LastLevelMaxPool() if extra == "maxpool" else LastLevelP6P7(256 if p6_from == "p5" else 512, 256)
    ref = FeaturePyramidNetwork(in_list, 256, extra_blocks=block).eval()
    ref.load_state_dict(ours.state_dict())  # same keys, strict
    with torch.no_grad():
        got = ours(feats)
        want = ref(OrderedDict((k, feats[k]) for k in ("c2", "c3", "c4", "c5")))
    assert len(got) == len(want)
    for g, w in zip(got.values(), want.values(), strict=True):
        assert_close(g, w, rtol=0, atol=0)


def test_p6_from_c5_even_when_channels_coincide(r18_features):
    # resnet18's C5 has 512 channels: with out_channels=512 torchvision's LastLevelP6P7 would silently use P5.
    info, feats = r18_features
    fpn = FPN(info, 512, "p6p7", p6_from="c5").eval()
    with torch.no_grad():
        out = fpn(feats)
        assert_close(out["p6"], fpn.extra_blocks.p6(feats["c5"]))
        assert not torch.allclose(out["p6"], fpn.extra_blocks.p6(out["p5"]))


def test_refuses_strides_that_are_not_increasing_powers_of_two():
    dilated = create_backbone("resnet18", output_stride=16)  # c4 and c5 both stride 16
    with pytest.raises(ConfigError, match=r"c4 and c5 have strides 16 and 16"):
        FPN(dilated)
    with pytest.raises(ConfigError, match=r"x \(stride 12\)"):
        FPN([FeatureInfo("c2", 64, 4), FeatureInfo("x", 64, 12)])
    with pytest.raises(ConfigError, match="strictly increase"):
        FPN([FeatureInfo("c3", 64, 8), FeatureInfo("c2", 64, 4)])
    with pytest.raises(ConfigError, match="extra_levels='p6'"):
        FPN(create_backbone("resnet18"), extra_levels="p6")
    with pytest.raises(ConfigError, match="p6_from"):
        FPN(create_backbone("resnet18"), extra_levels="p6p7", p6_from="p4")
