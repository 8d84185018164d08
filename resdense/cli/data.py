"""``resdense data check PATH``: validate a COCO file, a mask folder or a VOC folder, listing every problem.
``resdense data split PATH --val 0.2 --out DIR``: write stratified train / val (/ test) split files."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = data_sub.add_parser(
        "check", help="validate a COCO .json, a mask folder (images/ + masks/) or a VOC folder",
        description="Prints one line per problem (file, field, value); exit status 0 when clean, 2 otherwise.",
    )
    c.add_argument("path", nargs="?", help="COCO .json file, or a folder holding COCO/VOC/mask data (or such "
                   "folders); omit it with --images and --masks")
    c.add_argument("--images", default=None, help="image folder of a COCO file (default: guessed), or of --masks")
    c.add_argument("--masks", default=None, help="a mask folder named otherwise than masks/ (with --images)")
    c.add_argument("--num-classes", type=int, default=None, help="check mask values against 0..K-1")
    c.add_argument("--ignore-index", type=int, default=255, help="mask value allowed besides the classes")
    c.add_argument("--decode", action="store_true", help="decode every image fully (slower, finds corrupt data)")
    c.add_argument("--strict", action="store_true", help="also fail on warnings (boxes clipped or dropped, ...)")
    c.set_defaults(func=run_check)
    s = data_sub.add_parser(
        "split", help="write stratified train.txt / val.txt (/ test.txt) for a mask folder, COCO .json or VOC folder",
        description="Deterministic (same seed, same files) and stratified by the mask values or box categories of "
                    "each sample; the files are what every dataset's split= (data.train.split) reads.",
    )
    s.add_argument("path", nargs="?", help="mask folder root (images/ + masks/), COCO .json file, or VOC folder; "
                   "omit it with --images and --masks")
    s.add_argument("--images", default=None, help="image folder of a mask folder named otherwise (with --masks)")
    s.add_argument("--masks", default=None, help="its mask folder (with --images)")
    s.add_argument("--val", type=float, default=0.2, help="fraction for validation (default 0.2)")
    s.add_argument("--test", type=float, default=0.0, help="fraction for a test split (default 0: none)")
    s.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    s.add_argument("--block", type=int, default=1,
                   help="keep runs of N consecutive samples together (video frames; default 1)")
    s.add_argument("--kind", choices=("masks", "coco", "voc"), default=None,
                   help="which dataset, when PATH holds several")
    s.add_argument("--out", required=True, help="folder for the split files (existing ones are overwritten)")
    s.set_defaults(func=run_split)


def run_check(args: argparse.Namespace) -> int:
    from resdense.data import check_path

    _need_path(args)
    report = check_path(args.path, images_dir=args.images, masks_dir=args.masks, num_classes=args.num_classes,
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


def run_split(args: argparse.Namespace) -> int:
    from resdense.data import make_split

    _need_path(args)
    split = make_split(args.path, args.val, args.test, args.seed, block=args.block, kind=args.kind,
                       images=args.images, masks=args.masks)
    total = sum(len(v) for v in split.subsets.values())
    sizes = ", ".join(f"{k} {len(v)}" for k, v in split.subsets.items())
    print(f"split {split.layout.kind} {split.layout.path} ({total} samples): {sizes}")
    print("wrote " + ", ".join(str(p) for p in split.write(args.out)))
    width = max([len(k) for k in split.label_counts] + [5])
    print(f"{'label':<{width}}  " + "  ".join(f"{k:>6}" for k in split.subsets))
    for label, counts in split.label_counts.items():
        print(f"{label:<{width}}  " + "  ".join(f"{counts[k]:>6}" for k in split.subsets))
    return 0


def _need_path(args: argparse.Namespace) -> None:
    if args.path is None and args.masks is None:
        from resdense.errors import ConfigError

        raise ConfigError("give PATH, or --images DIR --masks DIR")
