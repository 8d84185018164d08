"""UNet: any input size, parity with smp.Unet on the same weights, and real learning on the ISBI membrane images."""

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from PIL import Image
from torch.testing import assert_close

from resdense.backbones import create_backbone
from resdense.errors import ConfigError
from resdense.heads import UNet, map_smp_unet_keys


@pytest.mark.parametrize("backbone,num_classes,in_channels", [
    ("resnet18", 1, 3), ("resnet34", 4, 1), ("resnet50", 3, 3), ("resnext50_32x4d", 2, 3),
])
def test_output_matches_odd_input_sizes(backbone, num_classes, in_channels):
    model = UNet(backbone, num_classes, in_channels=in_channels).eval()
    with torch.no_grad():
        for h, w in ((97, 131), (33, 65)):
            assert model(torch.rand(2, in_channels, h, w)).shape == (2, num_classes, h, w)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34"])
def test_equals_smp_unet_with_the_same_weights(backbone):
    ref = smp.Unet(backbone, encoder_weights=None, classes=3).eval()
    ours = UNet(backbone, 3).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ours.load_state_dict(map_smp_unet_keys(ref.state_dict()))  # strict: every key maps
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        assert_close(ours(x), ref(x), rtol=0, atol=0)
        # odd sizes: documented as zero padding at the bottom/right to a multiple of 32, then cropping
        x = torch.rand(1, 3, 97, 131)
        want = ref(F.pad(x, (0, 160 - 131, 0, 128 - 97)))[..., :97, :131]
        assert_close(ours(x), want, rtol=0, atol=0)


def test_backbone_instance_is_widened_and_depth_follows_decoder_channels():
    body = create_backbone("resnet18")  # c2..c5 by default; the U-Net also needs c1
    model = UNet(body, 2, decoder_channels=(128, 64, 32, 16))
    assert model.backbone is body and body.out_features == ("c1", "c2", "c3", "c4", "c5")
    assert model.in_features == ("c1", "c2", "c3", "c4") and model.size_divisibility == 16
    assert model(torch.rand(1, 3, 50, 70)).shape == (1, 2, 50, 70)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="num_classes=0 must be a positive int"):
        UNet("resnet18", 0)
    with pytest.raises(ConfigError, match="decoder_channels"):
        UNet("resnet18", 2, decoder_channels=(256, 128, 64, 32, 16, 8))
    with pytest.raises(ConfigError, match="in_channels=1 but the backbone instance takes 3"):
        UNet(create_backbone("resnet18"), 2, in_channels=1)
    with pytest.raises(ConfigError, match="weights_backbone"):
        UNet(create_backbone("resnet18"), 2, weights_backbone="imagenet")


def _membrane_batch(root, n=2, size=64):
    images, masks = [], []
    for i in range(n):
        img = np.asarray(Image.open(root / "membrane" / "images" / f"{i}.png"), dtype=np.float32) / 255.0
        msk = np.asarray(Image.open(root / "membrane" / "masks" / f"{i}.png")) > 127
        images.append(img[100:100 + size, 200:200 + size])
        masks.append(msk[100:100 + size, 200:200 + size])
    x = torch.from_numpy(np.stack(images))[:, None]
    x = (x - x.mean()) / x.std()
    return x, torch.from_numpy(np.stack(masks)).float()[:, None]


def test_unet_overfits_a_fixed_membrane_batch(shared_data):
    """Binary U-Net (one logit, grayscale input) on two real 64x64 EM crops: BCE halves within 24 steps."""
    x, y = _membrane_batch(shared_data)
    model = UNet("resnet18", num_classes=1, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(24):
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        accuracy = ((model(x) > 0) == (y > 0.5)).float().mean().item()
    assert accuracy > 0.9, accuracy
