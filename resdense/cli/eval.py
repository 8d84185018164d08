"""``resdense eval CONFIG --checkpoint PATH [--out DIR]`` or ``resdense eval PACKAGE_DIR``: evaluate a checkpoint (or
a package, whose config.yaml names the data) on the recipe's validation split
(also under ``torchrun``: each process scores its shard, rank 0 prints the metrics of the whole split); ``--out``
writes a report (metrics.json, per-class tables, confusion matrix / precision-recall curves, report.md)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a recipe's validation data")
    p.add_argument("config", help="recipe file or shipped recipe name, or a package folder (`resdense export CKPT "
                                  "--format package`: its config.yaml names the data; --set moves it)")
    p.add_argument("--checkpoint", default=None,
                   help="a last.pt / best.pt written by `resdense train`, or a package folder (default: CONFIG, "
                        "when it is a package)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value (repeatable)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write a report here: metrics.json, per-class tables (Markdown, CSV), confusion matrix or "
                        "precision-recall curves (PNG), report.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the library loads torch (seconds); `resdense --help` should not wait for it
    from resdense.engine import run_evaluation
    from resdense.engine.distributed import main_process
    from resdense.engine.report import scalar_metrics

    metrics = run_evaluation(args.config, args.checkpoint, args.overrides, out=args.out)
    if not main_process():
        return 0
    scalars = scalar_metrics(metrics)
    if args.json:
        print(json.dumps(scalars, indent=2))
    elif "table" in metrics:
        print(metrics["table"])
    else:
        width = max(len(k) for k in scalars) if scalars else 0
        for k, v in scalars.items():
            print(f"{k:<{width}}  {v:.4f}")
    if args.out and not args.json:
        print(f"report: {args.out}/report.md ({len(metrics['report_files'])} files)")
    return 0
