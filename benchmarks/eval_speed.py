"""Speed of resdense.evaluation against the reference libraries, measured in one run.

COCO part: a val2017-sized synthetic problem (5,000 images, ~37k ground-truth boxes, ~77k detections, 80
categories) evaluated end to end (index the GT dict, load the results, evaluate, accumulate, summarise) by
``coco_map`` (both backends), pycocotools and faster-coco-eval called directly; asserts the 12 stats agree to
1e-12 and prints the time ratios.

Segmentation part: ``SegmentationMetrics.update`` throughput against torchmetrics' ``MulticlassJaccardIndex``
(default ``validate_args=True``, and ``False``) on logits and on label maps.

    python benchmarks/eval_speed.py                  # both parts
    python benchmarks/eval_speed.py --part coco --iou-type segm
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import sys
import time

import numpy as np
import torch

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]  # the repository, for tests/
from resdense.evaluation import COCO_STAT_KEYS, SegmentationMetrics, coco_map  # noqa: E402
from tests.evaluation.synthetic import random_coco_problem  # noqa: E402


def _pycocotools(gt: dict, results: list, iou_type: str) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:12])


def _faster(gt: dict, results: list, iou_type: str) -> np.ndarray:
    from faster_coco_eval.core import COCO, COCOeval_faster

    coco_gt = COCO(gt)
    ev = COCOeval_faster(coco_gt, coco_gt.loadRes(results), iou_type, print_function=lambda *a: None)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats[:12])


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def bench_coco(iou_type: str, repeats: int) -> None:
    t0 = time.perf_counter()
    gt, bbox_res, segm_res = random_coco_problem(
        2017,
        num_images=(5000, 5000),
        image_size=(240, 640),
        num_categories=(80, 80),
        max_gt_per_image=15,
        max_dt_per_image=29,
        segm=iou_type == "segm",
        dense_image_prob=0.01,
    )
    results = bbox_res if iou_type == "bbox" else segm_res
    print(
        f"COCO {iou_type}: {len(gt['images'])} images, {len(gt['annotations'])} GT, {len(results)} detections "
        f"(generated in {time.perf_counter() - t0:.1f} s)"
    )
    times: dict[str, list[float]] = {"pycocotools": [], "faster-coco-eval": [], "coco_map(faster)": [],
                                     "coco_map(pycocotools)": []}
    stats = {}
    for _ in range(repeats):
        # The engines write into the dicts they get; each run starts from pristine copies (not timed).
        stats["pycocotools"], t = _timed(_pycocotools, copy.deepcopy(gt), copy.deepcopy(results), iou_type)
        times["pycocotools"].append(t)
        stats["faster-coco-eval"], t = _timed(_faster, copy.deepcopy(gt), copy.deepcopy(results), iou_type)
        times["faster-coco-eval"].append(t)
        for backend in ("faster", "pycocotools"):
            out, t = _timed(coco_map, gt, results, iou_type, backend)
            stats[f"coco_map({backend})"] = np.asarray([out[k] for k in COCO_STAT_KEYS])
            times[f"coco_map({backend})"].append(t)
    ref = stats["pycocotools"]
    for name, s in stats.items():
        diff = float(np.abs(s - ref).max())
        assert diff <= 1e-12, f"{name} differs from pycocotools by {diff}"
    print(f"  stats agree with pycocotools to 1e-12; AP={ref[0]:.4f} AP50={ref[1]:.4f} AR100={ref[8]:.4f}")
    base = min(times["pycocotools"])
    fast = min(times["faster-coco-eval"])
    print(f"  {'':24s} {'best of ' + str(repeats):>12s} {'vs pycocotools':>15s} {'vs faster-coco-eval':>20s}")
    for name, ts in times.items():
        t = min(ts)
        print(f"  {name:24s} {t:10.2f} s {base / t:14.2f}x {fast / t:19.2f}x")


def bench_seg(repeats: int) -> None:
    from torchmetrics.classification import MulticlassJaccardIndex

    torch.manual_seed(0)
    n, c, h, w = 8, 19, 256, 512
    logits = torch.randn(n, c, h, w)
    target = torch.randint(0, c, (n, h, w))
    target[:, :16] = 255  # an ignored band, as in Cityscapes
    labels = logits.argmax(1)
    print(f"SegmentationMetrics.update, batch [{n}, {c}, {h}, {w}], ignore_index=255, {torch.get_num_threads()} threads")
    print(f"  {'input':10s} {'ours':>10s} {'tm(validate)':>13s} {'ratio':>7s} {'tm(no validate)':>16s} {'ratio':>7s}")
    for name, preds in (("logits", logits), ("labels", labels)):
        ours = SegmentationMetrics(c, ignore_index=255)
        tm = MulticlassJaccardIndex(c, ignore_index=255, average="macro")
        tm_fast = MulticlassJaccardIndex(c, ignore_index=255, average="macro", validate_args=False)
        times = {}
        for key, metric in (("ours", ours), ("tm", tm), ("tm_fast", tm_fast)):
            metric.update(preds, target)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                metric.update(preds, target)
                best = min(best, time.perf_counter() - t0)
            times[key] = best
        mp = n * h * w / 1e6
        print(
            f"  {name:10s} {mp / times['ours']:7.1f} Mpx/s {mp / times['tm']:9.1f} Mpx/s "
            f"{times['tm'] / times['ours']:6.2f}x {mp / times['tm_fast']:12.1f} Mpx/s "
            f"{times['tm_fast'] / times['ours']:6.2f}x"
        )
        torch.testing.assert_close(
            ours.compute()["mIoU"], float(tm.compute()), atol=1e-6, rtol=0, msg="mIoU differs from torchmetrics"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("coco", "seg", "all"), default="all")
    parser.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox")
    parser.add_argument("--repeats", type=int, default=1, help="COCO runs per engine (best time is reported)")
    args = parser.parse_args()
    if args.part in ("coco", "all"):
        bench_coco(args.iou_type, args.repeats)
    if args.part in ("seg", "all"):
        bench_seg(repeats=5)


if __name__ == "__main__":
    main()
