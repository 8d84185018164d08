"""Tiled instance segmentation: Mask R-CNN masks as RLEs of the image, merged across windows, and COCO results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage
from torchvision.models.detection.roi_heads import paste_masks_in_image

from resdense.engine import DetectionTask
from resdense.errors import ConfigError
from resdense.heads import build_detector, paste_rles, roi_mask_outputs
from resdense.inference import Predictor, prediction_picture, prediction_results, sliced_detection
from resdense.inference.tiling import greedy_merge, windows


def tiny_mask_rcnn() -> torch.nn.Module:
    """ResNet-18 with a 32-channel FPN at 96-128 px, every detection kept (score threshold 0, 30 per image): random
    weights detect 30 random instances, which is what the exactness checks need."""
    torch.manual_seed(0)
    return build_detector("mask_rcnn", backbone="resnet18", num_classes=4, min_size=96, max_size=128,
                          fpn_channels=32, representation_size=32, box_score_thresh=0.0,
                          box_detections_per_img=30).eval()


def test_a_tile_covering_the_image_gives_the_untiled_mask_rcnn_output_exactly():
    model = tiny_mask_rcnn()
    task = DetectionTask(["a", "b", "c"], iou_types=("bbox", "segm"))
    image = (torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    whole = Predictor(model, task, score_threshold=0.0)(image)
    tiled = Predictor(model, task, score_threshold=0.0, tile=120)(image)
    assert "masks" in whole and "rles" in tiled and "masks" not in tiled
    assert len(whole["boxes"]) == 30
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(tiled[key], whole[key]), key
    decoded = mask_utils.decode(tiled["rles"]).transpose(2, 0, 1)
    assert decoded.shape == (30, 90, 120)
    assert np.array_equal(decoded, (whole["masks"][:, 0] > 0.5).numpy())
    assert decoded.any(axis=(1, 2)).sum() > 20  # the masks are not empty: the comparison means something


def test_roi_masks_pasted_at_an_offset_are_the_window_masks_in_the_larger_image():
    model = tiny_mask_rcnn()
    window = torch.rand(3, 70, 90, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pasted = model([window])[0]["masks"][:, 0] > 0.5
    out = roi_mask_outputs(model, [window])[0]
    rles = paste_rles(out["roi_masks"], out["boxes"], (70, 90), offset=(30, 50), image_size=(200, 300))
    big = mask_utils.decode(rles).transpose(2, 0, 1)
    assert np.array_equal(big[:, 30:100, 50:140], pasted.numpy()) and big.sum() == int(pasted.sum()) > 0


# ---- merging across windows: a deterministic stand-in for the detector ------------------------------------------
OBJECTS = {  # (y0, y1, x0, x1), label: the 2 x 2 windows of a 112 px image with 64 px tiles are [0, 64), [48, 112)
    "across the vertical border": ((20, 40, 40, 80), 1),
    "across the horizontal border": ((50, 90, 10, 30), 2),
    "in all four windows": ((44, 76, 44, 76), 1),
    "in one window": ((90, 105, 85, 100), 2),
}


def _image() -> torch.Tensor:
    image = torch.zeros(3, 112, 112)
    for (y0, y1, x0, x1), label in OBJECTS.values():
        image[label - 1, y0:y1, x0:x1] = 1.0
    return image


def blob_detector(images: list[torch.Tensor], dense: bool = False) -> list[dict[str, torch.Tensor]]:
    """Every connected region of a bright red (label 1) or green (label 2) channel is a detection: its box, a score
    growing with its area, and its mask resampled to 28 x 28 over the box as a RoI mask (``dense``: pasted into
    the input's frame by torchvision, as a Mask R-CNN's ``masks``)."""
    outs = []
    for im in images:
        boxes, labels, scores, rois = [], [], [], []
        for label in (1, 2):
            regions, _ = ndimage.label((im[label - 1] > 0.5).numpy())
            for k, (ys, xs) in enumerate(ndimage.find_objects(regions), start=1):
                piece = torch.from_numpy(regions[ys, xs] == k).float()
                rois.append(F.interpolate(piece[None, None], size=(28, 28), mode="bilinear", align_corners=False)[0])
                boxes.append([xs.start, ys.start, xs.stop, ys.stop])
                labels.append(label)
                scores.append(float(piece.sum()) / 1e4)
        out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
               "scores": torch.tensor(scores), "roi_masks": torch.stack(rois) if rois else torch.zeros(0, 1, 28, 28)}
        if dense:
            out["masks"] = paste_masks_in_image(out.pop("roi_masks"), out["boxes"], tuple(im.shape[-2:]))
        outs.append(out)
    return outs


@pytest.mark.parametrize("full_image", [True, False])
def test_objects_cut_by_a_2x2_tiling_merge_into_one_instance_each(full_image):
    image = _image()
    assert len(windows(112, 112, 64, 0.25)) == 4
    out = sliced_detection(blob_detector, image, 64, overlap=0.25, tile_batch=2, full_image=full_image)
    # the same merge with torchvision's image-sized masks: the RLE path gives the same instances, pixel for pixel
    dense = sliced_detection(lambda ims: blob_detector(ims, dense=True), image, 64, overlap=0.25, tile_batch=2,
                             full_image=full_image)
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(out[key], dense[key]), key
    masks = mask_utils.decode(out["rles"]).transpose(2, 0, 1).astype(bool)
    assert np.array_equal(masks, (dense["masks"][:, 0] > 0.5).numpy())
    assert len(out["rles"]) == len(OBJECTS)
    for name, ((y0, y1, x0, x1), label) in OBJECTS.items():
        truth = np.zeros((112, 112), bool)
        truth[y0:y1, x0:x1] = True
        iou = (masks & truth).sum((1, 2)) / (masks | truth).sum((1, 2))
        best = int(iou.argmax())
        assert iou[best] > 0.85 and (iou > 0.1).sum() == 1, (name, iou)  # one instance, the whole object
        assert int(out["labels"][best]) == label
        torch.testing.assert_close(out["boxes"][best], torch.tensor([x0, y0, x1, y1], dtype=torch.float32))


def test_merge_modes_and_match_metrics():
    # a piece (right half) beside the whole object: IoS 1 matches, IoU 0.5 does not; "nms" keeps the best as it is
    boxes = torch.tensor([[0.0, 0, 40, 20], [20, 0, 44, 20]])
    parts = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1]),
              "rles": [mask_utils.encode(np.asfortranarray(m)) for m in _boxes_as_masks(boxes)]}]
    nmm = greedy_merge(parts)
    assert nmm["boxes"].tolist() == [[0.0, 0, 44, 20]]
    assert mask_utils.area(nmm["rles"][0]) == 44 * 20
    assert greedy_merge(parts, merge="nms")["boxes"].tolist() == [[0.0, 0, 40, 20]]
    assert len(greedy_merge(parts, metric="iou")["boxes"]) == 2
    with pytest.raises(ConfigError, match="metric='dice'"):
        greedy_merge(parts, metric="dice")


def _boxes_as_masks(boxes: torch.Tensor) -> list[np.ndarray]:
    out = []
    for x0, y0, x1, y1 in boxes.int().tolist():
        m = np.zeros((20, 50), np.uint8)
        m[y0:y1, x0:x1] = 1
        out.append(m)
    return out


def test_tiled_mask_rcnn_results_load_in_pycocotools_and_draw(tmp_path):
    model = tiny_mask_rcnn()
    task = DetectionTask(["a", "b", "c"], iou_types=("bbox", "segm"))
    predictor = Predictor(model, task, score_threshold=0.0, tile=64, overlap=0.25)
    with pytest.raises(ConfigError, match="tta with tile = 64 for a Mask R-CNN"):
        Predictor(model, task, tile=64, tta=True)
    image = (torch.rand(3, 96, 120, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    pred = predictor(image)
    # each window keeps the model's 30 best; the merged image keeps more than one window's (no cap of 30)
    assert len(pred["rles"]) == len(pred["boxes"]) > 30
    results = prediction_results(pred, 7, {1: 11, 2: 12, 3: 13})
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(results))
    gt = COCO()
    gt.dataset = {"images": [{"id": 7, "file_name": "x.png", "height": 96, "width": 120}],
                  "categories": [{"id": i, "name": n} for i, n in ((11, "a"), (12, "b"), (13, "c"))],
                  "annotations": [{"id": 1, "image_id": 7, "category_id": 11, "bbox": [10, 10, 30, 20], "area": 600,
                                   "iscrowd": 0, "segmentation": [[10, 10, 40, 10, 40, 30, 10, 30]]}]}
    gt.createIndex()
    dt = gt.loadRes(str(path))
    assert len(dt.getAnnIds()) == len(results) and {a["category_id"] for a in results} <= {11, 12, 13}
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats.shape == (12,)
    # the picture paints the RLE masks: it differs from the boxes alone
    rgb = image.permute(1, 2, 0).numpy()
    with_masks = prediction_picture(predictor, rgb, pred)
    boxes_only = prediction_picture(predictor, rgb, {k: v for k, v in pred.items() if k != "rles"})
    assert with_masks.shape == boxes_only.shape and not np.array_equal(with_masks, boxes_only)


def _status_kib(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` (the peak) of this process, from the kernel's account."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/self/status")


def test_tiled_rle_memory_does_not_grow_with_instances_times_image():
    size, step = 2048, 128
    image = torch.zeros(3, size, size)
    for y in range(8, size - 64, step):  # a grid of 90 px squares, many cut by the windows' edges
        for x in range(8, size - 64, step):
            image[0, y:y + 90, x:x + 90] = 1.0
    sliced_detection(blob_detector, image[:, :256, :256], 128, full_image=False)  # warm up
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size (VmHWM) to the current one
    before = _status_kib("VmRSS")
    out = sliced_detection(blob_detector, image, 256, overlap=0.25, tile_batch=2, full_image=False,
                           max_detections=None)
    peak_mib = (_status_kib("VmHWM") - before) / 1024
    print(f"{len(out['rles'])} instances, peak {peak_mib:.1f} MiB above the warm process")
    assert len(out["rles"]) == int(image[0, 8::step, 8::step].sum()) == 256
    # one float mask of the image per instance would be 16 MiB each (4 GiB in all); the RLE path holds RLEs and a
    # tile batch's crops: under ten image-sized float masks
    assert peak_mib < 10 * 16
