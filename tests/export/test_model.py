"""Whole-model export (resdense.export.model): onnxruntime / TorchScript / torch.export against eager, on tiny
random-init models at two input sizes (the export size and another one, batch 2 for dense models), detectors also
with zero detections (a blank image under a raised score threshold)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn
from torch.testing import assert_close

from resdense.errors import ConfigError
from resdense.export.model import TOLERANCES, ExportError, export_model, match_detections
from resdense.heads import KINDS, UNet, build_detector

SIZE = (128, 160)


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet("resnet18", num_classes=3, decoder_channels=[16] * 5)


def tiny_detector(kind: str) -> nn.Module:
    """ResNet-18 + a 32-channel FPN (FCOS's GroupNorm takes 32 groups) at 128-160 px, every detection kept (score threshold 0, 50 per image). The
    classification layers get a wide random init: with torchvision's init every score is ~the prior (0.01 for
    RetinaNet), and ties break differently in onnxruntime and torch, which would compare different detections."""
    torch.manual_seed(0)
    two_stage = kind in ("faster_rcnn", "mask_rcnn")
    kw = ({"box_score_thresh": 0.0, "box_detections_per_img": 50, "representation_size": 32} if two_stage
          else {"score_thresh": 0.0, "detections_per_img": 50})
    model = build_detector(kind, backbone="resnet18", num_classes=4, min_size=128, max_size=160, fpn_channels=32,
                           **kw).eval()
    for name, module in model.named_modules():
        if name.endswith(("cls_logits", "cls_score")):
            nn.init.normal_(module.weight, std=0.5)
            nn.init.normal_(module.bias, std=1.0)
    return model


def test_unet_onnx_matches_eager_at_other_sizes_and_batch_2(tmp_path):
    model = tiny_unet().eval()
    result = export_model(model, tmp_path / "unet.onnx", input_size=SIZE)
    assert [c.size for c in result.checks] == [(1, *SIZE), (2, 192, 128)] and all(c.ok for c in result.checks)
    session = ort.InferenceSession(str(tmp_path / "unet.onnx"))
    for shape in [(2, 3, 96, 224), (1, 3, 100, 150)]:  # a multiple of 32, and one the graph pads and crops back
        x = torch.randn(*shape)
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        with torch.no_grad():
            want = model(x)
        assert got.shape == want.shape
        assert_close(got, want, atol=TOLERANCES["dense"] * float(want.abs().max()), rtol=0)


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_unet_torchscript_and_pt2(fmt, tmp_path):
    result = export_model(tiny_unet(), tmp_path / f"unet.{fmt}", format=fmt, input_size=SIZE)
    assert result.path.exists() and len(result.checks) == 2 and all(c.ok for c in result.checks)


def _ort_detections(session, image: torch.Tensor) -> dict[str, torch.Tensor]:
    names = [o.name for o in session.get_outputs()]
    return {n: torch.from_numpy(np.asarray(v)) for n, v in zip(names, session.run(None, {"image": image.numpy()}),
                                                                 strict=True)}


def blank_finds_nothing(model: nn.Module) -> None:
    """Raise a two-stage detector's score threshold just above its best score on a blank grey image: that image
    then has zero detections, as it has for a trained detector, while random images keep most of theirs (a random
    one-stage head scores the blank image as high as noise, so this is for Faster / Mask R-CNN)."""
    with torch.no_grad():
        top = float(model([torch.full((3, *SIZE), 0.5)])[0]["scores"].max())
    model.roi_heads.score_thresh = top + 0.02


@pytest.mark.parametrize("kind", KINDS)
def test_detector_onnx_matches_eager_at_two_sizes_and_with_zero_detections(kind, tmp_path):
    model = tiny_detector(kind)
    zero = kind in ("faster_rcnn", "mask_rcnn")
    if zero:
        blank_finds_nothing(model)
    given = torch.rand(3, 100, 140, generator=torch.Generator().manual_seed(5))
    Image.fromarray((given[:, :80, :96] * 255).byte().permute(1, 2, 0).numpy()).save(tmp_path / "photo.png")
    result = export_model(model, tmp_path / f"{kind}.onnx", input_size=SIZE,
                          verify_images=[given, tmp_path / "photo.png"])
    assert all(c.ok for c in result.checks)
    seen = {(c.size, c.image): c.detections for c in result.checks}
    assert set(seen) == {((3, *SIZE), "random"), ((3, 192, 128), "random"), ((3, *SIZE), "blank"),
                         ((3, 100, 140), "given image"), ((3, 80, 96), "photo.png")}
    assert seen[(3, *SIZE), "random"] >= 20 and (seen[(3, *SIZE), "blank"] == 0) == zero
    session = ort.InferenceSession(str(tmp_path / f"{kind}.onnx"))
    torch.manual_seed(1)
    for size in [SIZE, (144, 112)]:
        image = torch.rand(3, *size)
        with torch.no_grad():
            want = model([image])[0]
        got = _ort_detections(session, image)
        assert len(want["boxes"]) >= 20  # enough detections for the comparison to mean something
        assert_close(got["scores"].sort().values, want["scores"].sort().values, atol=TOLERANCES["scores"], rtol=0)
        diffs = match_detections(want, got)
        assert all(diffs[k] <= TOLERANCES[k] for k in diffs), diffs
    # zero detections, at the export size and another: empty outputs of the eager shapes (masks [0, 1, H, W])
    for size in [SIZE, (96, 144)] if zero else []:
        blank = torch.full((3, *size), 0.5)
        with torch.no_grad():
            want = model([blank])[0]
        got = _ort_detections(session, blank)
        assert len(want["boxes"]) == 0 and set(got) == set(want)
        assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in want.items()}
        assert all(got[k].dtype == want[k].dtype for k in want)


def test_onnx_detectors_refuse_a_batch_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"batch=2: a detector's ONNX graph takes one image .* format='torchscript'"):
        export_model(tiny_detector("faster_rcnn"), tmp_path / "d.onnx", batch=2)
    assert not (tmp_path / "d.onnx").exists()
    with pytest.raises(ConfigError, match="verify_images are for detectors"):
        export_model(tiny_unet(), tmp_path / "u.onnx", verify_images=[torch.rand(3, 64, 64)])


def test_match_detections_sees_a_missing_output_or_a_wrong_shape():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 1, 32, 48)}
    assert match_detections(empty, dict(empty)) == {"boxes": 0.0, "scores": 0.0, "labels": 0.0, "masks": 0.0}
    assert match_detections(empty, dict(empty, masks=torch.zeros(0, 1, 48, 32)))["masks"] == float("inf")
    assert match_detections(empty, {k: v for k, v in empty.items() if k != "masks"})["masks"] == float("inf")


def test_detector_torchscript_takes_any_number_of_images(tmp_path):
    model = tiny_detector("fcos")
    result = export_model(model, tmp_path / "fcos.pt", format="torchscript", input_size=SIZE, batch=3)
    assert [c.image for c in result.checks if c.output == "boxes"][-3:] == [f"image {i} of 3" for i in (1, 2, 3)]
    assert all(c.ok for c in result.checks)
    scripted = torch.jit.load(str(tmp_path / "fcos.pt"))
    images = [torch.rand(3, 128, 160), torch.rand(3, 96, 128)]
    with torch.no_grad():
        _, got = scripted(images)
        want = model(images)
    for g, w in zip(got, want, strict=True):
        assert_close(g["boxes"], w["boxes"]) and assert_close(g["scores"], w["scores"])


class _SizeSwitch(nn.Module):
    """Changes behaviour with the input height in Python: the trace keeps the export size's branch only."""

    in_channels = 3

    def forward(self, x):
        return x * 2 if x.shape[-2] <= 128 else x * 3


