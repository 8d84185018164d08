"""resdense's smp encoders held to the contract that smp's own encoder tests check (``BaseEncoderTester`` in smp's
``tests/encoders/base.py``): forward and backward, ``in_channels`` 1/3/4, ``depth`` 3..5, output stride 8/16,
``torch.compile``, ``torch.export`` and ``torch.jit.script``, each compiled output compared with eager. Then smp's
decoders on top, and the registry: only ``register_smp_encoders`` writes to it.

The encoders are registered in a private copy of smp's registry, so this module leaves the real one as it found it.
"""

import copy
import io
import subprocess
import sys

import pytest
import segmentation_models_pytorch as smp
import segmentation_models_pytorch.encoders as smp_encoders
import torch
from torch import nn
from torch.testing import assert_close

from resdense.backbones import create_backbone, list_backbones
from resdense.errors import ConfigError
from resdense.heads import ResdenseEncoder, register_smp_encoders, smp_model

# torch.jit is deprecated (FutureWarning) and still supported; smp keeps testing it
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")

R18, R50 = "resdense-resnet18", "resdense-resnet50"
NAMES = [R18, R50]
STRIDES = [1, 2, 4, 8, 16, 32]  # of smp's layout [x, c1, ..., c5]
SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def registry():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(smp_encoders, "encoders", dict(smp_encoders.encoders))
        register_smp_encoders(["resnet18", "resnet50"])
        yield smp_encoders.encoders


def _encoder(name, **kwargs):
    return smp.encoders.get_encoder(name, encoder_weights=None, **kwargs)


@pytest.fixture(scope="module")
def reference(registry):
    """``reference(name)``: the default encoder (depth 5, output stride 32) in eval mode, built once per module for
    the tests that compare with it; they read it, never change it."""
    built = {}
    yield lambda name: built[name] if name in built else built.setdefault(name, _encoder(name).eval())
    built.clear()


def _sample(channels=3, size=SIZE):
    return torch.rand(1, channels, size, size)


