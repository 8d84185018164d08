"""ResNet-50 feature extraction speed: resdense vs torchvision (IntermediateLayerGetter) vs timm features_only.

Batch 8, 224x224, fp32, inference (torch.inference_mode), on whatever machine runs it; every number is measured in
this run and printed as a ratio to torchvision eager. Usage: ``python benchmarks/backbone_speed.py [--compile]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

sys.path.insert(0, os.path.dirname(__file__))
from _timing import print_table, throughput  # noqa: E402

from resdense.backbones import create_backbone, optimize_for_inference  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    args = parser.parse_args()

    import timm

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    layers = {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}
    tv = IntermediateLayerGetter(torchvision.models.resnet50(), layers).eval()
    ours = create_backbone("resnet50").eval()
    ours.load_state_dict(tv.state_dict())
    tm = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)).eval()
    fast = optimize_for_inference(ours)

    with torch.inference_mode():
        ref, got = tv(x), fast(x)
        err = max(((got[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)
        models = {"torchvision eager": tv, "timm features_only": tm, "resdense eager": ours,
                  "resdense inference (fold BN + channels_last)": fast}
        if args.compile:
            compiled = optimize_for_inference(ours, compile=True)
            compiled(x)
            out_c = compiled(x)
            err_c = max(((out_c[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)
            models["resdense inference + torch.compile"] = compiled
        results = throughput({k: (lambda m=m: m(x)) for k, m in models.items()}, args.batch, rounds=args.rounds)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print_table(f"ResNet-50 features, batch {args.batch}, {args.size}x{args.size}, fp32", results, "torchvision eager")
    print(f"\n  resdense / timm features_only: {results['resdense eager'] / results['timm features_only']:.2f}x")
    print(f"  inference mode max |diff| / max |eager| per map: {err:.2e}")
    if args.compile:
        print(f"  compiled max |diff| / max |eager| per map: {err_c:.2e}")


if __name__ == "__main__":
    main()
