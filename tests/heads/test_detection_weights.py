"""build_detector with the defaults is torchvision's fasterrcnn_resnet50_fpn: same modules, same trainable
parameters per trainable_stages, and a torchvision checkpoint gives the same detections."""

import warnings

import pytest
import torch
from torch.testing import assert_close
from torchvision.models import resnet18, resnet50
from torchvision.models.detection import (
    FasterRCNN,
    fasterrcnn_resnet50_fpn,
    fcos_resnet50_fpn,
    maskrcnn_resnet50_fpn,
    retinanet_resnet50_fpn,
)
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from resdense.errors import WeightsError
from resdense.heads import build_detector

# Small images and 100 proposals per image keep the three ResNet-50 detectors fast; score threshold 0 keeps
# the full list of 100 detections per image, so the comparison is not vacuous.
SMALL = dict(min_size=128, max_size=160, box_score_thresh=0.0, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100)


def shapes(model):
    return [(k, tuple(p.shape)) for k, p in model.named_parameters()]


@pytest.fixture(scope="module")
def tv_checkpoint(tmp_path_factory):
    """State dict of a randomly initialised torchvision fasterrcnn_resnet50_fpn, with non-trivial BN statistics
    so that a wrongly mapped buffer changes the detections."""
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **SMALL).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in tv.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
    path = tmp_path_factory.mktemp("tv") / "fasterrcnn_resnet50_fpn.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def test_checkpoint_gives_torchvision_detections(tv_checkpoint):
    tv, path = tv_checkpoint
    ours = build_detector("faster_rcnn", backbone="resnet50", num_classes=91, weights=path, **SMALL).eval()
    assert len(ours.load_report.loaded) == len(FasterRCNN(_resnet_fpn_extractor(
        resnet50(norm_layer=FrozenBatchNorm2d), 3), 91).state_dict())
    # torchvision builds fasterrcnn_resnet50_fpn(weights=...) with FrozenBatchNorm2d: that module, same file.
    ref = FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3), num_classes=91, **SMALL).eval()
    ref.load_state_dict(tv.state_dict())
    assert shapes(ours) == shapes(ref)
    torch.manual_seed(3)
    images = [torch.rand(3, 120, 160), torch.rand(3, 150, 130)]
    with torch.no_grad():
        got, want = ours(images), ref(images)
        # and the randomly initialised torchvision model itself (BatchNorm2d in eval mode): same pyramid up to
        # the rounding of BatchNorm2d versus FrozenBatchNorm2d
        x = ours.transform(images)[0].tensors
        for g, w in zip(ours.backbone(x).values(), tv.backbone(x).values(), strict=True):
            assert (g - w).abs().max() <= 1e-4 * w.abs().max()
    for g, w in zip(got, want, strict=True):
        assert len(g["boxes"]) == 100  # box_score_thresh=0: the full, non-trivial list
        for key in ("boxes", "scores", "labels"):
            assert_close(g[key], w[key], rtol=0, atol=0)


def test_other_num_classes_reinitialises_only_the_predictor(tv_checkpoint, caplog):
    _, path = tv_checkpoint
    with caplog.at_level("WARNING"):
        model = build_detector("faster_rcnn", backbone="resnet50", num_classes=5, weights=path)
    assert sorted(d.split(" ")[0] for d in model.load_report.dropped) == [
        "roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight"]
    assert "re-initialised" in caplog.text
    sd = torch.load(path, weights_only=True)
    assert_close(model.state_dict()["roi_heads.box_head.fc6.weight"], sd["roi_heads.box_head.fc6.weight"])


def test_checkpoint_that_does_not_fit_is_refused(tv_checkpoint):
    _, path = tv_checkpoint
    with pytest.raises(WeightsError, match=r"'backbone.body.layer1.0.conv1.weight' has shape \[64, 64, 1, 1\] in the "
                                           r"file but \[64, 64, 3, 3\] in the model"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=91, weights=path)
    with pytest.raises(WeightsError, match="unexpected"):
        build_detector("faster_rcnn", backbone="resnet50", num_classes=91, weights={
            **torch.load(path, weights_only=True), "roi_heads.extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="torchvision has no pretrained faster_rcnn for backbone 'resnet18'"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=91, weights="coco")


@pytest.mark.parametrize("builder,kind", [(fasterrcnn_resnet50_fpn, "faster_rcnn"), (maskrcnn_resnet50_fpn, "mask_rcnn"),
                                          (retinanet_resnet50_fpn, "retinanet"), (fcos_resnet50_fpn, "fcos")])
def test_same_modules_as_torchvision_recipe(builder, kind):
    # No weights anywhere: torchvision then uses BatchNorm2d and trains all layers; so do we.
    with torch.device("meta"):
        ref = builder(weights=None, weights_backbone=None, num_classes=91)
        ours = build_detector(kind, backbone="resnet50", num_classes=91)
    assert shapes(ours) == shapes(ref)
    assert [(k, tuple(b.shape)) for k, b in ours.named_buffers()] == [(k, tuple(b.shape)) for k, b in ref.named_buffers()]
    assert all(p.requires_grad for p in ours.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in ours.modules())


@pytest.mark.parametrize("trainable", [0, 1, 2, 3, 4, 5])
def test_trainable_parameters_match_trainable_backbone_layers(trainable):
    with torch.device("meta"):
        backbone_sd = resnet50().state_dict()
        ref = FasterRCNN(_resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), trainable), num_classes=91)
    # weights_backbone given (a state dict here; a tag or a file in practice): FrozenBatchNorm2d + freezing.
    backbone_sd = {k: torch.zeros(v.shape) for k, v in backbone_sd.items()}
    ours = build_detector("faster_rcnn", backbone="resnet50", num_classes=91, weights_backbone=backbone_sd,
                          trainable_stages=trainable)
    want = {k for k, p in ref.named_parameters() if p.requires_grad}
    got = {k for k, p in ours.named_parameters() if p.requires_grad}
    assert got == want
    n_trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert n_trainable == sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert shapes(ours) == shapes(ref)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in ours.modules())


def test_random_backbone_never_gets_frozen_batchnorm():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_detector("faster_rcnn", backbone="resnet18", num_classes=3)  # defaults: no warning
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    with pytest.warns(UserWarning, match="PR 5443"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=3, norm="frozen_bn")
    with pytest.warns(UserWarning, match="trainable_stages=1 has no effect"):
        model = build_detector("retinanet", backbone="resnet18", num_classes=3, trainable_stages=1)
    assert all(p.requires_grad for p in model.parameters())


def test_weights_backbone_file_is_loaded(tmp_path):
    sd = resnet18().state_dict()
    torch.save(sd, tmp_path / "r18.pth")
    model = build_detector("fcos", backbone="resnet18", num_classes=3, weights_backbone=tmp_path / "r18.pth")
    assert_close(model.backbone.body.layer3[0].conv2.weight, sd["layer3.0.conv2.weight"])
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad  # trainable_stages=3: layer1 frozen
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad
