"""``resdense predict CONFIG --checkpoint PATH IMAGES... --out DIR [--json FILE]`` or ``resdense predict PACKAGE_DIR
IMAGES... --out DIR``: PNG overlays of predictions (and COCO results of detections)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="draw a checkpoint's predictions on images (PNG overlays)")
    p.add_argument("config", help="recipe file or shipped recipe name, or a package folder (`resdense export CKPT "
                                  "--format package`), which needs no --checkpoint")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", default=None,
                   help="a last.pt / best.pt written by `resdense train`, or a package folder (default: CONFIG, "
                        "when it is a package)")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="detections below this score are not drawn (default: eval.score_threshold)")
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="sliding windows of PX x PX pixels for large images (segmentation: blended logits; detection: "
                        "windows plus the whole image, merged class by class; Mask R-CNN masks kept as RLE)")
    p.add_argument("--overlap", type=float, default=0.25, help="fraction of a window shared with its neighbour")
    p.add_argument("--blend", choices=("gaussian", "uniform"), default="gaussian",
                   help="weights of overlapping segmentation windows")
    p.add_argument("--tile-batch", type=int, default=None,
                   help="windows per forward pass (bounds the memory; default 1 on a CPU, 4 on a GPU)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: horizontal flip x scales 0.75, 1, 1.25, mapped back and combined")
    p.add_argument("--tta-scales", default=None, metavar="S,S,...", help="TTA scales (implies --tta)")
    p.add_argument("--tta-merge", choices=("nms", "wbf"), default="nms",
                   help="how detection TTA merges boxes: class-wise NMS or weighted box fusion")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="detection: also write the detections as COCO results (bbox, score, category_id, "
                        "segmentation RLE for Mask R-CNN), readable by pycocotools' COCO.loadRes")
    p.add_argument("--coco", default=None, metavar="GT.json",
                   help="with --json: take image_id by file name and category_id by class name from this COCO file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the library loads torch (seconds); `resdense --help` should not wait for it
    from resdense.errors import ConfigError
    from resdense.inference import TTA, run_prediction

    tta = None
    if args.tta or args.tta_scales:
        try:
            scales = tuple(float(s) for s in args.tta_scales.split(",")) if args.tta_scales else TTA.scales
        except ValueError:
            raise ConfigError(f"--tta-scales {args.tta_scales!r}: expected comma-separated numbers") from None
        tta = TTA(scales=scales, merge=args.tta_merge)
    paths = run_prediction(args.config, args.checkpoint, args.images, args.out,
                           score_threshold=args.score_threshold, overrides=args.overrides, tile=args.tile,
                           overlap=args.overlap, blend=args.blend, tile_batch=args.tile_batch, tta=tta,
                           json=args.json, coco=args.coco)
    for p in paths:
        print(p)
    return 0
