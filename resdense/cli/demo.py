"""``resdense demo [--out DIR]``: synthetic shapes -> U-Net-ResNet18 and Faster R-CNN ResNet18-FPN -> report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and evaluate the two demo models on synthetic shapes (CPU minutes)")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--only", choices=("segmentation", "detection"), help="run one of the two tasks")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of both demo recipes, e.g. --set train.iterations=20")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the library loads torch (seconds); `resdense --help` should not wait for it
    from resdense.demo import run_demo

    result = run_demo(args.out, only=args.only, overrides=args.overrides)
    print(result["report"])
    return 0
