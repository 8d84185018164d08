"""SegmentationMetrics: parity with torchmetrics, known answers for the conventions, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassF1Score, MulticlassJaccardIndex

from resdense.errors import ConfigError, EvaluationError
from resdense.evaluation import SegmentationMetrics


def _batches(seed: int, c: int, ignore_index, n_batches: int = 3, absent: int | None = None, unseen: bool = False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        logits = torch.randn(3, c, 13, 17, generator=g)
        target = torch.randint(0, c, (3, 13, 17), generator=g)
        if absent is not None:  # a class never in the ground truth (but predicted now and then)
            target[target == absent] = (absent + 1) % c
        if unseen:  # the last class is neither in the ground truth nor ever predicted
            target[target == c - 1] = 0
            logits[:, c - 1] = -100.0
        if ignore_index is not None:
            target[torch.rand(target.shape, generator=g) < 0.2] = ignore_index
        out.append((logits, target))
    return out


@pytest.mark.parametrize("ignore_index", [255, None, -1])
@pytest.mark.parametrize("seed", range(6))
def test_equals_torchmetrics_jaccard_and_f1(seed, ignore_index):
    c = 4 + seed % 3
    absent = seed % (c - 1) if seed % 2 else None
    unseen = seed % 3 == 0
    ours = SegmentationMetrics(c, ignore_index=ignore_index)
    tm = {
        "IoU": MulticlassJaccardIndex(c, ignore_index=ignore_index, average=None),
        "mIoU": MulticlassJaccardIndex(c, ignore_index=ignore_index, average="macro"),
        "Dice": MulticlassF1Score(c, ignore_index=ignore_index, average=None),
        "mDice": MulticlassF1Score(c, ignore_index=ignore_index, average="macro"),
    }
    for i, (logits, target) in enumerate(_batches(seed, c, ignore_index, absent=absent, unseen=unseen)):
        preds = logits if i % 2 == 0 else logits.argmax(1)  # both input forms
        ours.update(preds, target)
        for metric in tm.values():
            metric.update(logits, target)
    got = ours.compute()
    assert got["IoU"][-1].isnan() == unseen
    for key in ("mIoU", "mDice"):
        torch.testing.assert_close(torch.tensor(got[key], dtype=torch.float64), tm[key].compute().double(), atol=1e-6, rtol=0)
    for key in ("IoU", "Dice"):
        # Per class equal, except that a class absent from both is NaN here and zero_division (0) there.
        expected = tm[key].compute().double()
        torch.testing.assert_close(got[key].nan_to_num(0.0), expected, atol=1e-6, rtol=0)


def test_ignore_index_inside_the_class_range():
    c, ignore = 5, 0
    ours = SegmentationMetrics(c, ignore_index=ignore)
    jac = MulticlassJaccardIndex(c, ignore_index=ignore, average="macro")
    f1 = MulticlassF1Score(c, ignore_index=ignore, average="macro")
    for logits, target in _batches(3, c, ignore):
        ours.update(logits, target)
        jac.update(logits, target)
        f1.update(logits, target)
    got = ours.compute()
    assert math.isnan(got["IoU"][0]) and math.isnan(got["Dice"][0])
    torch.testing.assert_close(torch.tensor(got["mIoU"], dtype=torch.float64), jac.compute().double(), atol=1e-6, rtol=0)
    # torchmetrics' F1 macro keeps the ignored class (F1 = 0, it is predicted) while its Jaccard drops it; we drop
    # it in both, so our mDice is the mean over classes 1..4 and theirs is that times 4/5.
    torch.testing.assert_close(torch.tensor(got["mDice"] * 4 / 5, dtype=torch.float64), f1.compute().double(), atol=1e-6, rtol=0)


def _from_labels(c, preds, target, **kwargs):
    m = SegmentationMetrics(c, **kwargs)
    m.update(torch.tensor(preds), torch.tensor(target))
    return m.compute()


def test_known_answer_absent_and_predicted_only_classes():
    # classes: 0 present in both; 1 predicted only (absent from GT); 2 absent from both; 3 in GT only; 255 ignored.
    target = [[0, 0, 0, 3], [3, 3, 255, 255]]
    preds = [[0, 0, 1, 3], [0, 3, 1, 2]]
    # Non-ignored pixels (gt, pred): (0,0) (0,0) (0,1) (3,3) (3,0) (3,3); the ignored ones predict 1 and 2.
    # class 0: tp 2, fp 1, fn 1 -> IoU 2/4, Dice 4/6, Acc 2/3
    # class 1: tp 0, fp 1, fn 0 -> IoU 0, Dice 0 (mmseg) / NaN (detectron2); Acc NaN
    # class 2: nothing outside ignored pixels -> NaN everywhere
    # class 3: tp 2, fp 0, fn 1 -> IoU 2/3, Dice 4/5, Acc 2/3
    m = _from_labels(4, preds, target, ignore_index=255)
    nan = math.nan
    torch.testing.assert_close(m["IoU"], torch.tensor([0.5, 0.0, nan, 2 / 3], dtype=torch.float64), equal_nan=True)
    torch.testing.assert_close(m["Dice"], torch.tensor([4 / 6, 0.0, nan, 0.8], dtype=torch.float64), equal_nan=True)
    torch.testing.assert_close(m["Acc"], torch.tensor([2 / 3, nan, nan, 2 / 3], dtype=torch.float64), equal_nan=True)
    assert m["mIoU"] == pytest.approx((0.5 + 0 + 2 / 3) / 3)
    assert m["mDice"] == pytest.approx((4 / 6 + 0 + 0.8) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["mean_accuracy"] == pytest.approx(2 / 3)
    assert m["fwIoU"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)  # classes 0 and 3 each hold 3 of 6 GT pixels

    d2 = _from_labels(4, preds, target, ignore_index=255, convention="detectron2")
    torch.testing.assert_close(d2["IoU"], torch.tensor([0.5, nan, nan, 2 / 3], dtype=torch.float64), equal_nan=True)
    assert d2["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert d2["mDice"] == pytest.approx((4 / 6 + 0.8) / 2)
    assert (d2["pixel_accuracy"], d2["mean_accuracy"], d2["fwIoU"]) == (
        m["pixel_accuracy"], m["mean_accuracy"], m["fwIoU"]
    )


def _detectron2_reference(conf: np.ndarray) -> dict:
    """detectron2 SemSegEvaluator's formulas, written from its definitions on a [C, C] (gt, pred) matrix."""
    tp = np.diag(conf).astype(float)
    pos_gt, pos_pred = conf.sum(1).astype(float), conf.sum(0).astype(float)
    valid = pos_gt > 0
    iou = tp[valid] / (pos_gt + pos_pred - tp)[valid]
    return {
        "mIoU": iou.mean(),
        "fwIoU": (iou * pos_gt[valid] / pos_gt.sum()).sum(),
        "mean_accuracy": (tp[valid] / pos_gt[valid]).mean(),
        "pixel_accuracy": tp.sum() / pos_gt.sum(),
    }


