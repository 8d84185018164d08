"""``resdense export CONFIG --checkpoint PATH --format onnx --out FILE``: the whole model as ONNX / TorchScript /
pt2, checked against the eager model (max abs difference per output printed)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX / TorchScript / torch.export and verify it")
    p.add_argument("config", help="recipe file or shipped recipe name")
    p.add_argument("--checkpoint", required=True, help="a last.pt / best.pt written by `resdense train`")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript", "pt2"),
                   help="onnx (default), torchscript, or pt2 (torch.export; segmentation / classification only)")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="example input size the graph is made from (default 256 320)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the comparison with the eager model")
    p.add_argument("--batch", type=int, default=1,
                   help="images per call the export must take (dense models: any; detectors: 1 for onnx, any for "
                        "torchscript, verified on this many)")
    p.add_argument("--verify-image", dest="verify_images", action="append", default=[], metavar="IMAGE",
                   help="detectors: also verify on this image (repeatable); one with objects checks real detections")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the library loads torch (seconds); `resdense --help` should not wait for it
    from resdense.engine import export_model

    result = export_model(args.checkpoint, args.out, format=args.format, input_size=args.size,
                          verify=args.verify, opset=args.opset, config=args.config, batch=args.batch,
                          verify_images=args.verify_images)
    for check in result.checks:
        print(check)
    print(result.path)
    return 0
