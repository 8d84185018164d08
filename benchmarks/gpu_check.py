"""What resdense does on a CUDA GPU: shipped recipes trained a few steps by the engine, evaluated, exported to ONNX,
and our U-Net's training step against smp's, all measured in one run.

1. Training: ``configs/demo_shapes_unet_r18.yaml``, ``configs/demo_shapes_frcnn_r18_fpn.yaml`` and
   ``configs/maskrcnn_r50_fpn_coco.yaml`` (its data pointed at the shapes set, with masks) run through
   :func:`resdense.engine.run_training` on the synthetic shapes set (:func:`resdense.data.make_shapes`, written to a
   temporary folder), with ``--set`` overrides only: ``train.device``, ``train.amp=auto``,
   ``train.channels_last=auto``, the step count, batch and image size, no backbone weights (nothing is downloaded),
   no periodic evaluation; optimizer, learning rate and warm-up stay the recipes' (Mask R-CNN's 1000-step warm-up
   keeps its lr near 1e-5 here: its 0.01 is meant for ImageNet backbone weights, and from scratch it diverges). Per recipe: the precision ``amp: auto`` chose and the memory format ``channels_last: auto``
   chose (as :mod:`resdense.hardware` resolved them, with its reasons), Trainer steps/s over the timed steps (data
   loading included, the warm-up steps excluded), peak CUDA memory, whether every loss and the GradScaler's scale
   stayed finite, and how many steps the scaler skipped.
2. Evaluation: :func:`resdense.engine.run_evaluation` of each run's ``last.pt`` on the shapes validation split; the
   headline metrics (a few steps from scratch: the values only show that the path runs, not quality).
3. ONNX: :func:`resdense.export.export_model` of the U-Net and the Faster R-CNN (its own verification: onnxruntime's
   CPU provider against eager fp32 on the CPU), then the exported file in onnxruntime with the
   ``CUDAExecutionProvider`` when onnxruntime-gpu provides it (else the CPU provider, said so) on a validation image,
   max abs difference against eager PyTorch fp32 on the CPU (detections matched one to one first).
4. Speed: images/s of a training step of ``resdense.heads.UNet("resnet18")`` against
   ``smp.Unet("resnet18", encoder_weights=None)`` with the same weights, batch, input size, precision and memory
   format (the ones ``auto`` picks for the device), cross-entropy, AdamW; rounds interleave the two and the ratio is
   taken round by round (>= 1.0: resdense at least as fast).

Without a CUDA device the script prints one line and exits 0 (``make bench`` runs it with no arguments);
``--device cpu`` runs the same checks on the CPU at small sizes, as a smoke test. Exit status 1 when a check fails.

Usage: ``python benchmarks/gpu_check.py [--device cuda|cpu] [--iters 30] [--warmup 20] [--size 256] [--batch 16]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [os.path.dirname(__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from _timing import print_table, ratio, throughput  # noqa: E402

from resdense.engine import HookBase  # noqa: E402

# label, shipped recipe (the overrides of each: _overrides)
RECIPES = (
    ("U-Net R18", "demo_shapes_unet_r18"),
    ("Faster R-CNN R18-FPN", "demo_shapes_frcnn_r18_fpn"),
    ("Mask R-CNN R50-FPN", "maskrcnn_r50_fpn_coco"),
)
EXPORTED = ("demo_shapes_unet_r18", "demo_shapes_frcnn_r18_fpn")
HEADLINE = {"segmentation": ("mIoU", "mDice", "pixel_accuracy"),
            "detection": ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50")}
# per device: size, batch, timed steps, warm-up steps, validation images, loader workers
DEFAULTS = {"cuda": (256, 16, 30, 20, 32, 4), "cpu": (64, 2, 2, 1, 4, 0)}
INIT_SCALE = 2.0 ** 16  # torch.amp.GradScaler's default init_scale (the Trainer keeps it)


def _header(device: torch.device) -> str:
    import onnxruntime as ort
    import segmentation_models_pytorch as smp

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = (f"GPU {torch.cuda.get_device_name(device)} ({props.total_memory / 2**30:.0f} GiB), "
               f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        gpu = f"device cpu ({'CUDA available but not used' if torch.cuda.is_available() else 'no CUDA device'})"
    return (f"torch {torch.__version__}, {gpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
            f"get_cpu_capability() {torch.backends.cpu.get_cpu_capability()}, "
            f"_is_mkldnn_bf16_supported() {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
            f"onnxruntime {ort.__version__} (providers {', '.join(ort.get_available_providers())}), "
            f"smp {smp.__version__}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepClock(HookBase):
    """A training hook, after every step: losses and GradScaler scale of every step, the time of the timed steps
    (after ``warmup`` steps, to the last), and the peak CUDA memory at the last step (before the final evaluation)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.losses: list[float] = []
        self.scales: list[float] = []
        self.t0 = self.t1 = None
        self.peak: float | None = None

    def after_step(self) -> None:
        trainer, iteration = self.trainer, self.trainer.iteration
        self.losses.append(trainer.losses["loss"])
        self.scales.append(float(trainer.scaler.get_scale()) if trainer.scaler.is_enabled() else float("nan"))
        if iteration == self.warmup:
            _sync(self.device)
            self.t0 = time.perf_counter()
        if iteration == trainer.total_iters:
            _sync(self.device)
            self.t1 = time.perf_counter()
            if self.device.type == "cuda":
                self.peak = torch.cuda.max_memory_allocated(self.device) / 2**30

    def steps_per_s(self) -> float:
        timed = len(self.losses) - self.warmup
        return timed / (self.t1 - self.t0) if self.t0 is not None and self.t1 is not None and timed else float("nan")

    def skipped(self) -> int:
        """Steps the GradScaler skipped (inf/NaN gradients): each one halves the scale."""
        scales = [INIT_SCALE, *self.scales]
        return sum(b < a for a, b in zip(scales, scales[1:], strict=False))