def test_detectron2_convention_matches_its_formulas_on_random_data():
    c = 6
    m = SegmentationMetrics(c, ignore_index=255, convention="detectron2")
    conf = np.zeros((c, c), dtype=np.int64)
    for logits, target in _batches(11, c, 255, absent=2):
        m.update(logits, target)
        keep = target != 255
        np.add.at(conf, (target[keep].numpy(), logits.argmax(1)[keep].numpy()), 1)
    got, expected = m.compute(), _detectron2_reference(conf)
    assert conf[2].sum() == 0 and conf[:, 2].sum() > 0  # class 2 is predicted but never in the ground truth
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    np.testing.assert_array_equal(m.confusion_matrix.numpy(), conf)


def test_ignored_pixels_do_not_count_and_empty_batches_are_fine():
    m = SegmentationMetrics(3, ignore_index=255)
    m.update(torch.zeros(0, 3, 8, 8), torch.zeros(0, 8, 8, dtype=torch.long))
    r = m.compute()
    assert all(math.isnan(r[k]) for k in ("mIoU", "mDice", "pixel_accuracy", "mean_accuracy", "fwIoU"))
    assert r["IoU"].isnan().all()
    m.update(torch.tensor([[1, 2]]), torch.tensor([[255, 255]]))  # only ignored pixels
    assert int(m.confusion_matrix.sum()) == 0
    m.update(torch.tensor([[1, 2]]), torch.tensor([[1, 255]]))
    assert m.confusion_matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert m.compute()["mIoU"] == 1.0