def test_a_wrong_export_fails_verification_in_one_line(tmp_path):
    with pytest.raises(ExportError, match=r"differs from the eager model: 2x192x128 logits: max abs diff") as err:
        export_model(_SizeSwitch(), tmp_path / "bad.onnx", input_size=SIZE)
    assert "\n" not in str(err.value)
    export_model(_SizeSwitch(), tmp_path / "unchecked.onnx", input_size=SIZE, verify=False)  # written, not checked


def test_matching_pairs_reordered_detections_and_sees_a_moved_box():
    want = {"boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]]), "scores": torch.tensor([0.5, 0.5]),
            "labels": torch.tensor([1, 2])}
    swapped = {k: v.flip(0) for k, v in want.items()}
    assert match_detections(want, swapped) == {"boxes": 0.0, "scores": 0.0, "labels": 0.0}
    moved = dict(swapped, boxes=swapped["boxes"] + torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 0]]))
    assert match_detections(want, moved)["boxes"] == 1.0
    assert match_detections(want, {k: v[:1] for k, v in want.items()})["boxes"] == float("inf")


@pytest.mark.parametrize("kwargs,match", [
    ({"format": "tflite"}, r"format='tflite' is not one of onnx, torchscript, pt2"),
    ({"input_size": (16, 64)}, r"input_size=\[16, 64\] must be two ints >= 32"),
])
def test_bad_arguments_name_the_value(kwargs, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        export_model(_SizeSwitch(), tmp_path / "x", **kwargs)


def test_pt2_is_refused_for_detectors(tmp_path):
    with pytest.raises(ConfigError, match="pt2' is not available for detectors"):
        export_model(tiny_detector("fcos"), tmp_path / "d.pt2", format="pt2")
