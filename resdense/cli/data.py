"""``resdense data check PATH``: validate a COCO file, a mask folder or a VOC folder, listing every problem."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = data_sub.add_parser(
        "check", help="validate a COCO .json, a mask folder (images/ + masks/) or a VOC folder",
        description="Prints one line per problem (file, field, value); exit status 0 when clean, 2 otherwise.",
    )
    c.add_argument("path", help="COCO .json file, or a folder holding COCO/VOC/mask data (or such folders)")
    c.add_argument("--images", default=None, help="image folder of a COCO file (default: guessed)")
    c.add_argument("--num-classes", type=int, default=None, help="check mask values against 0..K-1")
    c.add_argument("--ignore-index", type=int, default=255, help="mask value allowed besides the classes")
    c.add_argument("--decode", action="store_true", help="decode every image fully (slower, finds corrupt data)")
    c.add_argument("--strict", action="store_true", help="also fail on warnings (boxes clipped or dropped, ...)")
    c.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from resdense.data import check_path

    report = check_path(args.path, images_dir=args.images, num_classes=args.num_classes,
                        ignore_index=args.ignore_index, decode=args.decode)
    for line in report.checked:
        print(f"checked {line}")
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.problems:
        print(f"problem: {line}")
    failed = bool(report.problems) or (args.strict and bool(report.warnings))
    print(f"{len(report.problems)} problem(s), {len(report.warnings)} warning(s): {'FAILED' if failed else 'OK'}")
    return 2 if failed else 0
