"""ImageNet tags resolve to torchvision's declared weights; the inference mode keeps outputs."""

import copy
import io

import pytest
import torch
from torch.testing import assert_close

from resdense.backbones import create_backbone, optimize_for_inference
from resdense.backbones.inference import FusedConv2d, _onednn_fused_conv_works, _onednn_ops
from resdense.backbones.weights import resolve_weights
from resdense.errors import ConfigError
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


@pytest.mark.parametrize("name,kwargs,fused", [
    ("resnet50", {}, 53),  # every conv: stem + 16 blocks x 3 + 4 shortcuts
    ("resnet18", {"norm": "frozen_bn"}, 20),
    ("resnext50_32x4d", {"output_stride": 8}, 53),  # grouped + dilated convolutions
    ("wide_resnet50_2", {"out_features": ("c1", "c2")}, 11),  # c1 comes out of the fused stem conv + ReLU
    ("resnet34", {"norm": "gn"}, 0),  # GroupNorm has nothing to fold: blocks stay as they are
])
def test_inference_mode_matches_eager_within_1e4(name, kwargs, fused):
    torch.manual_seed(0)
    net = randomize_norm_stats(create_backbone(name, **kwargs))
    fast = optimize_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, FusedConv2d) for m in fast.modules()) == fused
    assert fast.feature_info == net.feature_info
    for shape in [(2, 3, 64, 96), (1, 3, 37, 45), (2, 3, 64, 96)]:  # a new shape repacks the weights
        x = torch.randn(shape)
        with torch.no_grad():
            want = net.eval()(x)
        got = fast(x)
        assert list(got) == list(want)
        for k in want:
            assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)
    assert net.bn1.__class__.__name__ != "Identity"  # the original is untouched


def test_fused_path_runs_onednn_kernels_on_cpu():
    """The speed of the inference mode on a CPU comes from oneDNN's fused kernels; if this torch lost them the
    portable path would still be correct but slow, and this test says so."""
    assert _onednn_fused_conv_works()
    fast = optimize_for_inference(create_backbone("resnet18"))
    with torch.profiler.profile() as prof:
        fast(torch.randn(1, 3, 64, 64))
    ops = {e.key: e.count for e in prof.key_averages()}
    assert "mkldnn::_convolution_pointwise" in ops and "aten::conv2d" not in ops
    # The shortcut sum lands in a buffer the block owns (a downsample's output, or the previous block's output) in
    # all 8 blocks but layer1.0, whose input is the max-pool output.
    assert ops["mkldnn::_convolution_pointwise_"] == 7


def test_fused_block_leaves_its_input_alone_unless_it_owns_it():
    from resdense.backbones.inference import fold_batchnorm, fuse_blocks

    torch.manual_seed(0)
    stage = randomize_norm_stats(create_backbone("resnet18")).layer1.eval()  # two blocks, no downsample
    fused = fuse_blocks(fold_batchnorm(copy.deepcopy(stage)))
    assert [m.owns_input for m in fused] == [False, True]
    x = torch.randn(2, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = stage(x)
        kept = x.clone()
        assert_close(fused(x), want, atol=1e-5, rtol=1e-5)
        assert torch.equal(x, kept)
        first = fused[0](x)
        out = fused[1](first)
        assert out.data_ptr() == first.data_ptr()  # the second block wrote into its input's buffer


def test_fused_conv_portable_path_equals_onednn_path_and_keeps_autograd():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2, groups=4, bias=False)
    fused = FusedConv2d(conv, relu=True)
    x = torch.randn(2, 16, 15, 17).contiguous(memory_format=torch.channels_last)
    res = torch.randn(2, 32, 8, 9)
    want = torch.relu(conv(x) + res).detach()
    with torch.no_grad():
        assert_close(fused(x, res), want, atol=1e-5, rtol=1e-5)  # oneDNN
    x.requires_grad_(True)
    out = fused(x, res)  # autograd needed: F.conv2d path
    assert_close(out, want, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fused_conv_repacks_after_a_weight_change_and_copies_cleanly():
    torch.manual_seed(0)
    fused = FusedConv2d(torch.nn.Conv2d(8, 8, 3, padding=1), relu=False)
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        before = fused(x)
        fused.weight.mul_(2)  # in place: the packed copy must follow
        after = fused(x)
        assert_close(after - fused.bias.view(1, -1, 1, 1), 2 * (before - fused.bias.view(1, -1, 1, 1)))
        clone = copy.deepcopy(fused)  # the opaque packed tensor is not copied; the clone repacks
        assert_close(clone(x), after)
        buffer = io.BytesIO()
        torch.save(fused.state_dict(), buffer)
        assert set(fused.state_dict()) == {"weight", "bias"}


def _op_counts(fn) -> dict[str, int]:
    with torch.profiler.profile() as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages()}


def test_fused_conv_repacks_after_dtype_round_trip_and_load_state_dict():
    torch.manual_seed(0)
    fused = FusedConv2d(torch.nn.Conv2d(8, 8, 3, padding=1), relu=False)
    x = torch.randn(1, 8, 10, 10)
    repacks = lambda: _op_counts(lambda: fused(x)).get("mkldnn::_reorder_convolution_weight", 0)  # noqa: E731
    with torch.no_grad():
        fused(x)
        assert repacks() == 0  # packed once, reused
        # .to() conversions may put new storage at the old address with a fresh version counter (a bf16 -> float
        # round trip), so every conversion drops the cache; a no-op .float() keeps address and version, which makes
        # it the case only that rule can tell apart.
        fused.float()
        assert repacks() == 1
        fused.to(torch.bfloat16).float()
        assert repacks() == 1
        assert_close(fused(x), torch.nn.functional.conv2d(x, fused.weight, fused.bias, padding=1), atol=1e-5,
                     rtol=1e-5)
        other = {k: torch.randn_like(v) for k, v in fused.state_dict().items()}
        fused.load_state_dict(other)
        want = torch.nn.functional.conv2d(x, other["weight"], other["bias"], padding=1)
        assert_close(fused(x), want, atol=1e-5, rtol=1e-5)
        fused.weight.data.mul_(3)  # bypasses the version counter: documented, reset by hand
        fused.reset_packed_weight()
        assert_close(fused(x), torch.nn.functional.conv2d(x, 3 * other["weight"], other["bias"], padding=1),
                     atol=1e-5, rtol=1e-5)


