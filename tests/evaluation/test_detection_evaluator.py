"""DetectionEvaluator on toy detector outputs: label / coordinate / mask mapping against a hand-computed result."""

from __future__ import annotations

import copy
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from pycocotools import mask as mask_utils

from resdense.errors import ConfigError, EvaluationError
from resdense.evaluation import DetectionEvaluator, SegmentationMetrics

# Two objects of category 7 ("dog") in image 42 (100 x 200 on disk); the model saw it at half size (50 x 100).
# Image 43 has an object too but is never given to the evaluator, so it must not count as missed.
LABEL_TO_CAT = {1: 3, 2: 7}  # contiguous model labels -> non-contiguous COCO ids


def _rect_rle(h, w, y0, y1, x0, x1) -> dict:
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    return mask_utils.encode(m)


def _gt() -> dict:
    def ann(i, image_id, box):
        x, y, w, h = box
        return {"id": i, "image_id": image_id, "category_id": 7, "bbox": box, "area": float(w * h), "iscrowd": 0,
                "segmentation": _rect_rle(100, 200, y, y + h, x, x + w)}

    return {
        "images": [{"id": 42, "height": 100, "width": 200}, {"id": 43, "height": 100, "width": 200}],
        "annotations": [ann(1, 42, [20, 20, 40, 20]), ann(2, 42, [100, 40, 60, 40]), ann(3, 43, [0, 0, 50, 50])],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }


def _outputs_and_target():
    # Boxes in the 50 x 100 frame: A hits GT 1, B is a small false positive, C hits GT 2 (scores A > B > C).
    boxes = torch.tensor([[10.0, 10, 30, 20], [0, 40, 10, 48], [50, 20, 80, 40]])
    masks = torch.full((3, 1, 50, 100), 0.1)
    for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[k, 0, y0:y1, x0:x1] = 0.9
    output = {"boxes": boxes, "labels": torch.tensor([2, 2, 2]), "scores": torch.tensor([0.9, 0.8, 0.7]),
              "masks": masks}
    target = {"image_id": torch.tensor(42), "orig_size": torch.tensor([100, 200]), "size": torch.tensor([50, 100])}
    return output, target


# Ranked TP, FP, TP over 2 GT at every IoU threshold: precision 1 up to recall 0.5 (51 of the 101 recall points),
# 2/3 from 0.51 to 1.0 (50 points).
HAND_AP = (51 * 1.0 + 50 * (2 / 3)) / 101


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools decode, numpy 2
@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_toy_model_reproduces_hand_computed_map(backend):
    output, target = _outputs_and_target()
    ev = DetectionEvaluator(_gt(), LABEL_TO_CAT, iou_types=("bbox", "segm"), backend=backend)
    ev.update([output], [target])
    # Boxes scaled by (orig / size) = 2 and written as xywh; label 2 -> category 7.
    assert [(r["category_id"], r["bbox"]) for r in ev.results("bbox")] == [
        (7, [20.0, 20.0, 40.0, 20.0]), (7, [0.0, 80.0, 20.0, 16.0]), (7, [100.0, 40.0, 60.0, 40.0])
    ]
    # Probabilities resized to the file's size and thresholded at 0.5 give exactly the GT rectangles.
    seg = ev.results("segm")
    gt_mask = mask_utils.decode(_gt()["annotations"][0]["segmentation"])
    assert np.array_equal(mask_utils.decode(seg[0]["segmentation"]), gt_mask)
    assert [int(mask_utils.area(r["segmentation"])) for r in seg] == [800, 320, 2400]
    stats = ev.compute()
    for iou_type in ("bbox", "segm"):
        assert stats[f"{iou_type}/AP"] == pytest.approx(HAND_AP, abs=1e-12)
        assert stats[f"{iou_type}/AP50"] == pytest.approx(HAND_AP, abs=1e-12)
        # Small range: GT 2 (2400 px) is out of range, so C is ignored; A then B -> precision 1 at recall 1.
        # Medium range: A (matched to the out-of-range GT 1) and B (320 px, unmatched) are ignored -> C alone.
        # (pycocotools divides by tp + fp + eps, so "1" is 1 - 2e-16.)
        got = [stats[f"{iou_type}/{k}"] for k in ("APs", "APm", "APl", "AR1", "AR10", "AR100")]
        assert got == pytest.approx([1.0, 1.0, -1.0, 0.5, 1.0, 1.0], abs=1e-12)


