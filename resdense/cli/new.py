"""``resdense new segmentation|detection DATA --out my.yaml``: write a recipe from a data folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "new", help="write a recipe from your data folder (classes, ignore value, sizes, split found for you)",
        description="Looks at DATA as `resdense data check` does (a mask folder, a COCO .json or a VOC folder), "
                    "finds the classes, an ignore value and the image sizes, writes split files beside the recipe "
                    "when the data has no train/val folders, and writes a commented recipe that trains as it is: "
                    "`resdense train OUT`.")
    p.add_argument("task", choices=("segmentation", "detection"))
    p.add_argument("data", nargs="?", help="the data folder or COCO .json (omit it with --images and --masks)")
    p.add_argument("--images", default=None, help="image folder of a mask folder named otherwise (with --masks)")
    p.add_argument("--masks", default=None, help="its mask folder (with --images)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: from scratch, 10 min budget (default); gpu: ImageNet weights, longer schedule")
    p.add_argument("--seed", type=int, default=0, help="seed of the split written when the data has none")
    p.add_argument("--out", required=True, help="the recipe file to write (e.g. my.yaml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resdense.engine.scaffold import new_recipe  # deferred: loads torch

    summary = new_recipe(args.task, args.data, args.out, images=args.images, masks=args.masks, device=args.device,
                         seed=args.seed)
    print(f"wrote {args.out}: {args.task}, {len(summary.classes)} classes ({', '.join(summary.classes)})")
    for note in [summary.split_note, *summary.notes]:
        print(f"  {note}")
    print(f"train it: resdense train {args.out}")
    return 0
