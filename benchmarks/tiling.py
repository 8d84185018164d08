"""Large-image inference: sliding windows vs the whole image (time and peak memory), and the cost of TTA.

Part 1: a U-Net R18 (3 classes, random weights, fp32, eval) on a 2048 x 2048 image, whole and tiled (512 px
windows, overlap 0.25, Gaussian blend, tile batch 1, 2 and 4). Each mode runs in its own process, so its peak
resident memory (``ru_maxrss``, after a warm-up on a small image) is its own; it prints seconds per image and the
peak memory above the warm process. Part 2: TTA on a 512 x 512 image through the Predictor: plain, horizontal flip
(2 copies), and flip x scales 0.75/1/1.25 (6 copies), as time ratios measured in the same run.

Part 3: tiled Mask R-CNN with many instances. A Mask R-CNN R18 (random weights, ``box_score_thresh=0`` so that
every window gives ``--mask-dets`` instances, windows resized to 512 px inside the model) on a canvas of the shapes
set's images. Masks as RLEs of the image (what the Predictor does) against masks as image-sized float arrays per
instance (torchvision's paste into each window, placed in the image and merged as arrays: the naive path), each in
its own process (peak resident memory above the warm process, seconds). Both run on a 1024 px image with 20
instances per window; then the RLE path alone on the ``--mask-size`` image, the naive path's need stated from
the count of window instances it would hold.

    python benchmarks/tiling.py [--size 2048] [--tile 512] [--mask-size 4096] [--mask-tile 1024] [--mask-dets 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from resdense.hardware import hardware_summary  # noqa: E402


def _model():
    from resdense.heads import UNet

    torch.manual_seed(0)
    return UNet("resnet18", num_classes=3).eval()


def _one_mode(mode: str, size: int, tile: int, tile_batch: int) -> dict:
    from resdense.inference import sliding_window_logits

    model = _model()
    with torch.no_grad():
        sliding_window_logits(model, torch.rand(3, 256, 256), None)  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    image = torch.rand(3, size, size)
    t0 = time.perf_counter()
    with torch.no_grad():
        sliding_window_logits(model, image, None if mode == "whole" else tile, overlap=0.25, tile_batch=tile_batch)
    seconds = time.perf_counter() - t0
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"mode": mode, "tile_batch": tile_batch, "seconds": seconds, "peak_mib": peak}


def part_tiles(size: int, tile: int) -> None:
    print(f"\nU-Net R18 on one {size} x {size} image, fp32 ({torch.get_num_threads()} threads)")
    rows = []
    for mode, tb in (("whole", 1), ("tiled", 1), ("tiled", 2), ("tiled", 4)):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--size", str(size), "--tile", str(tile),
                              "--tile-batch", str(tb)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    whole = rows[0]
    for r in rows:
        label = "whole image" if r["mode"] == "whole" else f"tiles {tile} px, overlap 0.25, batch {r['tile_batch']}"
        print(f"  {label:<40} {r['seconds']:7.2f} s/image ({whole['seconds'] / r['seconds']:.2f}x whole's speed)   "
              f"peak +{r['peak_mib']:7.0f} MiB ({r['peak_mib'] / whole['peak_mib']:.2f}x whole's)")


def part_tta(size: int) -> None:
    from resdense.engine import SegmentationTask
    from resdense.inference import TTA, Predictor

    model = _model()
    image = (torch.rand(3, size, size) * 255).to(torch.uint8)
    runs = {"plain": None, "hflip (2 copies)": TTA(scales=(1.0,)), "hflip x 3 scales (6 copies)": TTA()}
    preds = {k: Predictor(model, SegmentationTask(3), tta=v) for k, v in runs.items()}
    for p in preds.values():
        p(image)
    times = {k: [] for k in preds}
    for _ in range(3):
        for k, p in preds.items():
            t0 = time.perf_counter()
            p(image)
            times[k].append(time.perf_counter() - t0)
    print(f"\nTTA on one {size} x {size} image (Predictor, U-Net R18; median of 3 interleaved rounds)")
    base = sorted(times["plain"])[1]
    for k, ts in times.items():
        t = sorted(ts)[1]
        print(f"  {k:<30} {t:6.2f} s/image   {t / base:5.2f}x plain's time")


def _mask_rcnn(dets: int):
    from resdense.heads import build_detector

    torch.manual_seed(0)
    return build_detector("mask_rcnn", backbone="resnet18", num_classes=4, min_size=512, max_size=512,
                          fpn_channels=64, box_score_thresh=0.0, box_detections_per_img=dets).eval()


def _shapes_canvas(size: int) -> torch.Tensor:
    """``uint8 [3, size, size]``: the shapes set's 256 px images side by side (1-4 shapes each)."""
    import tempfile

    import numpy as np

    from resdense.data import make_shapes, read_image

    side = size // 256
    with tempfile.TemporaryDirectory() as tmp:
        shapes = make_shapes(tmp, n_train=0, n_val=side * side, size=256, seed=0)
        images = [read_image(p) for p in sorted(shapes.val.images.glob("*.jpg"))]
    rows = [np.concatenate(images[r * side:(r + 1) * side], axis=1) for r in range(side)]
    return torch.from_numpy(np.concatenate(rows, axis=0)).permute(2, 0, 1).contiguous()