def _overrides(recipe: str, args, shapes: dict, out: Path) -> list[str]:
    sets = [f"data.shapes={json.dumps(shapes)}", f"train.output_dir={out / recipe}", "train.resume=false",
            f"train.device={args.device}", "train.amp=auto", "train.channels_last=auto",
            f"train.iterations={args.warmup + args.iters}", f"train.batch_size={args.batch}",
            f"train.num_workers={args.workers}", "train.checkpoint_every=0", "train.progress=false",
            "eval.every_iters=0", "eval.every_epochs=0"]
    if recipe != "demo_shapes_unet_r18":  # detectors: no backbone weights, the images' own size
        sets += ["model.weights_backbone=null", f"model.min_size={args.size}", f"model.max_size={args.size}"]
    if recipe == "maskrcnn_r50_fpn_coco":  # COCO recipe -> the shapes set with instance masks, 3 classes
        sets += ["data.dataset=shapes", 'data.train={"masks": true, "empty": "drop"}', 'data.val={"masks": true}',
                 "model.num_classes=4", "train.epochs=null"]
    return sets


def train_all(args, device: torch.device, shapes: dict, out: Path, failures: list[str]) -> dict:
    from resdense.engine import NonFiniteLossError, load_config, run_training

    runs = {}
    print(f"\n1. training: {args.warmup} warm-up + {args.iters} timed steps per recipe, batch {args.batch}, "
          f"{args.size}x{args.size} shapes images (n_train {shapes['n_train']}, n_val {shapes['n_val']}), "
          f"train.device={args.device} amp=auto channels_last=auto, {args.workers} loader workers")
    for label, recipe in RECIPES:
        config = load_config(recipe, _overrides(recipe, args, shapes, out))
        clock = _StepClock(args.warmup, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        tic = time.perf_counter()
        try:
            result = run_training(config, hooks=[clock])
        except (NonFiniteLossError, RuntimeError) as err:
            failures.append(f"{label} training: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
            print(f"  {label}: training FAILED: {failures[-1]}")
            continue
        runs[recipe] = {"label": label, "config": config, "result": result, "clock": clock,
                        "wall_s": time.perf_counter() - tic}
    _training_table(runs, args, device, failures)
    return runs


def _training_table(runs: dict, args, device: torch.device, failures: list[str]) -> None:
    print(f"| {'model':<20} | precision | GradScaler scale (skipped) | memory format | steps/s | img/s  | "
          "peak CUDA mem | loss first -> last | finite |")
    print(f"|{'-' * 22}|-----------|----------------------------|---------------|--------:|-------:|"
          "--------------:|--------------------|--------|")
    for run in runs.values():
        label, clock, trainer = run["label"], run["clock"], run["clock"].trainer
        enabled = trainer.scaler.is_enabled()
        scale = clock.scales[-1] if enabled else float("nan")
        scale_text = f"{scale:g} ({clock.skipped()})" if enabled else "off"
        finite_loss = all(math.isfinite(v) for v in clock.losses)
        finite_scale = not enabled or (math.isfinite(scale) and scale > 0)
        sps = clock.steps_per_s()
        peak = f"{clock.peak:.2f} GiB" if clock.peak is not None else "- (CPU)"
        ok = "yes" if finite_loss and finite_scale else "NO"
        print(f"| {label:<20} | {trainer.precision.name:<9} | {scale_text:<26} | {trainer.memory_format.name:<13} | "
              f"{sps:7.2f} | {sps * args.batch:6.1f} | {peak:>13} | "
              f"{f'{clock.losses[0]:.4f} -> {clock.losses[-1]:.4f}':<18} | {ok:<6} |")
        if not finite_loss:
            failures.append(f"{label}: non-finite loss {clock.losses}")
        if not finite_scale:
            failures.append(f"{label}: GradScaler scale {scale}")
    for run in runs.values():
        trainer = run["clock"].trainer
        print(f"  {run['label']}: amp {trainer.precision.name} ({trainer.precision.reason}); GradScaler "
              f"{'on' if trainer.scaler.is_enabled() else 'off'}; {trainer.memory_format.name} "
              f"({trainer.memory_format.reason}); run {run['wall_s']:.1f} s in all (build, "
              f"{len(run['clock'].losses)} steps, final evaluation, checkpoints)")
    if device.type == "cuda":
        expected = [r["label"] for r in runs.values() if r["clock"].trainer.precision.name != "fp16"
                    or not r["clock"].trainer.scaler.is_enabled()]
        print("  expected on CUDA: fp16 autocast with a GradScaler: " +
              ("every recipe" if not expected else f"NOT for {', '.join(expected)}"))


def evaluate_all(runs: dict) -> None:
    from resdense.engine import run_evaluation

    print("\n2. evaluation of each run's last.pt on the validation split (resdense.engine.run_evaluation; a few "
          "steps from scratch: the values show the path runs, not quality)")
    for run in runs.values():
        config = run["config"]
        tic = time.perf_counter()
        metrics = run_evaluation(config, config.output_dir / "last.pt")
        values = ", ".join(f"{k} {float(metrics[k]):.4f}" for k in HEADLINE[config.task] if k in metrics)
        print(f"  {run['label']:<20} {values}  ({time.perf_counter() - tic:.1f} s)")


def _ort_session(path: Path, device: torch.device):
    """An onnxruntime session on the CUDA provider when the device is CUDA and onnxruntime-gpu provides it (TF32
    off where the provider takes the option), else on the CPU provider; and a note saying which."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if device.type != "cuda":
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), "CPU provider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]),
                "CPU provider: onnxruntime-gpu is not installed (no CUDAExecutionProvider)")
    note = "TF32 off"
    try:
        session = ort.InferenceSession(str(path), options, providers=[("CUDAExecutionProvider", {"use_tf32": "0"}),
                                                                       "CPUExecutionProvider"])
    except Exception:  # a provider without the option: its default
        session = ort.InferenceSession(str(path), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        note = "TF32 at onnxruntime's default"
    used = session.get_providers()[0]
    if used != "CUDAExecutionProvider":
        return session, f"{used}: the CUDA provider did not load (see onnxruntime's log)"
    return session, f"CUDAExecutionProvider, {note}"


def export_all(runs: dict, args, device: torch.device, out: Path, failures: list[str]) -> None:
    from resdense.engine import load_model
    from resdense.engine.build import build_dataset
    from resdense.export import ExportError, export_model
    from resdense.export.model import TOLERANCES, match_detections

    print("\n3. ONNX export (resdense.export.export_model) of the trained U-Net and Faster R-CNN")
    for recipe in EXPORTED:
        if recipe not in runs:
            continue
        label, config = runs[recipe]["label"], runs[recipe]["config"]
        model, _ = load_model(config.output_dir / "last.pt", device="cpu")
        path = out / "onnx" / f"{recipe}.onnx"
        tic = time.perf_counter()
        try:
            result = export_model(model, path, input_size=(args.size, args.size))
            print(f"  {label}: export + verification {time.perf_counter() - tic:.1f} s (onnxruntime CPU provider vs "
                  "eager fp32 on the CPU): " + "; ".join(map(str, result.checks)))
        except ExportError as err:
            failures.append(f"{label} ONNX export verification: {err}")
            print(f"  {label}: export verification FAILED: {err}")
            if not path.exists():
                continue
        session, note = _ort_session(path, device)
        image, _ = build_dataset(config.data, config.task, "val")[0]
        with torch.no_grad():
            if config.task == "detection":
                want = model([image])[0]
                names = [o.name for o in session.get_outputs()]
                got = {n: torch.from_numpy(v) for n, v in zip(names, session.run(None, {"image": image.numpy()}),
                                                              strict=True)}
                diffs = match_detections(want, got)
                tolerances = {k: TOLERANCES[k] for k in diffs}
                what = f"{len(want['boxes'])} detections (eager) vs {len(got['boxes'])} (onnxruntime)"
            else:
                x = image[None]
                want = model(x)
                got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
                scale = max(1.0, float(want.abs().max()))
                diffs = {"logits": float((got - want).abs().max())}
                tolerances = {"logits": TOLERANCES["dense"] * scale}
                what = f"logits {list(want.shape)}, max |eager| {float(want.abs().max()):.3g}"
        over = [k for k in diffs if not diffs[k] <= tolerances[k]]
        print(f"  {label}: onnxruntime {note}, one validation image, {what}: max abs diff vs eager fp32 (CPU) "
              + ", ".join(f"{k} {diffs[k]:.3g} (tolerance {tolerances[k]:.3g})" for k in diffs)
              + (f"  OVER: {', '.join(over)}" if over else ""))
        if over:
            failures.append(f"{label} ONNX in onnxruntime ({note}): {', '.join(f'{k} {diffs[k]:.3g}' for k in over)}")


def _seg_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, precision, layout):
    """One training step (forward under the run's autocast, cross-entropy, scaled backward, AdamW), synchronised."""
    from resdense.engine.evaluate import autocast

    model = layout.apply(model.to(device)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.dtype is torch.float16)

    def step() -> None:
        with autocast(device, precision.dtype):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)

    return step


def _precision_words(precision) -> str:
    if precision.dtype is None:
        return "fp32 (no autocast)"
    return f"{precision.name} autocast" + (" + GradScaler" if precision.dtype is torch.float16 else "")


def unet_vs_smp(args, device: torch.device) -> None:
    import segmentation_models_pytorch as smp

    from resdense.hardware import choose_memory_format, choose_precision
    from resdense.heads import UNet, map_smp_unet_keys

    size = max(32, args.size // 32 * 32)  # smp refuses sides that are not multiples of 32
    precision = choose_precision("auto", device)
    layout = choose_memory_format("auto", device, precision, "segmentation")
    torch.manual_seed(0)
    ref = smp.Unet("resnet18", encoder_weights=None, classes=4)
    ours = UNet("resnet18", num_classes=4)
    ours.load_state_dict(map_smp_unet_keys(ref.state_dict()))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 4, (args.batch, size, size), generator=g).to(device)
    rounds = min(5, max(2, args.iters))
    calls = max(1, args.iters // rounds)
    names = ("resdense UNet('resnet18')", "smp.Unet('resnet18')")
    fns = {names[0]: _seg_step(ours, x, y, device, precision, layout),
           names[1]: _seg_step(ref, x, y, device, precision, layout)}
    samples = throughput(fns, args.batch, rounds=rounds, calls=calls, warmup=args.warmup)
    print_table(f"4. U-Net R18 training step, same weights, batch {args.batch}, {size}x{size}, "
                f"{_precision_words(precision)}, {layout.name}, "
                f"cross-entropy + AdamW, steps per round: {calls}", samples, names[1])
    mid, lo, hi = ratio(samples, *names)
    print(f"  resdense / smp images/s: {mid:.2f}x [{lo:.2f}-{hi:.2f}] ({statistics.median(samples[names[0]]):.1f} "
          f"vs {statistics.median(samples[names[1]]):.1f} img/s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when available, else print one line and exit 0")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default: 30 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default: 20 on CUDA, 1 on CPU; at most --iters on CPU)")
    parser.add_argument("--size", type=int, default=None, help="image side, >= 64 (default: 256 on CUDA, 64 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 on CUDA, 2 on CPU")
    parser.add_argument("--out", default=None, help="keep the runs and exports here (default: a temporary folder)")
    args = parser.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device is available (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda}); nothing checked. `--device cpu` runs the same checks on the CPU at small sizes.")
        return 0
    args.device = args.device or "cuda"
    device = torch.device(args.device)
    size, batch, iters, warmup, n_val, args.workers = DEFAULTS[device.type]
    args.size = args.size or size
    args.batch = args.batch or batch
    args.iters = args.iters or iters
    args.warmup = max(1, args.warmup if args.warmup is not None else
                      (warmup if device.type == "cuda" else min(warmup, args.iters)))
    if args.size < 64:
        parser.error("--size must be at least 64 (the shapes set's smallest images)")

    start = time.perf_counter()
    print(_header(device))
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="resdense_gpu_check_") as tmp:
        out = Path(args.out or tmp)
        shapes = {"root": str(out / "shapes"), "n_train": args.batch * (args.warmup + args.iters), "n_val": n_val,
                  "size": args.size, "seed": 0}  # one epoch = the whole run: no checkpoint between timed steps
        runs = train_all(args, device, shapes, out, failures)
        evaluate_all(runs)
        export_all(runs, args, device, out, failures)
        unet_vs_smp(args, device)
    print(f"\ngpu_check: {time.perf_counter() - start:.0f} s in all; "
          + ("all checks passed" if not failures else f"{len(failures)} check(s) FAILED:"))
    for f in failures:
        print(f"  - {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
