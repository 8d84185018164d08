"""Training-step throughput of resdense heads against the reference libraries, measured in the same run.

- ``build_detector("faster_rcnn", backbone="resnet50")`` vs torchvision ``fasterrcnn_resnet50_fpn``
  (batch 4, 320x320 images, ``min_size=max_size=320`` so neither model resizes to 800 px).
- ``UNet("resnet34")`` vs ``smp.Unet("resnet34")`` (batch 8, 256x256).
- the membrane CPU recipe's train step (``configs/unet_r18_membrane_cpu.yaml``: U-Net R18 with its narrow decoder,
  its ``ce+dice`` loss and optimizer, in the autocast precision ``train.amp: auto`` picks here and the memory
  format ``train.channels_last: auto`` picks with it, see :mod:`resdense.hardware`) vs the plain ``smp.Unet("resnet18")`` loop of
  ``benchmarks/quality.py`` (default decoder, cross-entropy, AdamW, fp32), at the recipe's batch and crop size. The
  models differ, so this row has no shared weights: it is the per-iteration cost behind the iteration counts that
  ``quality.py`` reports for the same budget.

Both sides of the first two pairs start from the same weights (the reference's state dict is loaded into ours) and
run one optimizer step per iteration (forward, backward, SGD); the recipe row runs each side's own step (forward,
loss, backward, AdamW). Sides are timed alternately, so that a change in machine load hits both; the ratio of
medians is printed (>= 1.0 means resdense is at least as fast). On a shared machine the absolute numbers are noisy;
the ratio much less so.

Usage: ``python benchmarks/heads_speed.py [--iters 6] [--warmup 1] [--threads N] [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from resdense.hardware import choose_memory_format, choose_precision, cpu_capability

RECIPE = "configs/unet_r18_membrane_cpu.yaml"


def _detection_pair(size: int):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from resdense.heads import build_detector

    kw = dict(num_classes=91, min_size=size, max_size=size)
    ref = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kw)
    ours = build_detector("faster_rcnn", backbone="resnet50", **kw)
    ours.load_state_dict(ref.state_dict())  # identical layout (see tests/heads/test_detection_weights.py)
    return ours, ref


def _detection_batch(batch: int, size: int):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(3, 2, generator=g) * size * 0.6
        wh = 16 + torch.rand(3, 2, generator=g) * size * 0.35
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": torch.randint(1, 91, (3,), generator=g)})
    return images, targets


def _segmentation_pair():
    import segmentation_models_pytorch as smp

    from resdense.heads import UNet, map_smp_unet_keys

    ref = smp.Unet("resnet34", encoder_weights=None, classes=2)
    ours = UNet("resnet34", num_classes=2)
    ours.load_state_dict(map_smp_unet_keys(ref.state_dict()))
    return ours, ref


def _recipe_pair(quick: bool):
    """The recipe's model, task and optimizer, and the plain smp loop's model; batch and crop size of the recipe."""
    import segmentation_models_pytorch as smp

    from resdense.engine import build_optimizer, load_config
    from resdense.engine.build import build_model, build_task

    cfg = load_config(RECIPE)
    ours = build_model(cfg.model, cfg.source)
    task = build_task(cfg.task, list(cfg.data["train"]["classes"]), cfg)
    ref = smp.Unet("resnet18", encoder_weights=None, classes=cfg.model["num_classes"])
    batch, size = (2, 128) if quick else (cfg.train.batch_size, cfg.data["train_transforms"]["size"])
    return ours, task, build_optimizer(ours, cfg.train), ref, batch, size


def _recipe_step_fn(model, task, opt, batch, dtype):
    """One Trainer step (resdense.engine.trainer.Trainer._step without the schedule): the task's losses under
    autocast ``dtype`` (``None``: fp32), backward, optimizer step."""
    from resdense.engine import Batch

    model.train()
    inputs = Batch(list(range(len(batch[0]))), *batch)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext():
            loss = sum(task.losses(model, inputs).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _plain_step_fn(model, batch):
    """The plain loop of benchmarks/quality.py: fp32, cross-entropy, AdamW 1e-3."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step() -> None:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _step_fn(model, kind: str, batch):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    model.train()

    def step() -> None:
        if kind == "det":
            loss = sum(model(*batch).values())
        else:
            x, y = batch
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _timed(step) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def compare(name: str, ours_step, ref_step, n_images: int, iters: int, warmup: int) -> dict:
    steps = {"resdense": ours_step, "reference": ref_step}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(iters):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))  # alternate who goes first
        for k in order:
            times[k].append(_timed(steps[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "name": name,
        "ours": n_images / med["resdense"],
        "ref": n_images / med["reference"],
        "ratio": med["reference"] / med["resdense"],
        "spread": {k: (min(v), max(v)) for k, v in times.items()},
    }


def _library_rows(args, det_size: int, det_batch: int, seg_size: int, seg_batch: int) -> list[dict]:
    """The two same-weights rows: our detector and U-Net against torchvision's and smp's."""
    rows = []
    ours, ref = _detection_pair(det_size)
    det = _detection_batch(det_batch, det_size)
    rows.append(compare(f"Faster R-CNN R50-FPN train step, batch {det_batch}, {det_size}x{det_size}",
                        _step_fn(ours, "det", det), _step_fn(ref, "det", det), det_batch, args.iters, args.warmup))
    rows[-1]["ref_name"] = "torchvision fasterrcnn_resnet50_fpn"
    del ours, ref

    ours, ref = _segmentation_pair()
    g = torch.Generator().manual_seed(0)
    seg = (torch.randn(seg_batch, 3, seg_size, seg_size, generator=g),
           torch.randint(0, 2, (seg_batch, seg_size, seg_size), generator=g))
    rows.append(compare(f"U-Net R34 train step, batch {seg_batch}, {seg_size}x{seg_size}", _step_fn(ours, "seg", seg),
                        _step_fn(ref, "seg", seg), seg_batch, args.iters, args.warmup))
    rows[-1]["ref_name"] = "smp.Unet('resnet34')"
    del ours, ref
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=6, help="timed iterations per model (median taken)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for a smoke run")
    parser.add_argument("--only-recipe", action="store_true", help="the membrane recipe row alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    det_size, det_batch = (160, 2) if args.quick else (320, 4)
    seg_size, seg_batch = (128, 2) if args.quick else (256, 8)
    rows = []
    if not args.only_recipe:
        rows += _library_rows(args, det_size, det_batch, seg_size, seg_batch)

    precision = choose_precision("auto", torch.device("cpu"))
    ours, task, opt, ref, rec_batch, rec_size = _recipe_pair(args.quick)
    layout = choose_memory_format("auto", torch.device("cpu"), precision, "segmentation")  # what the Trainer picks
    ours = layout.apply(ours)  # in place: the optimizer keeps the same parameters
    g = torch.Generator().manual_seed(0)
    rec = (torch.randn(rec_batch, 3, rec_size, rec_size, generator=g),
           torch.randint(0, 2, (rec_batch, rec_size, rec_size), generator=g))
    rows.append(compare(f"membrane recipe step ({precision.name}), batch {rec_batch}, {rec_size}x{rec_size}",
                        _recipe_step_fn(ours, task, opt, rec, precision.dtype), _plain_step_fn(ref, rec), rec_batch,
                        args.iters, args.warmup))
    rows[-1]["ref_name"] = "smp.Unet('resnet18') plain, fp32"

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.iters} timed iterations (median)")
    print(f"| {'benchmark':<52} | {'reference':<36} | resdense img/s | reference img/s | ratio |")
    print(f"|{'-' * 54}|{'-' * 38}|---------------:|----------------:|------:|")
    for r in rows:
        print(f"| {r['name']:<52} | {r['ref_name']:<36} | {r['ours']:14.2f} | {r['ref']:15.2f} | {r['ratio']:5.2f} |")
    print(f"membrane recipe row: {RECIPE} in {precision.name} ({precision.reason}), {layout.name} ({layout.reason}); "
          "reference fp32, contiguous; "
          f"CPU capability {cpu_capability()}, oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    for r in rows:
        spread = ", ".join(f"{k} {lo:.2f}-{hi:.2f} s" for k, (lo, hi) in r["spread"].items())
        print(f"step time range, {r['name']}: {spread}")


if __name__ == "__main__":
    main()
