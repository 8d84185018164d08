"""Segmentation losses against direct computations: class-weighted cross-entropy (alone and with Dice) and smp's
focal loss (alone and with Dice) and per-image Lovasz-softmax, all leaving out the ignore_index pixels."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from resdense.engine import SegmentationTask, load_config
from resdense.engine.build import build_task
from resdense.engine.tasks import Batch
from resdense.errors import ConfigError

from .recipes import seg_recipe, write
from .test_trainer import Stripes, make

K, IGNORE = 4, 255


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 8, 8, generator=g) * 3
    target = torch.randint(0, K, (2, 8, 8), generator=g)
    target[0, :3] = IGNORE
    target[1, :, 5] = IGNORE
    return Batch([0, 1], logits, target)


def _losses(batch, **kwargs):
    return SegmentationTask(K, ignore_index=IGNORE, **kwargs).losses(nn.Identity(), batch)  # logits in, logits out


def _weighted_ce_by_hand(logits, target, weights):
    valid = target != IGNORE
    logp = logits.log_softmax(1).permute(0, 2, 3, 1)[valid]        # [P, K]
    y = target[valid]
    w = weights[y]
    return -(w * logp[torch.arange(len(y)), y]).sum() / w.sum()


def test_class_weighted_cross_entropy(batch):
    weights = [0.5, 2.0, 1.0, 3.0]
    out = _losses(batch, loss="ce", class_weights=weights)
    assert out.keys() == {"loss_ce"}
    expected = _weighted_ce_by_hand(batch.inputs, batch.targets, torch.tensor(weights))
    torch.testing.assert_close(out["loss_ce"], expected)
    assert not torch.allclose(out["loss_ce"], _losses(batch, loss="ce")["loss_ce"])


def test_class_weighted_cross_entropy_plus_dice(batch):
    weights = [0.5, 2.0, 1.0, 3.0]
    out = _losses(batch, loss="ce+dice", class_weights=weights)
    assert out.keys() == {"loss_ce", "loss_dice"}
    torch.testing.assert_close(out["loss_ce"], _weighted_ce_by_hand(batch.inputs, batch.targets, torch.tensor(weights)))
    dice = DiceLoss("multiclass", ignore_index=IGNORE)(batch.inputs, batch.targets)
    torch.testing.assert_close(out["loss_dice"], dice)  # the weights apply to the cross-entropy term only


@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_focal_loss_is_smps_and_the_per_class_sigmoid_focal_loss(batch, gamma):
    out = _losses(batch, loss="focal", focal_gamma=gamma)
    assert out.keys() == {"loss_focal"}
    smp_value = FocalLoss("multiclass", gamma=gamma, ignore_index=IGNORE)(batch.inputs, batch.targets)
    torch.testing.assert_close(out["loss_focal"], smp_value)
    # the same by torchvision's sigmoid focal loss (Lin et al. 2017, no alpha): each class against the rest, on the
    # pixels that are not ignored, averaged over them, summed over the classes
    valid = batch.targets != IGNORE
    logits = batch.inputs.permute(0, 2, 3, 1)[valid]                  # [P, K]
    onehot = F.one_hot(batch.targets[valid], K).float()
    by_hand = sum(sigmoid_focal_loss(logits[:, k], onehot[:, k], alpha=-1, gamma=gamma, reduction="mean")
                  for k in range(K))
    # smp 0.6 averages the per-class terms instead of summing them (its multiclass FocalLoss changed there)
    if tuple(int(p) for p in smp.__version__.split(".")[:2]) >= (0, 6):
        by_hand = by_hand / K
    torch.testing.assert_close(out["loss_focal"], by_hand)


def test_focal_plus_dice(batch):
    out = _losses(batch, loss="focal+dice")
    assert out.keys() == {"loss_focal", "loss_dice"}
    torch.testing.assert_close(out["loss_focal"], FocalLoss("multiclass", ignore_index=IGNORE)(batch.inputs, batch.targets))
    torch.testing.assert_close(out["loss_dice"], DiceLoss("multiclass", ignore_index=IGNORE)(batch.inputs, batch.targets))


def test_ignored_pixels_do_not_count(batch):
    # changing the logits of ignored pixels changes no loss term
    other = Batch(batch.indices, batch.inputs.clone(), batch.targets)
    other.inputs.permute(0, 2, 3, 1)[batch.targets == IGNORE] = 100.0
    for loss in ("ce", "focal", "focal+dice", "ce+dice", "lovasz", "ce+lovasz"):
        a, b = _losses(batch, loss=loss), _losses(other, loss=loss)
        for k in a:
            torch.testing.assert_close(a[k], b[k], msg=f"{loss}: {k}")


def test_lovasz_is_smps_per_image_lovasz_softmax(batch):
    out = _losses(batch, loss="ce+lovasz")
    assert out.keys() == {"loss_ce", "loss_lovasz"}
    x, y = batch.inputs, batch.targets
    torch.testing.assert_close(out["loss_lovasz"], LovaszLoss("multiclass", per_image=True, ignore_index=IGNORE)(x, y))
    # per image: the batch's loss is the mean of its images' losses
    one = [_losses(Batch([i], x[i:i + 1], y[i:i + 1]), loss="lovasz")["loss_lovasz"] for i in range(2)]
    torch.testing.assert_close(out["loss_lovasz"], torch.stack(one).mean())
    # a surrogate of 1 - IoU: zero for confident correct logits, positive otherwise
    perfect = F.one_hot(y.clamp(max=K - 1), K).permute(0, 3, 1, 2).float() * 50
    assert float(_losses(Batch([0, 1], perfect, y), loss="lovasz")["loss_lovasz"]) < 1e-6
    assert float(out["loss_lovasz"]) > 0.1


def test_lovasz_loss_trains(tmp_path):
    result = make(tmp_path, Stripes(32), loss="ce+lovasz").fit()
    assert result["final"]["mIoU"] > 0.9


def test_focal_loss_trains(tmp_path):
    result = make(tmp_path, Stripes(32), loss="focal").fit()
    assert result["final"]["mIoU"] > 0.9


@pytest.mark.parametrize("kwargs,message", [
    ({"loss": "ce", "class_weights": [1.0, 2.0]}, r"train\.class_weights = \[1\.0, 2\.0\] has 2 values but the model has 4"),
    ({"loss": "focal", "class_weights": [1.0] * K}, r"train\.class_weights = .* train\.loss = 'focal' has none"),
    ({"loss": "dice", "class_weights": [1.0] * K}, r"train\.loss = 'dice' has none"),
    ({"loss": "ce", "class_weights": [1.0, -1.0, 1.0, 1.0]}, r"must be finite, non-negative"),
])
def test_bad_class_weights(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SegmentationTask(K, **kwargs)


def test_bad_class_weights_in_a_recipe_name_the_file(tmp_path):
    path = write(seg_recipe(tmp_path / "shapes", tmp_path / "run", loss="focal+dice", class_weights=[1.0, 2.0]),
                 tmp_path / "w.yaml")
    cfg = load_config(path)
    with pytest.raises(ConfigError) as err:
        build_task(cfg.task, ["bg", "a", "b", "c"], cfg)
    msg = str(err.value)
    assert msg.startswith(f"{path}: train.class_weights = [1.0, 2.0]") and "\n" not in msg
    with pytest.raises(ConfigError, match=r"train\.loss = 'focall' is not one of"):
        load_config(path, ["train.loss=focall"])
    with pytest.raises(ConfigError, match=r"train\.focal_gamma = -1\.0 must be a non-negative number"):
        load_config(path, ["train.focal_gamma=-1.0"])
