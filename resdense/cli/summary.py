"""``resdense summary NAME [--input 3x224x224]``: per-layer output shapes and parameter counts."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="print a per-layer table of a backbone or classifier")
    p.add_argument("name", help="architecture, e.g. resnet50")
    p.add_argument("--input", default="3x224x224", help="input size CxHxW (default 3x224x224)")
    p.add_argument("--features", action="store_true", help="summarise the feature extractor instead of the classifier")
    p.add_argument("--depth", type=int, default=2, help="module nesting depth shown (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the library loads torch (seconds); `resdense --help` should not wait for it
    from resdense.backbones import create_backbone, format_summary
    from resdense.backbones.summary import parse_input_size
    from resdense.heads import create_classifier

    size = parse_input_size(args.input)
    model = (create_backbone(args.name, in_channels=size[0]) if args.features
             else create_classifier(args.name, in_channels=size[0]))
    print(format_summary(model, size, depth=args.depth))
    return 0
