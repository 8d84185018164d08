"""Each detector kind trains and predicts on resnet18 and resnet50; bad input fails with one clear line."""

import pytest
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet

from resdense.backbones import FeatureInfo, create_backbone, list_backbones
from resdense.errors import ConfigError, DataError
from resdense.heads import (
    KINDS,
    DetectionBackbone,
    anchor_generator_for,
    build_detector,
    validate_detection_targets,
)

# Small images and few RoIs keep a resnet50 step at about a second on two CPU cores.
FAST = {
    "faster_rcnn": dict(box_batch_size_per_image=64, rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
                        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=50, box_score_thresh=0.0,
                        box_detections_per_img=20),
    "retinanet": dict(score_thresh=0.0, detections_per_img=20, topk_candidates=100),
    "fcos": dict(score_thresh=0.0, detections_per_img=20, topk_candidates=100),
}
FAST["mask_rcnn"] = FAST["faster_rcnn"]
LOSSES = {
    "faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    "mask_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"},
    "retinanet": {"classification", "bbox_regression"},
    "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
}
CLASSES = {"faster_rcnn": FasterRCNN, "mask_rcnn": MaskRCNN, "retinanet": RetinaNet, "fcos": FCOS}


def batch():
    """Two images of 120x160 and 150x130 in [0, 1]; the second has no objects (boxes shape [0, 4])."""
    images = [torch.rand(3, 120, 160), torch.rand(3, 150, 130)]
    masks = torch.zeros(2, 120, 160, dtype=torch.uint8)
    masks[0, 20:90, 10:60] = 1
    masks[1, 30:110, 30:100] = 1
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [30.0, 30.0, 100.0, 110.0]]),
         "labels": torch.tensor([1, 2]), "masks": masks},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "masks": torch.zeros(0, 150, 130, dtype=torch.uint8)},
    ]
    return images, targets


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize("kind", KINDS)
def test_train_step_and_eval(kind, backbone):
    model = build_detector(kind, backbone=backbone, num_classes=3, min_size=128, max_size=160, **FAST[kind])
    assert type(model) is CLASSES[kind] and isinstance(model.backbone, DetectionBackbone)
    images, targets = batch()

    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSSES[kind]
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), (name, value)
    sum(losses.values()).backward()
    # Gradients reach the head and the trainable backbone stages, and are finite.
    layer4 = model.backbone.body.layer4[-1].conv1.weight
    assert layer4.grad is not None and torch.isfinite(layer4.grad).all() and layer4.grad.abs().sum() > 0
    for p in model.parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()

    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, img in zip(out, images, strict=True):
        n = det["boxes"].shape[0]
        assert 0 < n <= 20
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        h, w = img.shape[-2:]
        assert (det["boxes"][:, 2:] <= torch.tensor([w, h])).all() and (det["boxes"] >= 0).all()
        # RetinaNet and FCOS score class 0 too (torchvision's sigmoid heads); the R-CNNs never predict background.
        low = 1 if kind in ("faster_rcnn", "mask_rcnn") else 0
        assert ((det["labels"] >= low) & (det["labels"] <= 2)).all()
        if kind == "mask_rcnn":
            assert det["masks"].shape == (n, 1, h, w)
            assert ((det["masks"] >= 0) & (det["masks"] <= 1)).all()