def _one_mask_mode(mode: str, size: int, tile: int, dets: int) -> dict:
    from resdense.engine import DetectionTask
    from resdense.inference import Predictor, sliced_detection

    model = _mask_rcnn(dets)
    task = DetectionTask(["square", "circle", "triangle"], iou_types=("bbox", "segm"))
    predictor = Predictor(model, task, tile=tile, overlap=0.25, tile_batch=1, score_threshold=0.0)
    image = _shapes_canvas(size)
    predictor(image[:, :tile // 2, :tile // 2])  # warm-up (kernels, allocator)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.no_grad():
        if mode == "rle":
            out = predictor(image)
            n = len(out["rles"])
        else:  # torchvision's pasted masks, placed in the image per window instance and merged as arrays
            out = sliced_detection(lambda ims: task.predict(model, ims), image.float() / 255, tile, overlap=0.25,
                                   tile_batch=1, max_detections=None)
            n = len(out["masks"])
    seconds = time.perf_counter() - t0
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    windows = _window_count(size, tile)
    return {"mode": mode, "seconds": seconds, "peak_mib": peak, "instances": n, "windows": windows}


def _window_count(size: int, tile: int) -> int:
    from resdense.inference.tiling import windows

    return len(windows(size, size, tile, 0.25))


def _run_mask_child(mode: str, size: int, tile: int, dets: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--mask-size", str(size), "--mask-tile",
                          str(tile), "--mask-dets", str(dets)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_masks(size: int, tile: int, dets: int) -> None:
    print(f"\nMask R-CNN R18 (random weights, every detection kept), tiles with overlap 0.25, tile batch 1, fp32 "
          f"({torch.get_num_threads()} threads)")
    small = {mode: _run_mask_child(mode, 1024, 512, 20) for mode in ("rle", "dense")}
    rle, dense = small["rle"], small["dense"]
    print(f"  1024 x 1024, 512 px tiles ({rle['windows']} windows + the whole image), 20 instances per window:")
    for r in (rle, dense):
        label = "masks as RLEs" if r["mode"] == "rle" else "masks as image-sized arrays"
        print(f"    {label:<30} {r['seconds']:7.2f} s   peak +{r['peak_mib']:7.0f} MiB   {r['instances']} instances "
              f"({r['peak_mib'] / dense['peak_mib']:.2f}x the arrays' peak, {dense['seconds'] / r['seconds']:.2f}x "
              f"their speed)")
    big = _run_mask_child("rle", size, tile, dets)
    held = (big["windows"] + 1) * dets  # the naive path holds every window instance as a float image until merged
    need_gib = held * size * size * 4 / 2**30
    print(f"  {size} x {size}, {tile} px tiles ({big['windows']} windows + the whole image), {dets} instances per "
          f"window:")
    print(f"    {'masks as RLEs':<30} {big['seconds']:7.2f} s   peak +{big['peak_mib']:7.0f} MiB   "
          f"{big['instances']} instances")
    print(f"    {'masks as image-sized arrays':<30} not run: {held} window instances x {size} x {size} float32 = "
          f"{need_gib:.0f} GiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--tta-size", type=int, default=512)
    p.add_argument("--mask-size", type=int, default=4096)
    p.add_argument("--mask-tile", type=int, default=1024)
    p.add_argument("--mask-dets", type=int, default=100, help="instances per window (box_detections_per_img)")
    p.add_argument("--parts", default="tiles,tta,masks", help="comma-separated: tiles, tta, masks")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tile-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child in ("rle", "dense"):
        print(json.dumps(_one_mask_mode(args.child, args.mask_size, args.mask_tile, args.mask_dets)))
        return
    if args.child:
        print(json.dumps(_one_mode(args.child, args.size, args.tile, args.tile_batch)))
        return
    print(f"machine: {hardware_summary()}; precision fp32; torch {torch.__version__}; "
          f"{torch.get_num_threads()} threads")
    parts = args.parts.split(",")
    if "tiles" in parts:
        part_tiles(args.size, args.tile)
    if "tta" in parts:
        part_tta(args.tta_size)
    if "masks" in parts:
        part_masks(args.mask_size, args.mask_tile, args.mask_dets)


if __name__ == "__main__":
    main()
