"""The int8 U-Net (resdense.heads.quantized) against float32 with a stated tolerance, on a small calibrated model."""

import pytest
import torch
import torch.nn.functional as F

from resdense.errors import ConfigError
from resdense.heads import QuantizedUNet, UNet, quantize_unet
from tests.backbones.reference import randomize_norm_stats

# Tolerances, per image: cosine similarity of int8 vs float32 logits >= 0.99 (observed ~0.998), and the same class
# at >= 90% of the pixels. An untrained U-Net has near-tied logits, so argmax is the stricter test here; on the
# trained demo U-Net benchmarks/int8_speed.py --quality reports the mIoU of both.
MIN_COSINE = 0.99
MIN_ARGMAX_AGREEMENT = 0.90


@pytest.fixture(scope="module")
def unet_pair():
    torch.manual_seed(0)
    unet = randomize_norm_stats(UNet("resnet18", num_classes=4, decoder_channels=(32, 16, 16, 16, 16)))
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return unet, quantize_unet(unet, [(img, None) for img in images], n=6)


def test_int8_unet_matches_float32_logits(unet_pair):
    unet, q = unet_pair
    x = torch.randn(3, 3, 70, 50, generator=torch.Generator().manual_seed(2))  # padded to 96 x 64 and cropped back
    with torch.no_grad():
        ref = unet(x)
    got = q(x)
    assert isinstance(q, QuantizedUNet) and got.shape == ref.shape == (3, 4, 70, 50) and got.dtype == torch.float32
    cosine = F.cosine_similarity(ref.flatten(1), got.flatten(1), dim=1)
    agreement = (ref.argmax(1) == got.argmax(1)).flatten(1).float().mean(1)
    assert cosine.min() >= MIN_COSINE, cosine
    assert agreement.min() >= MIN_ARGMAX_AGREEMENT, agreement
    # one int8 graph: the input quantized once, only the logits dequantized
    assert q.core.graph.code.count("quantize_per_tensor(") == 1 and q.core.graph.code.count(".dequantize()") == 1


def test_quantize_unet_refuses_what_it_cannot_quantize():
    with pytest.raises(ConfigError, match="expected a UNet on a resdense ResNet, got Conv2d"):
        quantize_unet(torch.nn.Conv2d(3, 4, 1), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="no images to calibrate on") as err:
        quantize_unet(UNet("resnet18", num_classes=2, decoder_channels=(16,)), [])
    assert "\n" not in str(err.value)