def test_wrong_label_mapping_or_unscaled_boxes_would_score_zero():
    # The same outputs through a mapping that sends label 2 to "cat" and at full size (no scaling) score 0:
    # the hand-computed result above really depends on both mappings.
    output, target = _outputs_and_target()
    swapped = DetectionEvaluator(_gt(), {1: 7, 2: 3})
    swapped.update([output], [target])
    assert swapped.compute()["bbox/AP"] == 0.0
    unscaled = DetectionEvaluator(_gt(), LABEL_TO_CAT)
    unscaled.update([output], [dict(target, size=torch.tensor([100, 200]))])
    assert unscaled.compute()["bbox/AP"] < 0.2


def test_merge_keeps_first_results_of_repeated_images():
    output, target = _outputs_and_target()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
    a, b = DetectionEvaluator(_gt(), LABEL_TO_CAT), DetectionEvaluator(_gt(), LABEL_TO_CAT)
    a.update([output], [target])
    b.update([empty, output], [dict(target, image_id=43, size=target["orig_size"]), target])  # 42 repeated
    merged = a.merge(b)
    assert merged.image_ids == [42, 43] and len(merged.results("bbox")) == 3
    # Image 43 now counts: its object is missed, so recall is 2 of 3.
    assert merged.compute()["bbox/AR100"] == pytest.approx(2 / 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        output, target = _outputs_and_target()
        ev = DetectionEvaluator(_gt(), LABEL_TO_CAT)
        if rank == 0:
            ev.update([output], [target])
        else:  # rank 1 sees image 43 (no detections) and image 42 again, as DistributedSampler padding does
            empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
            ev.update([empty, copy.deepcopy(output)], [dict(target, image_id=43, size=target["orig_size"]), target])
        seg = SegmentationMetrics(3)
        seg.update(torch.tensor([[rank, 2]]), torch.tensor([[rank, 1]]))  # rank 0: (0,0) (1,2); rank 1: (1,1) (1,2)
        queue.put((rank, ev.gather().compute()["bbox/AR100"], seg.gather().confusion_matrix.tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_across_two_processes():
    """Real torch.distributed (gloo, 2 processes): both evaluators end with the union of the results."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_gather_worker, args=(2, _free_port(), queue), nprocs=2, join=True, start_method="spawn")
    results = {rank: (ar, cm) for rank, ar, cm in (queue.get(timeout=30) for _ in range(2))}
    for rank in (0, 1):
        ar, cm = results[rank]
        assert ar == pytest.approx(2 / 3)  # image 42 counted once, image 43's object missed
        assert cm == [[1, 0, 0], [0, 1, 2], [0, 0, 0]]


def test_bad_outputs_and_targets_name_the_problem():
    output, target = _outputs_and_target()
    ev = DetectionEvaluator(_gt(), LABEL_TO_CAT, iou_types=("bbox", "segm"))
    with pytest.raises(EvaluationError, match=r"image 42: labels \[5\] have no category id in label_to_cat_id"):
        ev.update([dict(output, labels=torch.tensor([2, 5, 2]))], [target])
    with pytest.raises(EvaluationError, match=r"target has no 'orig_size'"):
        ev.update([output], [{"image_id": 42}])
    with pytest.raises(EvaluationError, match=r"masks must be \[3, 1, 50, 100\] \(pasted into the 'size' frame\)"):
        ev.update([dict(output, masks=torch.zeros(3, 1, 100, 200))], [target])
    with pytest.raises(EvaluationError, match=r"output of image 42 has no 'masks'"):
        ev.update([{k: v for k, v in output.items() if k != "masks"}], [target])
    with pytest.raises(EvaluationError, match=r"2 outputs for 1 targets"):
        ev.update([output, output], [target])
    with pytest.raises(EvaluationError, match=r"no images seen; call update\(\) first"):
        ev.compute()
    with pytest.raises(ConfigError, match=r"iou_types must be distinct values of \('bbox', 'segm'\)"):
        DetectionEvaluator(_gt(), LABEL_TO_CAT, iou_types=("keypoints",))
