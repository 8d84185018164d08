"""Freezing, gradient checkpointing, input channels: the training-time switches do what they say."""

import pytest
import torch
import torchvision
from torch.testing import assert_close

from resdense.backbones import adapt_input_conv, create_backbone
from resdense.errors import ConfigError
from tests.backbones.reference import randomize_norm_stats, torchvision_features, torchvision_model


def _count(module, prefixes):
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefixes))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("frozen_stages", [-1, 0, 1, 2, 3, 4])
def test_trainable_parameter_counts(name, frozen_stages):
    ref = getattr(torchvision.models, name)()  # independent count from torchvision's module tree
    frozen = () if frozen_stages < 0 else ("conv1.", "bn1.") + tuple(f"layer{i}." for i in range(1, frozen_stages + 1))
    total_features = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("fc."))
    expected = total_features - (_count(ref, frozen) if frozen else 0)

    net = create_backbone(name, frozen_stages=frozen_stages)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == expected
    net.train()
    for mod_name, m in net.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            is_frozen = bool(frozen) and (mod_name + ".").startswith(frozen)
            assert m.training is not is_frozen, mod_name


def test_freeze_later_equals_freezing_at_construction_and_can_be_lowered():
    at_build = create_backbone("resnet50", frozen_stages=2)
    later = create_backbone("resnet50").freeze(4).freeze(2)  # deeper first, then lowered: layer3-4 train again
    for (n, a), (_, b) in zip(at_build.named_parameters(), later.named_parameters(), strict=True):
        assert a.requires_grad == b.requires_grad, n
    later.train()
    assert [m.training for m in later.modules()] == [m.training for m in at_build.train().modules()]
    assert later.frozen_stages == 2
    with pytest.raises(ConfigError, match=r"freeze\(5\)"):
        later.freeze(5)


def test_frozen_stage_statistics_do_not_move_in_train_mode():
    net = create_backbone("resnet18", frozen_stages=1).train()
    before = net.layer1[0].bn1.running_mean.clone(), net.layer2[0].bn1.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    assert torch.equal(net.layer1[0].bn1.running_mean, before[0])
    assert not torch.equal(net.layer2[0].bn1.running_mean, before[1])


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_gradient_checkpointing_same_outputs_gradients_and_statistics(name):
    torch.manual_seed(0)
    plain = create_backbone(name).train()
    ckpt = create_backbone(name, grad_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for net in (plain, ckpt):
        out = net(x)
        sum((v * (i + 1)).square().mean() for i, v in enumerate(out.values())).backward()
        outs.append(out)
    for k in outs[0]:
        assert_close(outs[1][k], outs[0][k])
    grads = dict(plain.named_parameters())
    for n, p in ckpt.named_parameters():
        assert_close(p.grad, grads[n].grad, atol=1e-6, rtol=1e-5, msg=n)
    for (n, b), (_, b2) in zip(plain.named_buffers(), ckpt.named_buffers(), strict=True):
        assert_close(b2, b, msg=n)  # running statistics updated once, not again during recomputation


def test_set_grad_checkpointing_switches_it_after_construction():
    net = create_backbone("resnet18")
    net.set_grad_checkpointing()
    assert net.grad_checkpointing and net.train()._checkpointing()
    net.set_grad_checkpointing(False)
    assert not net._checkpointing()


def test_in_channels_1_is_the_rgb_model_on_a_gray_image(tmp_path):
    ref = torchvision_model("resnet18", seed=2)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    gray = torch.randn(2, 1, 64, 64)
    net = create_backbone("resnet18", weights=tmp_path / "w.pth", in_channels=1).eval()
    assert net.load_report.adapted == ["conv1.weight (3 -> 1 input channels)"]
    with torch.no_grad():
        assert_close(net(gray)["c5"], torchvision_features(ref, gray.expand(-1, 3, -1, -1))["c5"], atol=1e-5, rtol=1e-5)


def test_in_channels_4_tiles_and_rescales(tmp_path):
    ref = torchvision_model("resnet50", seed=4)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    net = create_backbone("resnet50", weights=tmp_path / "w.pth", in_channels=4).eval()
    w = ref.conv1.weight
    assert_close(net.conv1.weight, torch.cat([w, w[:, :1]], dim=1) * 0.75)
    # an RGB image plus a channel equal to its red one keeps the RGB response scaled like timm's rule predicts
    assert net(torch.randn(1, 4, 64, 64))["c5"].shape == (1, 2048, 2, 2)
    assert adapt_input_conv(w, 6).shape[1] == 6 and torch.allclose(adapt_input_conv(w, 6)[:, 3:], w * 0.5)


def test_wrong_input_channels_is_a_clear_error():
    net = create_backbone("resnet18", in_channels=4)
    with pytest.raises(ValueError, match=r"resnet18: expected input \[N, 4, H, W\], got \[1, 3, 32, 32\]"):
        net(torch.zeros(1, 3, 32, 32))


def test_gn_backbone_loads_bn_checkpoint_affine_and_drops_statistics(tmp_path):
    ref = randomize_norm_stats(torchvision.models.resnet18())
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    net = create_backbone("resnet18", weights=tmp_path / "w.pth", norm="gn")
    assert_close(net.bn1.weight, ref.bn1.weight)
    assert any(k.endswith("running_mean") for k in net.load_report.dropped)