def test_only_empty_targets_train_as_negatives():
    model = build_detector("retinanet", backbone="resnet18", num_classes=3, min_size=64, max_size=64)
    image = torch.rand(3, 64, 64)
    losses = model([image], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert losses["bbox_regression"].item() == 0.0  # no positives: nothing to regress
    assert losses["classification"].item() > 0.0  # every anchor is a negative
    # boxes given as an empty 1-D tensor are reshaped to [0, 4], not rejected
    losses = model([image], [{"boxes": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert torch.isfinite(losses["classification"])


@pytest.mark.parametrize("kind", KINDS)
def test_anchors_and_levels_derived_from_feature_info(kind):
    model = build_detector(kind, backbone="resnet18", num_classes=5)
    levels = [f.name for f in model.backbone.feature_info]
    gen = model.rpn.anchor_generator if kind in ("faster_rcnn", "mask_rcnn") else model.anchor_generator
    if kind in ("faster_rcnn", "mask_rcnn"):
        assert levels == ["p2", "p3", "p4", "p5", "p6"]
        # torchvision's defaults: 32 * 2**(level - 2), aspect ratios (0.5, 1, 2)
        assert gen.sizes == ((32,), (64,), (128,), (256,), (512,))
        assert model.roi_heads.box_roi_pool.featmap_names == ["p2", "p3", "p4", "p5"]
    elif kind == "retinanet":
        assert levels == ["p3", "p4", "p5", "p6", "p7"]
        assert gen.sizes == tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
    else:
        assert levels == ["p3", "p4", "p5", "p6", "p7"]
        assert gen.sizes == ((8,), (16,), (32,), (64,), (128,))
    if kind == "mask_rcnn":
        assert model.roi_heads.mask_roi_pool.featmap_names == ["p2", "p3", "p4", "p5"]
    assert model.backbone.out_channels == 256


@pytest.mark.parametrize("kind", KINDS)
def test_fpn_width_and_anchors_are_arguments(kind):
    """A narrower pyramid and custom anchors: every head follows the width, a step trains, and the module tree is
    what torchvision builds when handed the same pieces by hand."""
    torch.manual_seed(0)
    one_stage = kind in ("retinanet", "fcos")
    sizes = [[16], [32], [64], [128], [256]] if kind == "fcos" else [[12, 18], [24, 36], [48, 72], [96, 144], [192, 288]]
    ratios = [1.0] if kind == "fcos" else [0.5, 2.0]
    extra = {} if one_stage else {"representation_size": 96}
    model = build_detector(kind, backbone="resnet18", num_classes=3, fpn_channels=64, anchor_sizes=sizes,
                           aspect_ratios=ratios, **extra, **FAST[kind])
    gen = model.anchor_generator if one_stage else model.rpn.anchor_generator
    assert gen.sizes == tuple(tuple(s) for s in sizes)
    assert gen.aspect_ratios == (tuple(ratios),) * 5
    assert model.backbone.out_channels == 64 and {f.channels for f in model.backbone.feature_info} == {64}
    anchors = gen.num_anchors_per_location()[0]
    if one_stage:
        first_conv = next(m for m in model.head.classification_head.modules() if isinstance(m, torch.nn.Conv2d))
        assert first_conv.in_channels == 64
        assert model.head.classification_head.cls_logits.out_channels == anchors * 3
    else:
        assert model.rpn.head.conv[0][0].in_channels == 64
        assert model.rpn.head.cls_logits.out_channels == anchors == 4
        assert model.roi_heads.box_head.fc6.in_features == 64 * 7 * 7
        assert model.roi_heads.box_head.fc7.out_features == 96
        assert model.roi_heads.box_predictor.cls_score.out_features == 3
        if kind == "mask_rcnn":
            assert model.roi_heads.mask_head[0][0].in_channels == 64
    images, targets = batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSSES[kind] and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_mask_head_width_and_resolution_are_arguments():
    """A narrower mask head on a coarser RoI grid: the convolutions have the widths asked for, the predictor keeps
    the last one, the masks are twice the grid before pasting, a step trains, and predictions are full-size."""
    torch.manual_seed(0)
    model = build_detector("mask_rcnn", backbone="resnet18", num_classes=3, fpn_channels=64, mask_head_layers=[48, 32],
                           mask_roi_size=7, min_size=128, max_size=160, **FAST["mask_rcnn"])
    convs = [m for m in model.roi_heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 48), (48, 32)]
    predictor = model.roi_heads.mask_predictor
    assert (predictor.conv5_mask.in_channels, predictor.conv5_mask.out_channels) == (32, 32)
    assert predictor.mask_fcn_logits.out_channels == 3
    assert model.roi_heads.mask_roi_pool.output_size == (7, 7)
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.roi_heads.box_head.fc7.out_features == 1024  # torchvision's box head width when not asked otherwise
    assert predictor(torch.zeros(5, 32, 7, 7)).shape == (5, 3, 14, 14)
    images, targets = batch()
    losses = model.train()(images, targets)
    assert set(losses) == LOSSES["mask_rcnn"] and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.no_grad():
        out = model.eval()(images)
    assert out[0]["masks"].shape[1:] == (1, 120, 160)


def test_default_mask_head_is_torchvisions():
    """Without mask arguments, and with only the box head's width changed, the mask branch is torchvision's own
    (same module names and shapes), so its checkpoints keep loading."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    reference = {k: v.shape for k, v in maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict().items()
                 if k.startswith("roi_heads.mask")}
    for extra in ({}, {"representation_size": 1024}):
        model = build_detector("mask_rcnn", backbone="resnet50", num_classes=91, **extra)
        ours = {k: v.shape for k, v in model.state_dict().items() if k.startswith("roi_heads.mask")}
        assert ours == reference, extra
        assert model.roi_heads.mask_roi_pool.output_size == (14, 14)


def test_train_resize_false_trains_at_the_datas_size_and_evaluates_resized():
    """train_resize=False (torchvision's _skip_resize): a 96 px training crop reaches the network at 96 px although
    min_size is 192; evaluation still resizes to min_size, as with the default, which enlarges the crop in training."""
    image = torch.rand(3, 96, 96)
    target = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])}
    for train_resize, trained_side in ((False, 96), (True, 192)):
        model = build_detector("faster_rcnn", backbone="resnet18", num_classes=3, min_size=192, max_size=192,
                               train_resize=train_resize)
        images, targets = model.train().transform([image], [dict(target)])
        assert images.image_sizes == [(trained_side, trained_side)]
        assert targets[0]["boxes"].tolist() == [[v * trained_side / 96 for v in (10.0, 10.0, 40.0, 50.0)]]
        images, _ = model.eval().transform([image])
        assert images.image_sizes == [(192, 192)]


@pytest.mark.parametrize("kind", KINDS)
def test_box_deltas_stay_float32_under_bf16_autocast(kind):
    """Under CPU bf16 autocast torchvision would decode boxes and encode targets in bf16 (1 px steps between 128 and
    256): a ground-truth box 0.8 px wide at x = 200 rounds to an empty one and the R-CNN box loss to NaN. The box
    deltas leave the heads in float32, so the losses stay finite, near float32's, and detections are float32."""
    torch.manual_seed(0)
    model = build_detector(kind, backbone="resnet18", num_classes=2, min_size=256, max_size=256, fpn_channels=32,
                           **FAST[kind])
    image = torch.rand(3, 256, 256)
    masks = torch.zeros(2, 256, 256, dtype=torch.uint8)
    masks[0, 50:80, 201] = 1
    masks[1, 20:60, 20:60] = 1
    target = {"boxes": torch.tensor([[200.6, 50.0, 201.4, 80.0], [20.0, 20.0, 60.0, 60.0]]),
              "labels": torch.tensor([1, 1]), "masks": masks}
    model.train()
    fp32 = model([image], [target])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model([image], [target])
    for key, value in bf16.items():
        assert torch.isfinite(value), key
        assert value.item() == pytest.approx(fp32[key].item(), rel=0.1, abs=0.02), key
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model([image])[0]
    assert out["boxes"].dtype == torch.float32 and len(out["boxes"])
    assert not torch.equal(out["boxes"], out["boxes"].bfloat16().float())  # not on bf16's grid


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(mask_head_layers=[]), r"mask_head_layers=\[\] must be a non-empty list of positive ints"),
    (dict(mask_head_layers=[64, 0]), r"mask_head_layers=\[64, 0\] must be a non-empty list of positive ints"),
    (dict(mask_head_layers=64), r"mask_head_layers=64 must be a non-empty list"),
    (dict(mask_head_layers=[True]), r"mask_head_layers=\[True\] must be a non-empty list"),
    (dict(mask_roi_size=0), r"mask_roi_size=0 must be a positive int \(torchvision: 14\)"),
    (dict(mask_roi_size=7.0), r"mask_roi_size=7.0 must be a positive int"),
    (dict(mask_head_layers=[64], mask_head=nn.Identity()), "give mask_head / mask_predictor or mask_head_layers"),
    (dict(mask_roi_size=7, mask_roi_pool=nn.Identity()), "give mask_roi_pool or mask_roi_size, not both"),
    (dict(train_resize="no"), r"train_resize='no' must be true or false"),
])
def test_bad_mask_head_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_detector("mask_rcnn", backbone="resnet18", num_classes=3, **kwargs)


def test_mask_head_arguments_on_other_kinds_or_against_a_checkpoint_are_refused():
    for kind in ("faster_rcnn", "retinanet"):
        with pytest.raises(ConfigError, match=f"shape a Mask R-CNN's mask head; {kind} has none"):
            build_detector(kind, backbone="resnet18", num_classes=3, mask_roi_size=7)
    with pytest.raises(ConfigError, match=r"mask_head_layers=\[64, 64\] change layer shapes"):
        build_detector("mask_rcnn", num_classes=91, weights="coco", mask_head_layers=[64, 64])


@pytest.mark.parametrize("kind", KINDS)
def test_returned_layers_choose_the_fpn_inputs(kind, tmp_path):
    """torchvision's returned_layers: the backbone is built only up to the last layer asked for, the pyramid and
    the anchors follow, a step trains, and the encoder of a U-Net of the same depth loads strictly as its weights."""
    from resdense.heads import UNet

    one_stage = kind in ("retinanet", "fcos")
    layers = [2, 3] if one_stage else [1, 2, 3]
    torch.manual_seed(0)
    unet = UNet("resnet18", num_classes=2, decoder_channels=(64, 32, 16, 16))
    torch.save({"model": unet.state_dict()}, tmp_path / "unet.pt")
    model = build_detector(kind, backbone="resnet18", num_classes=3, returned_layers=layers,
                           weights_backbone=tmp_path / "unet.pt", trainable_stages=5, **FAST[kind])
    body = model.backbone.body
    assert not hasattr(body, "layer4") and model.backbone.fpn.in_features == tuple(f"c{i + 1}" for i in layers)
    assert_close = torch.testing.assert_close
    assert_close(body.layer3[1].conv2.weight, unet.backbone.layer3[1].conv2.weight)
    levels = [(f.name, f.stride) for f in model.backbone.feature_info]
    if one_stage:
        assert levels == [("p3", 8), ("p4", 16), ("p5", 32), ("p6", 64)]
    else:
        assert levels == [("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32)]
        assert model.roi_heads.box_roi_pool.featmap_names == ["p2", "p3", "p4"]
    gen = model.anchor_generator if one_stage else model.rpn.anchor_generator
    assert len(gen.sizes) == len(levels)
    images, targets = batch()
    losses = model.train()(images, targets)
    assert set(losses) == LOSSES[kind] and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("layers", [[1, 3], [0, 1, 2], [2, 3, 4, 5], [], "c2", [True, 2]])
def test_bad_returned_layers_are_refused(layers):
    with pytest.raises(ConfigError, match=r"returned_layers=.* must be consecutive layer indices in 1\.\.4"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=3, returned_layers=layers)
    with pytest.raises(ConfigError, match="p6_from='c5' needs layer4; returned_layers=\\[2, 3\\]"):
        build_detector("retinanet", backbone="resnet18", num_classes=3, returned_layers=[2, 3], p6_from="c5")


def test_anchor_and_width_arguments_are_checked():
    with pytest.raises(ConfigError, match=r"anchor_sizes has 3 levels but the pyramid has 5 \(p2, p3, p4, p5, p6\)"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=3, anchor_sizes=[[32], [64], [128]])
    with pytest.raises(ConfigError, match="aspect_ratios has 2 levels but the pyramid has 5"):
        build_detector("retinanet", backbone="resnet18", num_classes=3, aspect_ratios=[[1.0], [2.0]])
    with pytest.raises(ConfigError, match=r"same number of anchors .* got \[3, 6\]"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=3, anchor_sizes=[[32], [64, 90], [128], [256], [512]])
    with pytest.raises(ConfigError, match="fcos: one anchor point per location .* got 3"):
        build_detector("fcos", backbone="resnet18", num_classes=3, aspect_ratios=[0.5, 1.0, 2.0])
    with pytest.raises(ConfigError, match=r"fcos: anchor_sizes: level p3 must hold numbers > 0, got \[-8\]"):
        build_detector("fcos", backbone="resnet18", num_classes=3, anchor_sizes=[[-8], [16], [32], [64], [128]])
    with pytest.raises(ConfigError, match="representation_size sets the width of the box head resdense builds"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=3, representation_size=256,
                       box_head=nn.Identity())
    with pytest.raises(ConfigError, match="fpn_channels=0 must be a positive int"):
        build_detector("fcos", backbone="resnet18", num_classes=3, fpn_channels=0)
    with pytest.raises(ConfigError, match="retinanet has none"):
        build_detector("retinanet", backbone="resnet18", num_classes=3, representation_size=256)
    with pytest.raises(ConfigError, match="give rpn_anchor_generator or anchor_sizes"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=3, anchor_sizes=[[32]] * 5,
                       rpn_anchor_generator=object())
    with pytest.raises(ConfigError, match="fpn_channels=128 / representation_size=None change layer shapes"):
        build_detector("faster_rcnn", num_classes=91, weights="coco", fpn_channels=128)


PYRAMID = tuple(FeatureInfo(f"p{i}", 256, 2**i) for i in range(2, 7))


@pytest.mark.parametrize(("sizes", "ratios", "message"), [
    ([[32], [True], [128], [256], [512]], None, r"anchor_sizes: level p3 must hold numbers > 0, got \[True\]"),
    ([["32"], [64], [128], [256], [512]], None, r"anchor_sizes: level p2 must hold numbers > 0, got \['32'\]"),
    ([[32], [64], [], [256], [512]], None, r"anchor_sizes: level p4 must hold numbers > 0, got \[\]"),
    ([[32, 32], [64, 64], [128, 128], [256, 256], [512, 512]], None, r"anchor_sizes: level p2 repeats a value"),
    (None, [1.0] * 5, r"aspect_ratios: level p2 repeats a value, \[1.0, 1.0, 1.0, 1.0, 1.0\] \(identical anchors\): "
                      r"for one ratio per level give \[\[r2\], \[r3\], ...\]"),
    (32, None, r"anchor_sizes = 32 must be a non-empty list: one list of sizes per level \(p2, p3, p4, p5, p6\)"),
    ("32", None, r"anchor_sizes = '32' must be a non-empty list"),
    (None, [0.5, float("nan")], r"aspect_ratios: level p2 must hold numbers > 0, got \[0.5, nan\]"),
    (None, 0.0, r"aspect_ratios = 0.0 must be a non-empty list"),
    (None, "1.0", r"aspect_ratios = '1.0' must be a non-empty list"),
    (None, [], r"aspect_ratios = \[\] must be a non-empty list"),
])
def test_bad_anchor_arguments_name_the_argument_and_level(sizes, ratios, message):
    with pytest.raises(ConfigError, match="faster_rcnn: " + message):
        anchor_generator_for("faster_rcnn", PYRAMID, sizes, ratios)


def test_anchor_arguments_normalise_bare_numbers():
    gen = anchor_generator_for("faster_rcnn", PYRAMID, [32, 64.0, 128, 256, 512], 1)
    assert gen.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert gen.aspect_ratios == ((1.0,),) * 5
    # detectron2-style fractional sizes stay as given (torchvision's AnchorGenerator takes floats)
    gen = anchor_generator_for("retinanet", PYRAMID, [[32, 40.3, 50.8]] * 5, [0.5, 1.0, 2.0])
    assert gen.sizes[0] == (32, 40.3, 50.8) and isinstance(gen.sizes[0][0], int)
    p3_p7 = tuple(FeatureInfo(f"p{i}", 256, 2**i) for i in range(3, 8))
    gen = anchor_generator_for("retinanet", p3_p7, None, [[0.5, 1.0, 2.0]] * 5)
    assert gen.sizes[0] == (32, 40, 50) and gen.aspect_ratios == ((0.5, 1.0, 2.0),) * 5


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_wires_into_every_kind(name):
    # Built on the meta device: only the wiring (channels, levels) is checked, not the numbers.
    with torch.device("meta"):
        for kind in KINDS:
            model = build_detector(kind, backbone=name, num_classes=4)
            body, fpn = model.backbone.body, model.backbone.fpn
            assert [b[0].in_channels for b in fpn.inner_blocks] == [body.channels[n] for n in fpn.in_features]
            out = model.backbone(torch.empty(1, 3, 64, 96))
            assert [tuple(v.shape) for v in out.values()] == [
                (1, 256, -(-64 // f.stride), -(-96 // f.stride)) for f in model.backbone.feature_info
            ]


def test_backbone_instance_is_used_and_widened():
    body = create_backbone("resnet18", out_features=("c4", "c5"))
    model = build_detector("faster_rcnn", backbone=body, num_classes=3)
    assert model.backbone.body is body and body.out_features == ("c2", "c3", "c4", "c5")
    assert all(p.requires_grad for p in body.parameters())  # random weights: train everything


def test_bad_input_errors():
    with pytest.raises(ConfigError, match=r"unknown kind 'faster-rcnn'; did you mean 'faster_rcnn'"):
        build_detector("faster-rcnn", num_classes=3)
    with pytest.raises(ConfigError, match="unknown kind 'yolo'"):
        build_detector("yolo", num_classes=3)
    for bad in (0, -2, 1, 2.5):
        with pytest.raises(ConfigError, match=rf"num_classes={bad!r} must be an int >= 2"):
            build_detector("faster_rcnn", backbone="resnet18", num_classes=bad)
    with pytest.raises(ConfigError, match="trainable_stages=6"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=3, trainable_stages=6)
    with pytest.raises(ConfigError, match="unknown backbone 'resnet5'"):
        build_detector("fcos", backbone="resnet5", num_classes=3)
    with pytest.raises(ConfigError, match="output_stride"):
        build_detector("faster_rcnn", backbone=create_backbone("resnet18", output_stride=16), num_classes=3)


@pytest.mark.parametrize("kind", ["faster_rcnn", "fcos"])
def test_degenerate_and_mislabelled_targets_raise_data_error(kind):
    model = build_detector(kind, backbone="resnet18", num_classes=3, min_size=128, max_size=160)
    images, targets = batch()
    targets[0]["boxes"] = torch.tensor([[10.0, 20.0, 60.0, 90.0], [50.0, 30.0, 40.0, 110.0]])  # x2 < x1
    with pytest.raises(DataError, match=r"target 0: box 1 is degenerate \(x1, y1, x2, y2\) = \[50.0, 30.0, 40.0, 110.0\]"):
        model(images, targets)
    targets[0]["boxes"] = torch.tensor([[10.0, 20.0, 60.0, 90.0], [30.0, 30.0, 100.0, 30.0]])  # y2 == y1
    with pytest.raises(DataError, match=r"target 0: box 1 is degenerate"):
        model(images=images, targets=targets)  # keyword call is checked too
    images, targets = batch()
    targets[0]["labels"] = torch.tensor([1, 3])
    with pytest.raises(DataError, match=r"target 0: box 1 has label 3; labels must be in 1..2"):
        model(images, targets)
    targets[0]["labels"] = torch.tensor([1.0, 2.0])
    with pytest.raises(DataError, match="'labels' must be an int64 tensor"):
        model(images, targets)


def test_target_validation_messages():
    ok = {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([1])}
    with pytest.raises(DataError, match=r"target 1: 'boxes' must have shape \[N, 4\], got \[1, 3\]"):
        validate_detection_targets([ok, {"boxes": torch.ones(1, 3), "labels": torch.tensor([1])}], 3)
    with pytest.raises(DataError, match="target 0: missing field 'labels'"):
        validate_detection_targets([{"boxes": torch.ones(1, 4)}], 3)
    with pytest.raises(DataError, match="non-finite"):
        validate_detection_targets([{"boxes": torch.tensor([[0.0, 0.0, float("nan"), 5.0]]), "labels": torch.tensor([1])}])
    with pytest.raises(DataError, match="Mask R-CNN training needs 'masks'"):
        validate_detection_targets([ok], 3, masks=True)
    model = build_detector("mask_rcnn", backbone="resnet18", num_classes=3, min_size=128, max_size=160)
    images, targets = batch()
    del targets[1]["masks"]
    with pytest.raises(DataError, match="target 1: Mask R-CNN training needs 'masks'"):
        model(images, targets)
