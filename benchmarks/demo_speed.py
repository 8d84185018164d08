"""The demo's cost on this CPU: wall time per task and in all, with the precision ``amp: auto`` chose, against the
demo's targets.

Targets (2-core CPU): total <= 8 min on a CPU without native bf16 (fp32; e.g. AVX2-only Zen 3), <= 5 min on one
with native bf16 (AVX512-BF16/AMX; bf16 autocast); validation mIoU >= 0.92, box AP50 >= 0.95, box AP >= 0.75. The
time targets live here, not in the test suite: a slower machine is not a failing test.

To see what an AVX2-only laptop gets on a machine with AVX-512, force the AVX2 kernels (oneDNN's bf16 report follows)::

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/demo_speed.py

Usage: ``python benchmarks/demo_speed.py [--out DIR] [--set KEY=VALUE ...] [--check]`` (``--check``: exit 1 when a
target is missed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

from resdense.demo import run_demo
from resdense.hardware import cpu_capability, native_bf16

QUALITY = {"segmentation": [("mIoU", 0.92)], "detection": [("bbox/AP50", 0.95), ("bbox/AP", 0.75)]}
MINUTES = {True: 5.0, False: 8.0}  # by native bf16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="demo output folder (default: a temporary folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        metrics = run_demo(out, overrides=args.overrides)["metrics"]
    bf16 = native_bf16()
    print(f"\nCPU capability {cpu_capability()}, native bf16 {bf16} "
          f"(oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"machine: {metrics['machine']}")
    rows, ok = [], True
    for task, result in metrics["tasks"].items():
        rows.append((task, result["precision"]["amp"], result["iterations"], result["timings"]["train_s"],
                     result["timings"]["eval_s"], result["wall_s"]))
        for key, goal in QUALITY[task]:
            value = result["final"].get(key, float("nan"))
            met = value >= goal
            ok &= met
            print(f"{task:13s} {key:10s} {value:.4f}  target >= {goal}: {'met' if met else 'MISSED'}")
    print(f"\n{'task':13s} {'precision':9s} {'iters':>5s} {'train s':>8s} {'eval s':>7s} {'wall s':>7s}")
    for task, amp, iters, train_s, eval_s, wall_s in rows:
        print(f"{task:13s} {amp:9s} {iters:5d} {train_s:8.1f} {eval_s:7.1f} {wall_s:7.1f}")
    minutes = metrics["total_s"] / 60
    limit = MINUTES[bf16]
    met = minutes <= limit
    ok &= met
    print(f"total {minutes:.2f} min (data, training, evaluation, pictures); target on a CPU "
          f"{'with' if bf16 else 'without'} native bf16: <= {limit:.0f} min: {'met' if met else 'MISSED'}")
    print(json.dumps({"minutes": round(minutes, 2), "cpu_capability": cpu_capability(), "native_bf16": bf16,
                      "precision": {t: r[1] for t, r in zip(metrics["tasks"], rows, strict=True)}}))
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
