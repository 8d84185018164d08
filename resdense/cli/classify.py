"""``resdense classify IMAGE (--checkpoint PATH | --arch resnet50 --weights imagenet)``: top-5 classes."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="print the top-5 classes of an image")
    p.add_argument("image", help="image file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a classifier checkpoint written by `resdense train`")
    src.add_argument("--weights", help="ImageNet weights for --arch: a tag (imagenet, IMAGENET1K_V2) or a file")
    p.add_argument("--arch", default="resnet50", help="architecture for --weights (default resnet50)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the library loads torch (seconds); `resdense --help` should not wait for it
    from resdense.api import classify

    for rank, (name, prob) in enumerate(classify(args.image, checkpoint=args.checkpoint, arch=args.arch,
                                                 weights=args.weights, top=args.top), 1):
        print(f"{rank}. {name:<30} {100 * prob:6.2f}%")
    return 0
