"""ImageNet tags resolve to torchvision's declared weights; the inference mode keeps outputs."""

import pytest
import torch
from torch.testing import assert_close

from resdense.backbones import create_backbone, optimize_for_inference
from resdense.backbones.weights import resolve_weights
from tests.backbones.reference import randomize_norm_stats


@pytest.mark.parametrize("name,tag,suffix", [
    ("resnet50", "imagenet", "resnet50-11ad3fa6.pth"),  # DEFAULT is V2 for resnet50
    ("resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth"),
    ("resnet18", "imagenet", "resnet18-f37072fd.pth"),
])
def test_tags_resolve_to_official_urls_with_hash(name, tag, suffix):
    entry = resolve_weights(name, tag)
    assert entry.url.startswith("https://download.pytorch.org/models/") and entry.url.endswith(suffix)
    assert len(entry.meta["categories"]) == 1000


def test_imagenet_download_goes_through_hub_cache_with_hash_check(monkeypatch):
    seen = {}

    def fake_load(url, progress, check_hash, weights_only):
        seen.update(url=url, check_hash=check_hash, weights_only=weights_only)
        import torchvision

        return torchvision.models.resnet18().state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_load)
    net = create_backbone("resnet18", weights="imagenet")
    assert seen == {"url": resolve_weights("resnet18", "imagenet").url, "check_hash": True, "weights_only": True}
    assert net.pretrained_cfg["weights"] == seen["url"]


@pytest.mark.parametrize("name,norm", [("resnet50", "bn"), ("resnet18", "frozen_bn"), ("resnext50_32x4d", "bn")])
def test_inference_mode_folds_norms_within_1e4(name, norm):
    torch.manual_seed(0)
    net = randomize_norm_stats(create_backbone(name, norm=norm))
    fast = optimize_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert fast.feature_info == net.feature_info
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want, got = net.eval()(x), fast(x)
    for k in want:
        assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)
    assert isinstance(net.bn1, torch.nn.Module) and net.bn1.__class__.__name__ != "Identity"  # original untouched