def _strides(x, feats):
    """(height strides, width strides) of the maps, as smp's test measures them."""
    return [x.shape[-2] // f.shape[-2] for f in feats], [x.shape[-1] // f.shape[-1] for f in feats]


def _assert_same_features(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert_close(a, e)


# ---- smp's encoder contract --------------------------------------------------------------------------------------
def test_encoders_claim_scriptable_exportable_compilable():
    # smp's tests expect a failure from the encoders that set one of these to False; ours keep smp's True
    enc = _encoder(R18)
    assert isinstance(enc, ResdenseEncoder)
    assert enc._is_torch_scriptable and enc._is_torch_exportable and enc._is_torch_compilable


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name):
    enc = _encoder(name, in_channels=3)
    x = _sample()
    feats = enc(x)
    assert len(feats) == 6 and feats[0] is x
    feats[-1].mean().backward()
    assert all(p.grad is not None for p in enc.parameters())  # the last map depends on every parameter
    assert enc.backbone.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_in_channels(in_channels):
    enc = _encoder(R18, in_channels=in_channels).eval()  # the stem alone changes: one backbone is enough
    x = _sample(in_channels)
    with torch.inference_mode():
        feats = enc(x)
    assert enc.backbone.conv1.in_channels == in_channels and enc.out_channels[0] == in_channels
    assert [f.shape[1] for f in feats] == enc.out_channels
    assert [tuple(f.shape[-2:]) for f in feats] == [(SIZE // s, SIZE // s) for s in STRIDES]


def test_one_channel_from_rgb_filters_sees_a_gray_image_as_rgb():
    # set_in_channels(1, pretrained=True) sums the RGB filters: a gray image then gives the RGB encoder's features
    # of the same image repeated on three channels
    rgb = _encoder(R18).eval()
    gray = copy.deepcopy(rgb)
    gray.set_in_channels(1, pretrained=True)
    x = _sample(1)
    with torch.inference_mode():
        _assert_same_features(gray(x)[1:], rgb(x.expand(-1, 3, -1, -1))[1:])


@pytest.mark.parametrize("depth", [3, 4, 5])
@pytest.mark.parametrize("name", NAMES)
def test_depth(name, depth, reference):
    full = reference(name)
    enc = _encoder(name, depth=depth).eval()
    assert enc.load_state_dict(full.state_dict(), strict=False).missing_keys == []  # a prefix of the full encoder
    x = _sample()
    with torch.inference_mode():
        feats, full_feats = enc(x), full(x)
    assert len(feats) == depth + 1 and len(enc.out_channels) == depth + 1
    assert [f.shape[1] for f in feats] == enc.out_channels == full.out_channels[: depth + 1]
    assert _strides(x, feats) == (STRIDES[: depth + 1], STRIDES[: depth + 1])
    assert enc.output_stride == STRIDES[depth]
    _assert_same_features(feats, full_feats[: depth + 1])


def test_invalid_depth():
    for depth in (0, 6):
        with pytest.raises(ValueError, match="depth"):
            _encoder(R18, depth=depth)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", NAMES)
def test_dilated(name, output_stride, reference):
    plain = reference(name)
    enc = _encoder(name, output_stride=output_stride).eval()  # get_encoder builds it, then calls make_dilated
    enc.load_state_dict(plain.state_dict())  # dilation changes no weight
    x = _sample()
    with torch.inference_mode():
        feats, plain_feats = enc(x), plain(x)
    expected = [min(s, output_stride) for s in STRIDES]
    assert _strides(x, feats) == (expected, expected)
    assert enc.output_stride == output_stride and enc.backbone.output_stride == output_stride
    assert [f.shape[1] for f in feats] == enc.out_channels == plain.out_channels
    kept = sum(s <= output_stride for s in STRIDES)  # maps before the first dilated stage are unchanged
    _assert_same_features(feats[:kept], plain_feats[:kept])
    # the stages smp would dilate (get_stages) trade their stride for dilation stage_stride // output_stride
    for stage_stride, modules in enc.get_stages().items():
        convs = [m for module in modules for m in module.modules() if isinstance(m, nn.Conv2d)]
        if stage_stride > output_stride:
            assert all(c.stride == (1, 1) for c in convs)
            assert max(c.dilation[0] for c in convs) == stage_stride // output_stride
        else:
            assert all(c.dilation == (1, 1) for c in convs)
    enc.make_dilated(output_stride)  # what get_encoder asked: accepted again, nothing changes
    with pytest.raises(ValueError, match=f"built with output_stride={output_stride}"):
        enc.make_dilated(24 - output_stride)  # the other one of 8 and 16


def test_torch_compile_inductor():
    # Inductor itself, not the "eager" backend of smp's test. A cold compile on a small CPU is mostly its C++
    # compiler: measured for this encoder, 36 CPU seconds (compiler processes included) with the default -O3
    # vectorised kernels, 19 s with scalar kernels at -O0 (the settings below), about 3 s from a warm cache. Graph
    # capture (fullgraph: no graph break), decomposition, lowering and code generation are the same.
    enc = _encoder(R18).eval()
    x = _sample()
    torch.compiler.reset()
    try:
        with torch._inductor.config.patch({"cpp.vec_isa_ok": False, "aot_inductor.debug_compile": True}):
            compiled = torch.compile(enc, fullgraph=True, backend="inductor")
            with torch.inference_mode():
                _assert_same_features(compiled(x), enc(x))
    finally:
        torch.compiler.reset()


def test_torch_export():
    enc = _encoder(R18).eval()
    x = _sample()
    exported = torch.export.export(enc, args=(x,), strict=True)
    with torch.inference_mode():
        _assert_same_features(exported.module()(x), enc(x))


@pytest.mark.parametrize("name,kwargs", [(R18, {}), (R50, {}), (R18, {"depth": 3, "in_channels": 1}),
                                         (R18, {"output_stride": 8})])
def test_torch_script(name, kwargs):
    enc = _encoder(name, **kwargs).eval()
    scripted = torch.jit.script(enc)
    x = _sample(kwargs.get("in_channels", 3))
    with torch.inference_mode():
        _assert_same_features(scripted(x), enc(x))


def test_scripted_encoder_saves_and_loads():
    enc = _encoder(R18).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(enc), buffer)
    buffer.seek(0)
    reloaded = torch.jit.load(buffer)  # a self-contained TorchScript module, no calls back into Python
    x = _sample()
    with torch.inference_mode():
        _assert_same_features(reloaded(x), enc(x))


def test_scripted_encoder_trains():
    enc = _encoder(R18).train()
    ref = copy.deepcopy(enc)
    scripted = torch.jit.script(enc)  # shares enc's parameters
    x = _sample()
    out, ref_out = scripted(x), ref(x)
    _assert_same_features(out, ref_out)
    out[-1].mean().backward()
    ref_out[-1].mean().backward()
    assert_close(scripted.backbone.conv1.weight.grad, ref.backbone.conv1.weight.grad)


# ---- smp's decoders on the encoders ------------------------------------------------------------------------------
def test_smp_unet_on_resdense_encoder_scripts_and_exports():
    model = smp.Unet(R18, encoder_weights=None, classes=2).eval()
    x = _sample()
    with torch.inference_mode():
        eager = model(x)
    assert eager.shape == (1, 2, SIZE, SIZE)
    scripted = torch.jit.script(model)
    exported = torch.export.export(model, args=(x,), strict=True)
    with torch.inference_mode():
        assert_close(scripted(x), eager)
        assert_close(exported.module()(x), eager)


def test_smp_deeplab_on_dilated_resdense_encoder_scripts():
    model = smp.DeepLabV3Plus(R18, encoder_weights=None, classes=2).eval()  # smp asks for output stride 16
    assert model.encoder.output_stride == 16
    x = _sample()
    scripted = torch.jit.script(model)
    with torch.inference_mode():
        assert_close(scripted(x), model(x))


# ---- the registry ------------------------------------------------------------------------------------------------
class _ReadOnlyDict(dict):
    def _refuse(self, *args, **kwargs):
        raise AssertionError("smp's encoder registry was written to")

    __setitem__ = __delitem__ = __ior__ = update = pop = popitem = setdefault = clear = _refuse


def test_smp_model_leaves_smp_registry_untouched(monkeypatch):
    registry = _ReadOnlyDict(smp_encoders.encoders)  # any write during smp_model fails the test
    monkeypatch.setattr(smp_encoders, "encoders", registry)
    before = dict(registry)
    by_name = smp_model("Unet", backbone="resnet34", classes=2)  # a name nobody registered
    body = create_backbone("resnet18", output_stride=16)
    by_instance = smp_model("DeepLabV3Plus", backbone=body, classes=2)
    assert smp_encoders.encoders is registry
    assert list(registry) == list(before) and all(registry[k] is before[k] for k in before)
    assert "resdense-resnet34" not in registry and by_instance.encoder.backbone is body
    with torch.inference_mode():
        assert by_name.eval()(_sample()).shape == (1, 2, SIZE, SIZE)
        assert by_instance.eval()(_sample()).shape == (1, 2, SIZE, SIZE)
    with pytest.raises(KeyError, match="resdense-resnet34"):  # smp's classes still need register_smp_encoders
        smp.Unet("resdense-resnet34", encoder_weights=None)


def test_register_smp_encoders_is_the_one_writer(monkeypatch):
    monkeypatch.setattr(smp_encoders, "encoders", {k: v for k, v in smp_encoders.encoders.items()
                                                   if not k.startswith("resdense-")})
    before = dict(smp_encoders.encoders)
    assert register_smp_encoders(["resnet34"]) == ["resdense-resnet34"]
    assert set(smp_encoders.encoders) - set(before) == {"resdense-resnet34"}
    assert register_smp_encoders(["resnet34"]) == ["resdense-resnet34"]  # again: a no-op
    names = register_smp_encoders()  # every backbone
    assert names == ["resdense-" + n for n in list_backbones()]
    assert set(smp_encoders.encoders) - set(before) == set(names)
    assert all(smp_encoders.encoders[k] is v for k, v in before.items())  # smp's own entries untouched
    smp_encoders.encoders["resdense-resnet101"] = smp_encoders.encoders["resnet101"]
    with pytest.raises(ConfigError, match="already taken by ResNetEncoder"):
        register_smp_encoders(["resnet101"])


def test_importing_resdense_registers_nothing():
    code = ("import resdense.heads; import segmentation_models_pytorch.encoders as e; "
            "print(sorted(k for k in e.encoders if k.startswith('resdense-')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
