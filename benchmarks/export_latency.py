"""CPU latency of exported models: onnxruntime vs eager PyTorch vs resdense's inference mode, measured in one run.

- U-Net R18 (1x3x512x512, default decoder, 2 classes): eager; eager with its backbone in inference mode
  (:func:`resdense.backbones.optimize_for_inference`: BN folded, fused oneDNN conv/ReLU/add, channels-last; only the
  backbone has an inference mode, the smp decoder runs eager); the ONNX export in onnxruntime.
- Faster R-CNN R18-FPN (one 3x512x512 image, ``min_size=max_size=512`` so nothing is resized, torchvision's default
  head sizes): eager vs the ONNX export in onnxruntime (batch 1, torchvision's ONNX path).

Random-init weights with randomised BN statistics, fp32, no autograd. Rounds interleave the candidates and the
ratios against eager are taken round by round. onnxruntime gets as many intra-op threads as torch.
Usage: ``python benchmarks/export_latency.py [--rounds 5] [--size 512]``
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile

import onnxruntime as ort
import torch

sys.path[:0] = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from _timing import ratio, throughput  # noqa: E402

from resdense._torch_private import onednn_bf16_supported  # noqa: E402
from resdense.backbones import optimize_for_inference  # noqa: E402
from resdense.export import ExportError, export_model  # noqa: E402
from resdense.hardware import cpu_capability, native_bf16  # noqa: E402
from resdense.heads import UNet, build_detector  # noqa: E402
from tests.backbones.reference import randomize_norm_stats  # noqa: E402


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _export(title: str, model: torch.nn.Module, path: str, size: int) -> None:
    try:  # a failed verification is reported, and the written file is still timed
        result = export_model(model, path, input_size=(size, size))
        print(f"{title} ONNX verification: " + "; ".join(map(str, result.checks)))
    except ExportError as err:
        print(f"{title} ONNX verification FAILED: {err}")


def _report(title: str, samples: dict[str, list[float]]) -> None:
    print(f"\n{title}  (median of {len(samples['eager'])} interleaved rounds; speed-up vs eager per round: "
          "median [min-max])")
    for name, values in samples.items():
        mid, lo, hi = ratio(samples, name, "eager")
        print(f"  {name:<32} {1000 / statistics.median(values):8.1f} ms   {mid:5.2f}x [{lo:.2f}-{hi:.2f}]")


@torch.no_grad()
def unet_rows(size: int, rounds: int, tmp: str) -> None:
    torch.manual_seed(0)
    model = randomize_norm_stats(UNet("resnet18", num_classes=2)).eval()
    fast = copy.deepcopy(model)
    fast.backbone = optimize_for_inference(model.backbone)
    x = torch.randn(1, 3, size, size)
    _export("U-Net", model, f"{tmp}/unet.onnx", size)
    session = _session(f"{tmp}/unet.onnx")
    feed = {"image": x.numpy()}
    print(f"inference mode max abs diff vs eager: {float((fast(x) - model(x)).abs().max()):.3g}")
    fns = {"eager": lambda: model(x), "eager + inference-mode backbone": lambda: fast(x),
           "onnxruntime": lambda: session.run(None, feed)}
    _report(f"U-Net R18, 1x3x{size}x{size}, fp32", throughput(fns, 1, rounds=rounds, calls=2, warmup=1))


@torch.no_grad()
def detector_rows(size: int, rounds: int, tmp: str) -> None:
    torch.manual_seed(0)
    model = build_detector("faster_rcnn", backbone="resnet18", num_classes=91, min_size=size, max_size=size).eval()
    randomize_norm_stats(model.backbone.body)
    image = torch.rand(3, size, size)
    _export("\nFaster R-CNN", model, f"{tmp}/frcnn.onnx", size)
    session = _session(f"{tmp}/frcnn.onnx")
    feed = {"image": image.numpy()}
    fns = {"eager": lambda: model([image]), "onnxruntime": lambda: session.run(None, feed)}
    _report(f"Faster R-CNN R18-FPN, 1 image 3x{size}x{size}, fp32", throughput(fns, 1, rounds=rounds, calls=2,
                                                                              warmup=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {cpu_capability()} (torch.backends.cpu.get_cpu_capability()), "
          f"torch.ops.mkldnn._is_mkldnn_bf16_supported() {onednn_bf16_supported()}, native bf16 {native_bf16()}; "
          "precision fp32")
    with tempfile.TemporaryDirectory() as tmp:
        unet_rows(args.size, args.rounds, tmp)
        detector_rows(args.size, args.rounds, tmp)


if __name__ == "__main__":
    main()
