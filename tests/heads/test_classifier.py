"""Classifier: pool + fc on a backbone; a frozen backbone stays exactly as loaded while the head learns."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torchvision.models import resnet18

from resdense.backbones import create_backbone
from resdense.errors import ConfigError
from resdense.heads import Classifier, create_classifier


def test_equals_torchvision_resnet_with_the_same_weights():
    ref = resnet18(num_classes=7).eval()
    model = Classifier(create_backbone("resnet18", weights=ref.state_dict(), out_features=("c5",)), 7).eval()
    model.fc.load_state_dict(ref.fc.state_dict())
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        assert_close(model(x), ref(x))


def test_frozen_backbone_only_head_learns():
    model = Classifier("resnet18", num_classes=3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x = 0.2 * torch.rand(6, 3, 64, 64) + F.one_hot(y, 3).float()[:, :, None, None]  # class k: a red/green/blue image
    model.train()
    assert not model.backbone.training  # BatchNorm statistics must not follow the new data
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and running statistics untouched


def test_unfreezing_and_dropout():
    body = create_backbone("resnet18", frozen_stages=1)
    model = Classifier(body, 4, freeze_backbone=True, dropout=0.2)
    model.freeze_backbone = False
    assert body.layer2[0].conv1.weight.requires_grad and model.train().backbone.training
    assert not body.layer1[0].conv1.weight.requires_grad  # frozen by the backbone itself: stays frozen
    assert model.feature == "c5" and isinstance(model.dropout, torch.nn.Dropout)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 4)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="num_classes=0 must be a positive int"):
        Classifier("resnet18", 0)
    with pytest.raises(ConfigError, match="dropout"):
        Classifier("resnet18", 2, dropout=1.5)
    with pytest.raises(ConfigError, match="not a feature extractor"):
        Classifier(torch.nn.Linear(3, 3), 2)


def test_create_classifier_is_a_classifier_with_torchvision_weights_fc_included(tmp_path):
    ref = resnet18().eval()
    torch.save({f"module.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "ddp.pth")
    model = create_classifier("resnet18", weights=tmp_path / "ddp.pth").eval()
    assert isinstance(model, Classifier) and not model.load_report.missing and not model.load_report.dropped
    assert all(p.requires_grad for p in model.parameters())  # the full model trains, as torchvision's
    assert model.pretrained_cfg["weights"] == str(tmp_path / "ddp.pth") and model.pretrained_cfg["mean"]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(model(x), ref(x))
        again = create_classifier("resnet18", weights=model.state_dict()).eval()  # our backbone.* / fc.* layout
        assert again.load_report.layout == "resdense"
        assert_close(again(x), ref(x))
    other = create_classifier("resnet18", num_classes=3, weights=ref.state_dict())
    assert [d.split(" ")[0] for d in other.load_report.dropped] == ["fc.weight", "fc.bias"]
    assert other(x).shape == (2, 3) and torch.equal(other.backbone.conv1.weight, ref.conv1.weight)