def test_fused_conv_takes_the_autograd_path_when_any_operand_needs_grad():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    fused = FusedConv2d(conv, relu=True)
    x, res = torch.randn(1, 8, 10, 10), torch.randn(1, 8, 10, 10)
    for needs_grad in (fused.weight, fused.bias, res):
        needs_grad.requires_grad_(True)
        out = fused(x, res)
        assert out.grad_fn is not None
        out.sum().backward()
        assert needs_grad.grad is not None and needs_grad.grad.abs().sum() > 0
        needs_grad.requires_grad_(False)
    assert fused(x, res).grad_fn is None


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's own, from mkldnn.flags()
def test_fused_conv_follows_the_mkldnn_switch_at_call_time():
    fused = FusedConv2d(torch.nn.Conv2d(8, 8, 3, padding=1), relu=True)
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        want = fused(x)
        _onednn_ops.cache_clear()
        with torch.backends.mkldnn.flags(enabled=False):
            ops = _op_counts(lambda: assert_close(fused(x), want, atol=1e-5, rtol=1e-5))
        assert "mkldnn::_convolution_pointwise" not in ops and "aten::conv2d" in ops
        # the first (cached) probe ran with oneDNN switched off; switched on again, the fused kernel is back
        ops = _op_counts(lambda: assert_close(fused(x), want, atol=1e-5, rtol=1e-5))
    assert "mkldnn::_convolution_pointwise" in ops


def test_compiled_inference_mode_refuses_load_state_dict():
    net = create_backbone("resnet18", out_features=("c3",))
    fast = optimize_for_inference(net, compile=True)  # lazy: nothing compiles until the first call
    with pytest.raises(RuntimeError, match=r"froze the weights .* call optimize_for_inference again"):
        fast.load_state_dict(fast.state_dict())
    plain = optimize_for_inference(net)
    plain.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])  # resnet18's layer1.0 adds into a fresh tensor
def test_bfloat16_inference_mode_is_as_close_as_autocast(name):
    torch.manual_seed(0)
    net = randomize_norm_stats(create_backbone(name, out_features=("c2", "c5"))).eval()
    fast = optimize_for_inference(net, dtype=torch.bfloat16)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = net(x)
    ops = _op_counts(lambda: fast(x))
    got = fast(x)
    for k in want:
        assert got[k].dtype == torch.bfloat16
        scale = want[k].abs().max()
        err = (got[k].float() - want[k]).abs().max() / scale
        err_autocast = (autocast[k].float() - want[k]).abs().max() / scale
        assert err < max(2 * err_autocast, 1e-2), (k, err, err_autocast)
    # the fused bf16 kernels wherever the CPU has native bf16 and oneDNN may use it (ONEDNN_MAX_CPU_ISA=AVX2 caps it);
    # F.conv2d elsewhere
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported() and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert ("mkldnn::_convolution_pointwise" in ops) == native
    # converting the module back converts the inputs it expects
    back = fast.float()(x)
    for k in want:
        assert back[k].dtype == torch.float32
        assert_close(back[k], want[k], atol=0.05 * float(want[k].abs().max()), rtol=0)


def test_inference_mode_under_autocast_leaves_the_dtype_to_autocast():
    torch.manual_seed(0)
    net = randomize_norm_stats(create_backbone("resnet18", out_features=("c3",))).eval()
    fast = optimize_for_inference(net)
    x = torch.randn(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ops = _op_counts(lambda: fast(x))
        got = fast(x)["c3"]
        with torch.no_grad():
            want = net(x)["c3"]
    assert got.dtype == want.dtype == torch.bfloat16 and "mkldnn::_convolution_pointwise" not in ops
    assert ((got.float() - want.float()).abs().max() / want.float().abs().max()) < 2e-2


def test_inference_mode_is_also_a_backbone_method():
    torch.manual_seed(0)
    net = randomize_norm_stats(create_backbone("resnet18", out_features=("c4",))).eval()
    x = torch.randn(1, 3, 64, 64)
    fast = net.optimize_for_inference(channels_last=False)
    assert not fast.channels_last and fast.feature_info == net.feature_info
    assert_close(fast(x), optimize_for_inference(net)(x), atol=1e-5, rtol=1e-5)


def test_inference_dtype_is_checked():
    with pytest.raises(ConfigError, match=r"optimize_for_inference: dtype=torch.int8 must be torch.float32, "):
        optimize_for_inference(create_backbone("resnet18"), dtype=torch.int8)


@pytest.mark.slow
def test_compiled_inference_mode_matches_eager_with_frozen_prepacked_weights():
    from torch._dynamo.utils import counters

    counters.clear()
    torch.manual_seed(0)
    net = randomize_norm_stats(create_backbone("resnet18", out_features=("c3", "c5")))
    fast = optimize_for_inference(net, compile=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = net(x)
    got = fast(x)
    for k in want:
        assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)
    # inductor froze the weights and packed every convolution for oneDNN (its counter for that pass)
    assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] == 20  # stem + 8 blocks x 2 + 3 shortcuts
