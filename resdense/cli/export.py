"""``resdense export CONFIG --checkpoint PATH --format onnx --out FILE``: the whole model as ONNX / TorchScript /
pt2, checked against the eager model (max abs difference per output printed). ``resdense export CKPT --format package
--out DIR``: the checkpoint as a package folder (safetensors weights, recipe, description, model card)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX / TorchScript / torch.export (verified) or as a "
                                      "package folder")
    p.add_argument("config", help="recipe file or shipped recipe name (with --checkpoint), or the checkpoint itself "
                                  "(its stored recipe)")
    p.add_argument("--checkpoint", default=None, help="a last.pt / best.pt written by `resdense train`")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript", "pt2", "package"),
                   help="onnx (default), torchscript, pt2 (torch.export; segmentation / classification only), or "
                        "package (a folder: model.safetensors, config.yaml, resdense.json, README.md)")
    p.add_argument("--out", required=True, help="the file to write (the folder, for a package)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="example input size the graph is made from (default 256 320; not for a package)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the comparison with the eager model (graph formats)")
    p.add_argument("--batch", type=int, default=1,
                   help="images per call the export must take (dense models: any; detectors: 1 for onnx, any for "
                        "torchscript, verified on this many)")
    p.add_argument("--verify-image", dest="verify_images", action="append", default=[], metavar="IMAGE",
                   help="detectors: also verify on this image (repeatable); one with objects checks real detections")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the library loads torch (seconds); `resdense --help` should not wait for it
    from resdense.errors import ConfigError
    from resdense.export import export_model, export_package

    config, checkpoint = (args.config, args.checkpoint) if args.checkpoint else (None, args.config)
    if args.format == "package":
        given = [flag for flag, value in (("--size", args.size), ("--opset", args.opset)) if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: options of the graph formats (onnx, torchscript, pt2), not of "
                              "--format package")
        for path in export_package(checkpoint, args.out, config=config):
            print(path)
        return 0
    result = export_model(checkpoint, args.out, format=args.format, input_size=args.size, verify=args.verify,
                          opset=17 if args.opset is None else args.opset, config=config, batch=args.batch,
                          verify_images=args.verify_images)
    for check in result.checks:
        print(check)
    print(result.path)
    return 0
