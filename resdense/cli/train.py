"""``resdense train CONFIG [--set key=value ...] [--out DIR] [--resume PATH]``: train a recipe (also as
``torchrun --nproc_per_node=N -m resdense train ...``: distributed data parallel, rank 0 prints)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML recipe",
                       description="Train a recipe. A run directory that already holds last.pt is resumed.")
    p.add_argument("config", help="recipe file, or the name of a shipped recipe (see `resdense list`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.lr=0.01 (repeatable; values are YAML)")
    p.add_argument("--out", help="run directory (replaces train.output_dir)")
    p.add_argument("--resume", metavar="PATH", help="resume from this checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the library loads torch (seconds); `resdense --help` should not wait for it
    from resdense.engine import run_training
    from resdense.engine.distributed import main_process

    result = run_training(args.config, args.overrides, output_dir=args.out, resume=args.resume)
    if main_process():
        print(json.dumps({"metric": result["metric"], "best": result["best"], "final": result["final"]}, indent=2))
    return 0
