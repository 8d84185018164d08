"""Any resdense backbone as an smp encoder: smp's decoders build and run on it, and an smp Unet on a resdense
ResNet computes what smp's own ResNet encoder computes."""

import pytest
import segmentation_models_pytorch as smp
import segmentation_models_pytorch.encoders as smp_encoders
import torch
from torch.testing import assert_close
from torchvision.models import resnet18

from resdense.backbones import create_backbone
from resdense.errors import ConfigError
from resdense.heads import ResdenseEncoder, register_smp_encoders, smp_architectures, smp_model

ARCHS = ["Unet", "UnetPlusPlus", "FPN", "DeepLabV3", "DeepLabV3Plus", "PSPNet", "Linknet", "MAnet", "PAN",
         "UPerNet", "Segformer"]


def test_architectures_listed():
    assert set(ARCHS) <= set(smp_architectures())
    assert "DPT" not in smp_architectures()  # DPT accepts only Vision Transformer encoders


ISSUE_ARCHS = ["UnetPlusPlus", "FPN", "DeepLabV3Plus", "PSPNet", "Linknet", "MAnet", "PAN"]


def _size(arch):
    return 128 if arch == "PAN" else 64  # PAN's pyramid attention pools the stride-16 map down to 1/8 of it


@pytest.mark.parametrize("arch", ARCHS)
def test_smp_decoders_train_on_resnet18(arch):
    model = smp_model(arch, backbone="resnet18", classes=3)
    assert isinstance(model, getattr(smp, arch)) and isinstance(model.encoder, ResdenseEncoder)
    size = _size(arch)
    model.train()
    out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 3, size, size)
    out.mean().backward()
    assert model.encoder.backbone.conv1.weight.grad.abs().sum() > 0  # gradients reach the stem


@pytest.mark.parametrize("arch", ISSUE_ARCHS)
def test_smp_decoders_run_on_resnet50(arch):
    model = smp_model(arch, backbone="resnet50", classes=3).eval()
    size = _size(arch)
    with torch.no_grad():
        assert model(torch.rand(1, 3, size, size)).shape == (1, 3, size, size)


@pytest.mark.parametrize("arch,kwargs", [("Unet", {}), ("PSPNet", {"encoder_depth": 3}), ("Linknet", {})])
def test_same_logits_as_smp_resnet_encoder(arch, kwargs):
    ref = smp.create_model(arch, encoder_name="resnet18", encoder_weights=None, classes=2, **kwargs).eval()
    ours = smp_model(arch, backbone="resnet18", classes=2, **kwargs).eval()
    sd = {("encoder.backbone." + k[len("encoder."):] if k.startswith("encoder.") else k): v
          for k, v in ref.state_dict().items()}
    # smp's encoder keeps the stages beyond encoder_depth; ours does not build them
    depth = kwargs.get("encoder_depth", 5)
    unused = tuple(f"encoder.backbone.layer{i}." for i in range(depth, 5))
    ours.load_state_dict({k: v for k, v in sd.items() if not unused or not k.startswith(unused)})  # strict
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_dilated_encoder_for_deeplab():
    model = smp_model("DeepLabV3Plus", backbone="resnet50", classes=2)  # smp asks for output stride 16
    assert model.encoder.backbone.output_stride == 16 and model.encoder.output_stride == 16
    feats = model.encoder(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4, 4]


def test_backbone_instance_is_used_as_is():
    body = create_backbone("resnet50", output_stride=16)
    model = smp_model("DeepLabV3Plus", backbone=body, classes=2)
    assert model.encoder.backbone is body
    assert not any(k.startswith("resdense-instance") for k in smp_encoders.encoders)  # transient entry removed
    with pytest.raises(ConfigError, match="output_stride=32 but the smp model asks for 16"):
        smp_model("DeepLabV3Plus", backbone=create_backbone("resnet18"), classes=2)


def test_registered_names_work_with_smp_classes_directly():
    names = register_smp_encoders(["resnet18"])
    assert names == ["resdense-resnet18"] and register_smp_encoders(["resnet18"]) == names  # idempotent
    model = smp.Unet("resdense-resnet18", encoder_weights=None, classes=2, encoder_depth=4,
                     decoder_channels=(64, 32, 16, 8))
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_weights_backbone_and_grayscale_input(tmp_path):
    sd = resnet18().state_dict()
    torch.save(sd, tmp_path / "r18.pth")
    model = smp_model("Unet", backbone="resnet18", classes=1, in_channels=1, weights_backbone=tmp_path / "r18.pth")
    conv1 = model.encoder.backbone.conv1.weight
    assert conv1.shape == (64, 1, 7, 7)
    assert_close(conv1, sd["conv1.weight"].sum(dim=1, keepdim=True))  # RGB filters summed for one channel
    assert_close(model.encoder.backbone.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown arch 'Unett'"):
        smp_model("Unett", backbone="resnet18")
    with pytest.raises(ConfigError, match="DPT needs a Vision Transformer"):
        smp_model("DPT", backbone="resnet18")
    with pytest.raises(ConfigError, match="unknown backbone 'resnet19'"):
        smp_model("Unet", backbone="resnet19")
    with pytest.raises(ConfigError, match="encoder_weights"):
        smp_model("Unet", backbone="resnet18", encoder_weights="imagenet")
