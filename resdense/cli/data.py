"""``resdense data check PATH``: validate a COCO file, a mask folder, an instance-mask folder or a VOC folder,
listing every problem. ``resdense data split PATH --val 0.2 --out DIR``: write stratified train / val (/ test) split
files. ``resdense data convert PATH --to coco --out FILE.json``: an instance-mask or VOC folder as a COCO file."""

from __future__ import annotations

import argparse

LAYOUT_HELP = ("Instance-mask folders (PNGs of instance ids, 0 = background) are told from semantic mask folders "
               "by name: images/, PNGImages/ or JPEGImages/ beside instances/, instance_masks/ or PedMasks/ "
               "(Penn-Fudan). --instances reads images/ + masks/ as instance ids too.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = data_sub.add_parser(
        "check", help="validate a COCO .json, a mask folder (images/ + masks/), an instance-mask folder or a VOC "
                      "folder",
        description="Prints one line per problem (file, field, value); exit status 0 when clean, 2 otherwise. "
                    + LAYOUT_HELP,
    )
    c.add_argument("path", nargs="?", help="COCO .json file, or a folder holding COCO/VOC/mask data (or such "
                   "folders); omit it with --images and --masks")
    c.add_argument("--images", default=None, help="image folder of a COCO file (default: guessed), or of --masks")
    c.add_argument("--masks", default=None, help="a mask folder named otherwise than masks/ (with --images)")
    c.add_argument("--num-classes", type=int, default=None, help="check mask values against 0..K-1")
    c.add_argument("--ignore-index", type=int, default=255, help="mask value allowed besides the classes")
    c.add_argument("--decode", action="store_true", help="decode every image fully (slower, finds corrupt data)")
    c.add_argument("--strict", action="store_true", help="also fail on warnings (boxes clipped or dropped, ...)")
    c.add_argument("--instances", action="store_true", help="read images/ + masks/ as instance ids")
    c.set_defaults(func=run_check)
    s = data_sub.add_parser(
        "split", help="write stratified train.txt / val.txt (/ test.txt) for a mask folder, COCO .json or VOC folder",
        description="Deterministic (same seed, same files) and stratified by the mask values or box categories of "
                    "each sample; the files are what every dataset's split= (data.train.split) reads. " + LAYOUT_HELP,
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
    s.add_argument("--kind", choices=("masks", "instances", "coco", "voc"), default=None,
                   help="which dataset, when PATH holds several")
    s.add_argument("--instances", action="store_true", help="read images/ + masks/ as instance ids")
    s.add_argument("--out", required=True, help="folder for the split files (existing ones are overwritten)")
    s.set_defaults(func=run_split)
    v = data_sub.add_parser(
        "convert", help="write an instance-mask folder or a VOC folder as a COCO instances .json",
        description="Masks become compressed-RLE segmentations; file_name fields are relative to the image folder, "
                    "so CocoDetection(IMAGES, FILE, masks=True) serves what InstanceMaskDataset serves. "
                    "Instance classes: one class (--classes NAME, default person), a folder of class-id masks "
                    "(--class-masks: each instance takes the class of most of its pixels), or the Cityscapes ids "
                    "(--id-rule cityscapes: id = class_id * 1000 + k). " + LAYOUT_HELP,
    )
    v.add_argument("path", help="instance-mask folder root (e.g. PennFudanPed) or VOC folder")
    v.add_argument("--to", choices=("coco",), required=True, help="output format")
    v.add_argument("--out", required=True, help="the .json file to write")
    v.add_argument("--kind", choices=("instances", "voc"), default=None, help="which dataset, when PATH holds several")
    v.add_argument("--instances", action="store_true", help="read images/ + masks/ as instance ids")
    v.add_argument("--classes", default=None,
                   help="comma-separated class names (class ids 1..K), or id:name pairs (24:person,26:car)")
    v.add_argument("--class-masks", default=None, help="folder of class-id masks beside the instance masks")
    v.add_argument("--id-rule", choices=("plain", "cityscapes"), default="plain",
                   help="plain: every id > 0 is an instance; cityscapes: id = class_id * 1000 + k")
    v.add_argument("--mask-suffix", default=None, help="what mask names add to image names (default: detected)")
    v.set_defaults(func=run_convert)


def run_check(args: argparse.Namespace) -> int:
    from resdense.data import check_path

    _need_path(args)
    report = check_path(args.path, images_dir=args.images, masks_dir=args.masks, num_classes=args.num_classes,
                        ignore_index=args.ignore_index, decode=args.decode, instances=args.instances)
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
                       instances=args.instances, images=args.images, masks=args.masks)
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
def _classes(text: str | None):
    """``a,b`` -> ``["a", "b"]``; ``24:person,26:car`` -> ``{24: "person", 26: "car"}``."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items and all(":" in t for t in items):
        pairs = [t.split(":", 1) for t in items]
        return {int(k) if k.strip().isdigit() else k: v.strip() for k, v in pairs}
    return items


def run_convert(args: argparse.Namespace) -> int:
    from resdense.data.convert import convert_to_coco

    done = convert_to_coco(args.path, args.out, kind=args.kind, instances=args.instances,
                           classes=_classes(args.classes), class_masks_dir=args.class_masks, id_rule=args.id_rule,
                           mask_suffix=args.mask_suffix)
    print(f"wrote {done.out} from {done.layout.kind} {done.layout.path}: {done.num_images} images, "
          f"{done.num_annotations} annotations, classes {', '.join(done.class_names)}")
    print(f"load it with CocoDetection({str(done.layout.images)!r}, {str(done.out)!r}, masks=True)")
    return 0