def test_binary_one_channel_logits_threshold_at_zero():
    m = SegmentationMetrics(2, ignore_index=None)
    logits = torch.tensor([[[[-1.0, 0.0, 0.5, 3.0]]]])  # [1, 1, 1, 4]: 0.0 is not > 0 -> background
    m.update(logits, torch.tensor([[[0, 1, 1, 1]]]))
    assert m.confusion_matrix.tolist() == [[1, 0], [1, 2]]


def test_ties_pick_the_first_class_like_argmax():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1:, 0, 0] = 5.0  # tie between classes 1 and 2 -> 1
    m = SegmentationMetrics(3)
    m.update(logits, torch.tensor([[[1, 0], [0, 0]]]))
    assert m.confusion_matrix.tolist() == [[3, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_merge_equals_one_pass_and_gather_is_a_no_op_without_distributed():
    batches = _batches(5, 4, 255, n_batches=4)
    whole, a, b = (SegmentationMetrics(4) for _ in range(3))
    for i, (logits, target) in enumerate(batches):
        whole.update(logits, target)
        (a if i % 2 else b).update(logits, target)
    assert torch.equal(a.merge(b).gather().confusion_matrix, whole.confusion_matrix)
    with pytest.raises(EvaluationError, match=r"num_classes/ignore_index 5/255 != 4/255"):
        a.merge(SegmentationMetrics(5))
    a.reset()
    assert int(a.confusion_matrix.sum()) == 0


def test_bad_inputs_name_the_problem():
    m = SegmentationMetrics(3, ignore_index=255)
    with pytest.raises(EvaluationError, match=r"target values \[3, 7\] are neither a class in 0..2 nor ignore_index=255"):
        m.update(torch.tensor([[0, 1, 2, 0]]), torch.tensor([[0, 3, 7, 255]]))
    with pytest.raises(EvaluationError, match=r"target values \[-1\]"):
        m.update(torch.tensor([[0, 1]]), torch.tensor([[-1, 0]]))
    with pytest.raises(EvaluationError, match=r"predicted label 3 outside 0..2"):
        m.update(torch.tensor([[0, 3]]), torch.tensor([[0, 0]]))
    with pytest.raises(EvaluationError, match=r"logits have 4 channels, num_classes is 3"):
        m.update(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(EvaluationError, match=r"shapes differ: preds \[1, 3, 2, 3\] vs target \[1, 2, 2\]"):
        m.update(torch.randn(1, 3, 2, 3), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(EvaluationError, match=r"float tensor of the target's shape is ambiguous"):
        m.update(torch.rand(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(EvaluationError, match=r"target must be an integer tensor, got torch.float32"):
        m.update(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2))
    assert int(m.confusion_matrix.sum()) == 0  # nothing half-counted
    with pytest.raises(ConfigError, match=r"num_classes must be an int >= 2, got 1 \(a binary task is num_classes=2"):
        SegmentationMetrics(1)
    with pytest.raises(ConfigError, match=r"convention must be one of \('mmseg', 'detectron2'\), got 'voc'"):
        SegmentationMetrics(3, convention="voc")


def test_single_image_uint8_target_and_format_table():
    m = SegmentationMetrics(3, ignore_index=255, class_names=["sky", "road", "car"])
    m.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [2, 255]], dtype=torch.uint8))
    table = m.format_table()
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "Dice", "Acc", "pixels%"]
    assert lines[2].split() == ["sky", "100.00", "100.00", "100.00", "33.33"]
    assert lines[3].split() == ["road", "50.00", "66.67", "100.00", "33.33"]
    assert lines[4].split() == ["car", "0.00", "0.00", "0.00", "33.33"]
    assert "pixel accuracy 66.67" in table and "mmseg convention" in table


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_confusion_matrix_stays_on_the_data_device():
    m = SegmentationMetrics(4)
    cpu = SegmentationMetrics(4)
    for logits, target in _batches(2, 4, 255):
        m.update(logits.cuda(), target.cuda())
        cpu.update(logits, target)
    assert m.confusion_matrix.device.type == "cuda"
    with pytest.raises(EvaluationError, match=r"preds on cuda:0 but target on cpu"):
        m.update(logits.cuda(), target)
    assert torch.equal(m.confusion_matrix.cpu(), cpu.confusion_matrix)
