"""``resdense predict CONFIG --checkpoint PATH IMAGES... --out DIR``: PNG overlays of predictions."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="draw a checkpoint's predictions on images (PNG overlays)")
    p.add_argument("config", help="recipe file or shipped recipe name")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", required=True, help="a last.pt / best.pt written by `resdense train`")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="detections below this score are not drawn (default: eval.score_threshold)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the library loads torch (seconds); `resdense --help` should not wait for it
    from resdense.engine import run_prediction

    paths = run_prediction(args.config, args.checkpoint, args.images, args.out,
                           score_threshold=args.score_threshold, overrides=args.overrides)
    for p in paths:
        print(p)
    return 0
