"""int8 inference on the CPU: our int8 ResNet-50 backbone vs our fp32 inference mode vs torchvision
fp32 eager vs the anchor, torchvision's quantized ResNet-50 (x86 engine, eager-mode PTQ); batch 8, 224 px, no
weights. Every number is measured in this run, rounds interleave the candidates, ratios are taken round by round.

Usage:
    python benchmarks/int8_speed.py [--rounds 5]                   # speed
    python benchmarks/int8_speed.py --quality runs/demo/best.pt    # fp32 vs int8 mIoU of a demo U-Net checkpoint
    python benchmarks/int8_speed.py --quality-train DIR            # train demo_shapes_unet_r18 into DIR first

AVX2-only CPUs: run with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` (fbgemm,
behind most int8 convolutions, reads only the last one).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
import torchvision

sys.path[:0] = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from _timing import print_table, ratio, throughput  # noqa: E402

from resdense.backbones import create_backbone, optimize_for_inference, quantize_backbone  # noqa: E402
from tests.backbones.reference import randomize_norm_stats  # noqa: E402


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"get_cpu_capability() {torch.backends.cpu.get_cpu_capability()}, "
            f"_is_mkldnn_bf16_supported() {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
            f"FBGEMM_ENABLE_INSTRUCTIONS={os.environ.get('FBGEMM_ENABLE_INSTRUCTIONS', '(unset)')}, "
            f"quantized engine x86")


def _torchvision_int8(calibration: torch.Tensor) -> torch.nn.Module:
    model = torchvision.models.quantization.resnet50(weights=None, quantize=False).eval()
    model.fuse_model(is_qat=False)
    torch.backends.quantized.engine = "x86"
    model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    torch.ao.quantization.prepare(model, inplace=True)
    with torch.no_grad():
        model(calibration)
    return torch.ao.quantization.convert(model, inplace=True)


def speed(args) -> None:
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    calibration = torch.randn(args.batch, 3, args.size, args.size)
    ours = randomize_norm_stats(create_backbone("resnet50"))
    t0 = time.perf_counter()
    int8 = quantize_backbone(ours, calibration, n=args.batch)
    print(f"quantize_backbone (prepare, calibrate on {args.batch} images, convert): {time.perf_counter() - t0:.0f} s")
    fp32 = optimize_for_inference(ours)
    with torch.no_grad():
        ref = fp32(x)
        got = int8(x)
        cos = min(torch.nn.functional.cosine_similarity(ref[k].flatten(1), got[k].flatten(1)).min().item()
                  for k in ref)
        models = {
            "resdense int8 (FX PTQ, x86)": int8,
            "resdense fp32 inference mode": fp32,
            "torchvision fp32 eager": torchvision.models.resnet50().eval(),
            "torchvision quantized resnet50 (anchor)": _torchvision_int8(calibration),
        }
        samples = throughput({k: (lambda m=m: m(x)) for k, m in models.items()}, args.batch, rounds=args.rounds,
                             calls=2)
    print(f"machine: {_machine()}")
    print_table(f"ResNet-50, batch {args.batch}, {args.size}x{args.size}", samples, "torchvision fp32 eager")
    for ref_name in ("resdense fp32 inference mode", "torchvision quantized resnet50 (anchor)"):
        mid, lo, hi = ratio(samples, "resdense int8 (FX PTQ, x86)", ref_name)
        print(f"  resdense int8 / {ref_name}: {mid:.2f}x [{lo:.2f}-{hi:.2f}]")
    mid, *_ = ratio(samples, "torchvision quantized resnet50 (anchor)", "torchvision fp32 eager")
    print(f"  anchor / torchvision fp32 eager: {mid:.2f}x")
    print(f"  min cosine similarity int8 vs fp32 per feature map (c2..c5, random weights): {cos:.4f}")
    print("  target: resdense int8 >= 1.8x resdense fp32 inference mode on an AVX2-only CPU")


def quality(checkpoint: str, n: int) -> None:
    from resdense.engine import load_model
    from resdense.engine.build import build_dataset
    from resdense.engine.evaluate import evaluate
    from resdense.export import quantize_checkpoint

    fp32, run = load_model(checkpoint, device="cpu")
    t0 = time.perf_counter()
    int8, _ = quantize_checkpoint(checkpoint, n=n)
    print(f"quantize_checkpoint(n={n}): {time.perf_counter() - t0:.0f} s")
    cfg = run.config
    val = build_dataset(cfg.data, cfg.task, "val")
    cpu = torch.device("cpu")
    scores = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        t0 = time.perf_counter()
        scores[name] = evaluate(model, run.task, val, cfg.eval, cpu)["mIoU"]
        print(f"  {name}: val mIoU {scores[name]:.4f}  ({len(val)} images, {time.perf_counter() - t0:.1f} s)")
    drop = scores["fp32"] - scores["int8"]
    print(f"machine: {_machine()}")
    print(f"mIoU drop fp32 -> int8: {drop:+.4f} (target <= 0.01: {'met' if drop <= 0.01 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quality", metavar="CHECKPOINT", help="fp32 vs int8 val mIoU of a demo U-Net checkpoint")
    parser.add_argument("--quality-train", metavar="DIR", help="train demo_shapes_unet_r18 into DIR, then --quality")
    parser.add_argument("--calibration-images", type=int, default=32)
    args = parser.parse_args()
    if args.quality_train:
        from resdense.engine import run_training

        run_training("demo_shapes_unet_r18", output_dir=args.quality_train)
        args.quality = os.path.join(args.quality_train, "best.pt")
    if args.quality:
        quality(args.quality, args.calibration_images)
    else:
        speed(args)


if __name__ == "__main__":
    main()
