"""int8 post-training quantization of the backbone (resdense.backbones.quantize): agreement with float32 within a
stated tolerance, int8 kernels actually in the graph, and one-line refusals of bad calibration input."""

import pytest
import torch
import torch.nn.functional as F

from resdense.backbones import create_backbone, quantize_backbone
from resdense.backbones.quantize import calibration_batches
from resdense.errors import ConfigError

from .reference import randomize_norm_stats

# Tolerance: per image and per feature map, cosine similarity of int8 vs float32 >= 0.99 (observed ~0.999).
MIN_COSINE = 0.99


def _cosines(ref: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(ref.flatten(1), got.flatten(1), dim=1)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return randomize_norm_stats(create_backbone("resnet18"))


@pytest.fixture(scope="module")
def int8_resnet18(resnet18):
    g = torch.Generator().manual_seed(1)
    return quantize_backbone(resnet18, torch.randn(8, 3, 64, 64, generator=g), n=8)


def test_int8_backbone_matches_float32_per_feature_map(resnet18, int8_resnet18):
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # not the calibration images
    with torch.no_grad():
        ref = resnet18(x)
    got = int8_resnet18(x)
    assert list(got) == list(ref) == ["c2", "c3", "c4", "c5"]
    assert int8_resnet18.feature_info == resnet18.feature_info
    for name in ref:
        assert got[name].shape == ref[name].shape and got[name].dtype == torch.float32
        assert _cosines(ref[name], got[name]).min() >= MIN_COSINE, name


def test_int8_backbone_runs_int8_kernels(int8_resnet18):
    # A float graph would also pass the tolerance above: check that every convolution became an int8 one.
    kinds = {type(m).__module__ for m in int8_resnet18.modules() if "Conv" in type(m).__name__}
    assert kinds and all(k.startswith("torch.ao.nn.intrinsic.quantized") or k.startswith("torch.ao.nn.quantized")
                         for k in kinds), kinds
    assert "quantized.add_relu" in int8_resnet18.graph.code  # residual add + ReLU in int8


def test_int8_backbone_keeps_out_features_and_accepts_a_loader_of_pairs(resnet18):
    torch.manual_seed(0)
    small = randomize_norm_stats(create_backbone("resnet18", out_features=("c1", "c3")))
    pairs = [(torch.randn(3, 64, 64), torch.zeros(64, 64)) for _ in range(4)]  # a dataset of (image, mask)
    q = quantize_backbone(small, pairs, n=4)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = small(x)
    got = q(x)
    assert list(got) == ["c1", "c3"]
    assert all(_cosines(ref[k], got[k]).min() >= MIN_COSINE for k in ref)


def test_calibration_batches_take_the_first_n_images_and_split_sizes():
    images = [torch.full((3, 8, 8), float(i)) for i in range(5)] + [torch.zeros(3, 16, 16)]
    batches = calibration_batches(images, n=6, batch_size=2)
    assert [tuple(b.shape) for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8), (1, 3, 16, 16)]
    assert [b[:, 0, 0, 0].tolist() for b in calibration_batches(torch.stack(images[:5]), n=3)] == [[0.0, 1.0, 2.0]]


@pytest.mark.parametrize("calibration, n, message", [
    (torch.zeros(0, 3, 64, 64), 8, "no images to calibrate on"),
    ([], 8, "no images to calibrate on"),
    (torch.zeros(2, 3, 64, 64), 0, "n=0 must be a positive int"),
    (["a.jpg"], 8, "expected image tensors"),
    ([torch.zeros(64, 64)], 8, "expected images [C, H, W]"),
])
def test_bad_calibration_is_a_one_line_error(resnet18, calibration, n, message):
    with pytest.raises(ConfigError) as err:
        quantize_backbone(resnet18, calibration, n=n)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_refusals_name_the_problem(int8_resnet18):
    with pytest.raises(ConfigError, match="expected a resdense ResNet, got Conv2d"):
        quantize_backbone(torch.nn.Conv2d(3, 8, 3), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected input \[N, 3, H, W\], got \[2, 1, 64, 64\]"):
        int8_resnet18(torch.zeros(2, 1, 64, 64))


def test_fx_traces_the_resnet_itself_input_check_included():
    net = create_backbone("resnet18", in_channels=4, out_features=("c1", "c3", "c5")).eval()
    graph = torch.fx.symbolic_trace(net)
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        out, ref = graph(x), net(x)
    assert list(out) == list(ref) and all(torch.equal(out[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match=r"^resnet18: expected input \[N, 4, H, W\], got \[1, 3, 64, 64\]$"):
        graph(torch.randn(1, 3, 64, 64))  # the traced graph keeps the eager model's one-line check
