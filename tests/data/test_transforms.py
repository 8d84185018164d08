"""Boxes, masks and labels stay aligned through flips, crops, resizes and rotations; the presets' numerics.

Each instance is painted into the image in its own grey level, so the image itself says which instance a
transformed mask belongs to: a mask whose label drifted from its pixels is caught independently of our bookkeeping.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from resdense.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionTransform,
    detection_transforms,
    segmentation_transforms,
)

H, W = 96, 128


def _instances(rng, kind: str = "rect"):
    """Six non-overlapping instances (one per cell of a 2x3 grid) and an image painting each in grey 40*k."""
    image = np.zeros((H, W, 3), np.uint8)
    masks, boxes = [], []
    yy, xx = np.mgrid[:H, :W]
    for k, (r, c) in enumerate((r, c) for r in range(2) for c in range(3)):
        cy0, cx0 = r * H // 2, c * W // 3
        h, w = rng.integers(12, H // 2 - 4), rng.integers(12, W // 3 - 4)
        y0, x0 = cy0 + rng.integers(1, H // 2 - h), cx0 + rng.integers(1, W // 3 - w)
        if kind == "rect":
            m = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        else:  # ellipse: its transformed box is loose under rotation, its mask box is not
            m = ((yy + 0.5 - y0 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - x0 - w / 2) / (w / 2)) ** 2 <= 1
        ys, xs = np.nonzero(m)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        masks.append(m.astype(np.uint8))
        image[m] = 40 * (k + 1)
    n = len(masks)
    target = {"boxes": np.array(boxes, np.float32), "labels": np.arange(1, n + 1), "masks": np.stack(masks),
              "area": np.array([m.sum() for m in masks], np.float32), "iscrowd": np.zeros(n, np.int64)}
    return image, target


def _mask_box(m: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(m, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _check_aligned(image, t, tol=1.0, border_superset=False):
    """``border_superset``: where a rotated object is cut by the image border, the clipped box of its rotated
    corners is only a superset of its visible mask (the reason for ``boxes_from_masks``); check containment."""
    n = len(t["boxes"])
    assert t["masks"].shape[0] == n == len(t["labels"]) == len(t["area"]) == len(t["iscrowd"])
    assert t["masks"].shape[1:] == image.shape[1:]
    for k in range(n):
        m = t["masks"][k].bool()
        assert m.any(), f"instance {k} kept with an empty mask"
        mb, box = _mask_box(m), t["boxes"][k]
        touches = mb[0] == 0 or mb[1] == 0 or mb[2] == m.shape[1] or mb[3] == m.shape[0]
        if border_superset and touches:
            assert (mb[:2] >= box[:2] - tol).all() and (mb[2:] <= box[2:] + tol).all(), (mb, box)
        else:  # the box of the transformed mask matches the transformed box within tol px
            torch.testing.assert_close(mb, box, atol=tol, rtol=0)
        # the pixels under the mask are this instance's grey level (median: edges are interpolated)
        grey = (image[0][m] * 255).round().median().item()
        assert abs(grey - 40 * t["labels"][k].item()) <= 3, (k, grey, t["labels"][k])
        assert t["area"][k].item() == m.sum().item()
    return n


PIPELINES = {
    "hflip": [A.HorizontalFlip(p=1)],
    "vflip": [A.VerticalFlip(p=1)],
    "transpose": [A.Transpose(p=1)],
    "rot90": [A.RandomRotate90(p=1)],
    "crop": [A.RandomCrop(height=56, width=72, p=1)],
    "resized_crop": [A.RandomResizedCrop(size=(80, 80), scale=(0.2, 1.0), p=1)],
    "resize": [A.Resize(height=61, width=83, p=1)],
    "longest_max_size": [A.LongestMaxSize(max_size=200, p=1)],
    "rotate": [A.Rotate(limit=(-35, 35), p=1)],
    "affine": [A.Affine(scale=(0.7, 1.3), rotate=(-20, 20), translate_percent=(-0.1, 0.1), p=1)],
    "all": [A.RandomResizedCrop(size=(90, 90), scale=(0.3, 1.0), p=1), A.HorizontalFlip(p=0.5),
            A.Rotate(limit=(-30, 30), p=1), A.RandomRotate90(p=0.5)],
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_masks_boxes_labels_aligned(name):
    """Rectangles: their rotated box (albumentations' largest_box) is exactly their rotated mask's box."""
    kept = 0
    for seed in range(6):
        image, target = _instances(np.random.default_rng(seed), "rect")
        tf = DetectionTransform(PIPELINES[name], min_area=1.0, seed=seed)
        out_image, t = tf(image, target)
        # Each resampling moves a nearest-neighbour mask edge by under 1 px; "all" resamples twice (crop-resize,
        # then rotate), so its bound is 2 px.
        tol = 2.0 if name == "all" else 1.0
        kept += _check_aligned(out_image, t, tol=tol, border_superset=name in ("rotate", "affine", "all"))
    assert kept > 0


def test_rotation_of_round_objects_uses_mask_boxes():
    for seed in range(6):
        image, target = _instances(np.random.default_rng(seed), "ellipse")
        tf = DetectionTransform([A.Rotate(limit=(25, 40), p=1)], boxes_from_masks=True, seed=seed)
        out_image, t = tf(image, target)
        assert _check_aligned(out_image, t, tol=0.0) > 0


def test_crop_drops_instance_with_its_mask_and_label():
    image, target = _instances(np.random.default_rng(0), "rect")
    # Keep the left half: instances 1 and 4 (left column) survive, 3 and 6 (right column) are gone entirely,
    # and the middle column is cut to whatever fraction min_visibility allows.
    tf = DetectionTransform([A.Crop(x_min=0, y_min=0, x_max=W // 2, y_max=H, p=1)], min_visibility=0.5)
    out_image, t = tf(image, target)
    labels = set(t["labels"].tolist())
    assert {1, 4} <= labels and not {3, 6} & labels
    for lab in (2, 5):
        x0, _, x1, _ = target["boxes"][lab - 1]
        visible = (min(x1, W // 2) - x0) / (x1 - x0)
        assert (lab in labels) == (visible >= 0.5)
    _check_aligned(out_image, t)


def test_without_masks_area_scales_with_the_box():
    image, target = _instances(np.random.default_rng(1), "rect")
    target.pop("masks")
    _, t = DetectionTransform([A.Resize(height=H * 2, width=W, p=1)])(image, target)
    torch.testing.assert_close(t["area"], torch.from_numpy(target["area"] * 2))
    torch.testing.assert_close(t["boxes"][:, 1::2], torch.from_numpy(target["boxes"][:, 1::2] * 2))


def test_empty_target_passes_through():
    image = np.zeros((H, W, 3), np.uint8)
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
             "masks": np.zeros((0, H, W), np.uint8), "area": np.zeros(0, np.float32), "iscrowd": np.zeros(0)}
    out, t = detection_transforms(train=True, size=64, seed=0)(image, empty)
    assert out.shape == (3, 64, 64) and t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 64, 64)


def test_detection_preset_is_unnormalised_unless_asked():
    rng = np.random.default_rng(0)
    image, target = _instances(rng, "rect")
    out, t = detection_transforms(train=False, size=None)(image, target)
    torch.testing.assert_close(out, torch.from_numpy(image.transpose(2, 0, 1) / 255.0).float())
    torch.testing.assert_close(t["boxes"], torch.from_numpy(target["boxes"]))
    out_n, _ = detection_transforms(train=False, size=None, normalize=True)(image, target)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out_n, (out - mean) / std, atol=1e-5, rtol=1e-5)
    out_e, t_e = detection_transforms(train=False, size=64)(image, target)  # longest side 128 -> 64
    assert out_e.shape == (3, 48, 64)
    torch.testing.assert_close(t_e["boxes"], torch.from_numpy(target["boxes"]) / 2, atol=1e-4, rtol=0)


def test_detection_train_preset_keeps_alignment_and_is_seeded():
    image, target = _instances(np.random.default_rng(3), "ellipse")
    # colour jitter off: the instances' grey levels identify them in _check_aligned
    a = detection_transforms(train=True, size=64, rotate=30, color_jitter=0, seed=7)
    b = detection_transforms(train=True, size=64, rotate=30, color_jitter=0, seed=7)
    for _ in range(4):
        (ia, ta), (ib, tb) = a(image, target), b(image, target)
        torch.testing.assert_close(ia, ib)
        torch.testing.assert_close(ta["boxes"], tb["boxes"])
        assert ia.shape == (3, 64, 64)
        if len(ta["boxes"]):
            _check_aligned(ia, ta, tol=0.0)  # rotation on: boxes come from the masks


def test_segmentation_preset_normalises_and_pads_with_ignore():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, size=(50, 70)).astype(np.uint8)
    out, m = segmentation_transforms(train=False, size=None)(image, mask)
    assert out.shape == (3, 64, 96) and m.shape == (64, 96) and m.dtype == torch.int64
    mean = np.array(IMAGENET_MEAN, np.float32)
    std = np.array(IMAGENET_STD, np.float32)
    expected = ((image / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)
    torch.testing.assert_close(out[:, :50, :70], torch.from_numpy(expected), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(m[:50, :70].numpy(), mask)
    assert m[50:].eq(255).all() and m[:, 70:].eq(255).all()
    out_t, m_t = segmentation_transforms(train=True, size=32, seed=0)(image, mask)
    assert out_t.shape == (3, 32, 32) and set(m_t.unique().tolist()) <= {0, 1, 2}


def test_bit_packed_masks_equal_plain_warps_for_many_overlapping_instances():
    """20 overlapping instances span three packed channels; the result must equal warping each mask alone."""
    rng = np.random.default_rng(0)
    n = 20
    masks = np.zeros((n, H, W), np.uint8)
    boxes = []
    for i in range(n):
        x0, y0 = rng.integers(0, W - 20), rng.integers(0, H - 20)
        x1, y1 = x0 + rng.integers(8, 20), y0 + rng.integers(8, 20)
        masks[i, y0:y1, x0:x1] = 1
        boxes.append((x0, y0, x1, y1))
    target = {"boxes": np.array(boxes, np.float32), "labels": np.arange(1, n + 1), "masks": masks}
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    # Fortran-ordered planes, as pycocotools decodes them, take the column-major packing branch.
    fortran = {**target, "masks": np.asfortranarray(masks.transpose(1, 2, 0)).transpose(2, 0, 1)}
    ops = [A.RandomResizedCrop(size=(70, 90), scale=(0.3, 1.0), p=1), A.Rotate(limit=30, p=1),
           A.HorizontalFlip(p=0.5)]
    for seed in range(4):
        packed = DetectionTransform(ops, seed=seed)
        plain = DetectionTransform(ops, seed=seed)
        plain._pack = False
        assert packed._pack
        for tgt in (target, fortran):
            _, a = packed(image, tgt)
            packed.compose.set_random_seed(seed)
            _, b = plain(image, target)
            plain.compose.set_random_seed(seed)
            assert torch.equal(a["labels"], b["labels"]) and len(a["labels"]) > 8
            assert torch.equal(a["masks"], b["masks"])
            torch.testing.assert_close(a["boxes"], b["boxes"])
