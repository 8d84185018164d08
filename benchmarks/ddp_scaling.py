"""Data-parallel scaling on one machine: N processes x T threads (torchrun, DDP) against 1 process x N*T threads, at
the same global batch, on a shipped recipe.

Each configuration trains ``--iterations`` steps with ``resdense train`` (evaluation off) in its own run directory;
the time of an iteration comes from ``log.csv`` (``time_s``: data loading and steps, no checkpoint writes), as the
median over the iterations after the first ``--skip`` (oneDNN primitive creation, first allocations), so that a
few iterations slowed by another job on a shared machine do not count. The configurations alternate for
``--rounds`` rounds so that a change in the machine's load hits both; the medians are printed with their ratio
(> 1.0: the processes are faster) and the CPU capability.

Usage: ``python benchmarks/ddp_scaling.py [--recipe demo_shapes_unet_r18] [--batch 8] [--procs 2] [--threads 1]
[--iterations 40] [--skip 10] [--rounds 2] [--out runs/ddp_scaling]``
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch


def _seconds_per_iteration(run_dir: Path, skip: int) -> float:
    with open(run_dir / "log.csv", newline="") as f:
        times = [float(r["time_s"]) for r in csv.DictReader(f)]
    return statistics.median(b - a for a, b in zip(times[skip - 1:], times[skip:], strict=False))


def _train(args, procs: int, threads: int, run_dir: Path) -> float:
    sets = [f"train.batch_size={args.batch // procs}", f"train.iterations={args.iterations}", "train.log_every=1",
            "train.resume=false", "train.checkpoint_every=0", "eval.every_iters=0", "eval.every_epochs=0",
            "eval.max_images=1", f"train.output_dir={run_dir}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    cmd = [*launcher, "-m", "resdense", "train", args.recipe, *(a for s in sets for a in ("--set", s))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _seconds_per_iteration(run_dir, args.skip)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="demo_shapes_unet_r18")
    p.add_argument("--batch", type=int, default=8, help="global batch (split between the processes)")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per process of the multi-process run")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--skip", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="runs/ddp_scaling")
    args = p.parse_args()
    configs = {f"{args.procs} processes x {args.threads} thread(s)": (args.procs, args.threads),
               f"1 process x {args.procs * args.threads} threads": (1, args.procs * args.threads)}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(args.rounds):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            procs, threads = configs[name]
            times[name].append(_train(args, procs, threads, Path(args.out) / f"{procs}x{threads}"))
            print(f"round {r + 1}: {name}: {1 / times[name][-1]:.2f} it/s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{args.recipe}, global batch {args.batch}, median of iterations {args.skip + 1}-{args.iterations}, "
          f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} cores")
    for name, t in medians.items():
        print(f"  {name:<28} {1 / t:6.2f} it/s  ({args.batch / t:6.1f} img/s)")
    multi, single = medians.values()
    print(f"  ratio (processes / threads): {single / multi:.2f}x")


if __name__ == "__main__":
    main()
