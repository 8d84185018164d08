"""Large-image inference: sliding windows vs the whole image (time and peak memory), and the cost of TTA.

Part 1: a U-Net R18 (3 classes, random weights, fp32, eval) on a 2048 x 2048 image, whole and tiled (512 px
windows, overlap 0.25, Gaussian blend, tile batch 1, 2 and 4). Each mode runs in its own process, so its peak
resident memory (``ru_maxrss``, after a warm-up on a small image) is its own; it prints seconds per image and the
peak memory above the warm process. Part 2: TTA on a 512 x 512 image through the Predictor: plain, horizontal flip
(2 copies), and flip x scales 0.75/1/1.25 (6 copies), as time ratios measured in the same run.

    python benchmarks/tiling.py [--size 2048] [--tile 512]
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
    from resdense.engine import sliding_window_logits

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
    from resdense.engine import TTA, Predictor, SegmentationTask

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--tta-size", type=int, default=512)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tile-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_one_mode(args.child, args.size, args.tile, args.tile_batch)))
        return
    print(f"machine: {hardware_summary()}; precision fp32; torch {torch.__version__}")
    part_tiles(args.size, args.tile)
    part_tta(args.tta_size)


if __name__ == "__main__":
    main()
