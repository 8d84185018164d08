"""Our backbones give torchvision's / timm's / smp's outputs when loaded with their weights."""

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.testing import assert_close

from resdense.backbones import create_backbone
from resdense.heads import create_classifier
from tests.backbones.reference import ALL_ARCHS, randomize_norm_stats, torchvision_features, torchvision_model

ATOL = 1e-5


@pytest.mark.parametrize("name", ALL_ARCHS)
def test_torchvision_checkpoint_gives_same_features_and_logits(name, tmp_path, image):
    ref = torchvision_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)

    ours = create_backbone(name, weights=path).eval()
    assert ours.load_report.dropped == ["fc.weight", "fc.bias"]  # the classifier is dropped for features
    assert not ours.load_report.missing and not ours.load_report.unexpected
    with torch.no_grad():
        want = torchvision_features(ref, image)
        got = ours(image)
        assert list(got) == ["c2", "c3", "c4", "c5"]
        for k in got:
            assert_close(got[k], want[k], atol=ATOL, rtol=1e-5)

        clf = create_classifier(name, weights=path).eval()
        assert_close(clf(image), ref(image), atol=ATOL, rtol=1e-5)


def test_classifier_loads_torchvision_state_dict_strictly():
    ref = torchvision_model("resnet18")
    ours = create_classifier("resnet18")
    ours.load_state_dict(ref.state_dict(), strict=True)  # module names are torchvision's


def test_safetensors_and_wrapped_checkpoints(tmp_path, image):
    ref = torchvision_model("resnet18", seed=3)
    sd = ref.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    torch.save({"model": sd, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pt")
    want = torchvision_features(ref, image)
    for fname in ("w.safetensors", "ddp.pth", "ckpt.pt"):
        ours = create_backbone("resnet18", weights=tmp_path / fname).eval()
        with torch.no_grad():
            assert_close(ours(image)["c5"], want["c5"], atol=ATOL, rtol=1e-5)


def test_checkpoint_with_weight_average_loads_the_average(tmp_path, image):
    """A checkpoint holding an EMA is read as the EMA (timm's use_ema=True): a resdense run's {"ema": {"weights"}}
    (the weights it evaluated) and timm's state_dict_ema, never the raw trained weights beside them."""
    avg, raw = torchvision_model("resnet18", seed=3), torchvision_model("resnet18", seed=4)
    want = torchvision_features(avg, image)["c5"]
    torch.save({"model": raw.state_dict(), "ema": {"weights": avg.state_dict(), "updates": 7}}, tmp_path / "run.pt")
    torch.save({"state_dict": raw.state_dict(), "state_dict_ema": avg.state_dict()}, tmp_path / "timm.pth")
    for fname in ("run.pt", "timm.pth"):
        ours = create_backbone("resnet18", weights=tmp_path / fname).eval()
        with torch.no_grad():
            assert_close(ours(image)["c5"], want, atol=ATOL, rtol=1e-5)


def test_timm_resnet50_state_dict(tmp_path, image):
    torch.manual_seed(0)
    ref = randomize_norm_stats(timm.create_model("resnet50", pretrained=False))
    torch.save(ref.state_dict(), tmp_path / "timm_r50.pth")
    feats = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(0, 1, 2, 3, 4))
    feats.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    ours = create_backbone("resnet50", weights=tmp_path / "timm_r50.pth", out_features=("c1", "c2", "c3", "c4", "c5"))
    with torch.no_grad():
        want = feats.eval()(image)
        got = ours.eval()(image)
    for w, (name, g) in zip(want, got.items(), strict=True):
        assert_close(g, w, atol=ATOL, rtol=1e-5, msg=name)


def test_smp_resnet34_encoder_and_full_model_state_dicts(tmp_path, image):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    unet = smp.Unet("resnet34", encoder_weights=None, classes=2)
    randomize_norm_stats(unet.encoder)
    torch.save(unet.encoder.state_dict(), tmp_path / "enc.pth")
    torch.save(unet.state_dict(), tmp_path / "unet.pth")
    with torch.no_grad():
        want = unet.encoder.eval()(image)[1:]  # smp returns [input, c1, c2, c3, c4, c5]
    for fname, layout in (("enc.pth", "torchvision"), ("unet.pth", "smp")):
        ours = create_backbone("resnet34", weights=tmp_path / fname, out_features=("c1", "c2", "c3", "c4", "c5")).eval()
        assert ours.load_report.layout == layout
        with torch.no_grad():
            got = list(ours(image).values())
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, atol=ATOL, rtol=1e-5)
    assert any(k.startswith("decoder.") for k in ours.load_report.dropped)


@pytest.mark.parametrize("name,output_stride", [("resnet50", 16), ("resnet50", 8), ("resnext50_32x4d", 8)])
def test_dilated_backbone_matches_torchvision_replace_stride_with_dilation(name, output_stride, tmp_path, image):
    dil = [False, output_stride == 8, True]
    ref = torchvision_model(name, replace_stride_with_dilation=dil)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = create_backbone(name, weights=tmp_path / "w.pth", output_stride=output_stride).eval()
    with torch.no_grad():
        want, got = torchvision_features(ref, image), ours(image)
    for k in got:
        assert_close(got[k], want[k], atol=ATOL, rtol=1e-5)
    assert ours.strides["c5"] == output_stride


def test_frozen_bn_gives_eval_outputs_in_train_mode(tmp_path, image):
    ref = torchvision_model("resnet18", seed=5)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    ours = create_backbone("resnet18", weights=tmp_path / "w.pth", norm="frozen_bn").train()
    with torch.no_grad():
        assert_close(ours(image)["c5"], torchvision_features(ref, image)["c5"], atol=ATOL, rtol=1e-5)
