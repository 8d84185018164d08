"""ResNet-50 feature extraction speed: resdense vs torchvision (IntermediateLayerGetter) vs timm features_only.

Batch 8, 224x224, fp32, no autograd, on whatever machine runs it; every number is measured in this run, rounds
interleave the candidates, and ratios are taken round by round against torchvision eager.
Usage: ``python benchmarks/backbone_speed.py [--rounds 15] [--compile] [--bf16] [--device cuda]``; ``--bf16`` adds the
bfloat16 inference mode, which is outside the float32 tolerance (about 1e-2 relative, like autocast).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

sys.path[:0] = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from _timing import print_table, ratio, throughput  # noqa: E402

from resdense.backbones import create_backbone, optimize_for_inference  # noqa: E402
from tests.backbones.reference import randomize_norm_stats  # noqa: E402


def _rel_error(got: dict | list, ref: dict) -> float:
    if isinstance(got, list):  # timm features_only returns the maps as a list, in stride order
        got = dict(zip(ref, got, strict=True))
    return max(((got[k].float() - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (about a minute to compile)")
    parser.add_argument("--bf16", action="store_true", help="also time the bfloat16 inference mode (not fp32)")
    args = parser.parse_args()

    import timm

    torch.manual_seed(0)
    dev = torch.device(args.device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    layers = {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}
    tv_model = randomize_norm_stats(torchvision.models.resnet50())
    tv = IntermediateLayerGetter(tv_model, layers).eval().to(dev)
    ours = create_backbone("resnet50").eval()
    ours.load_state_dict(tv.state_dict())
    ours.to(dev)
    tm = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)).eval().to(dev)
    models = {
        "torchvision eager": tv,
        "timm features_only": tm,
        "resdense eager": ours,
        "resdense inference, fold BN + channels_last only": optimize_for_inference(ours, fuse=False),
        "resdense inference (fold + fuse + channels_last)": optimize_for_inference(ours),
    }
    inference = "resdense inference (fold + fuse + channels_last)"
    errors = {}
    with torch.no_grad():
        ref = tv(x)
        if args.compile:
            compiled = optimize_for_inference(ours, compile=True)
            t0 = time.perf_counter()
            compiled(x)
            print(f"torch.compile (freezing) first call: {time.perf_counter() - t0:.0f} s")
            models["resdense inference + torch.compile"] = compiled
        if args.bf16:
            models["resdense inference, bfloat16 weights + activations"] = optimize_for_inference(
                ours, dtype=torch.bfloat16)
        for name, model in models.items():
            errors[name] = _rel_error(model(x), ref)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        samples = throughput({k: (lambda m=m: (m(x), sync())) for k, m in models.items()}, args.batch,
                             rounds=args.rounds)

    cpu = platform.processor() or platform.machine()
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu}, {os.cpu_count()} CPUs"
    print(f"machine: {where}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print_table(f"ResNet-50 features, batch {args.batch}, {args.size}x{args.size}, fp32", samples, "torchvision eager")
    print()
    for name in models:
        if name.startswith("resdense"):
            mid, lo, hi = ratio(samples, name, "timm features_only")
            print(f"  {name} / timm features_only: {mid:.2f}x [{lo:.2f}-{hi:.2f}]   "
                  f"max |diff| / max |torchvision| per map: {errors[name]:.1e}")
    assert errors[inference] < 1e-4, errors


if __name__ == "__main__":
    main()
