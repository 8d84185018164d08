"""Learning quality at equal budget (issue 14): our CPU recipe against a user's plain loop, in one run.

Both sides train from scratch on the CPU (nothing is downloaded) on the same split files, for the same wall-clock
training budget, and are scored by the same resdense metric code on the same validation images:

- ours: ``run_training(<shipped CPU recipe>, ["train.max_minutes=M", ...])``, in the precision ``train.amp: auto``
  picks on this machine; the score is the run's final validation metric (``metrics.json``).
- peer, segmentation (membrane, CamVid): the plain smp loop of the issue: ``smp.Unet("resnet18")``, random 256 px
  crops with flips (and 90-degree rotations on the membrane images, which have no up and down), AdamW 1e-3,
  cross-entropy, batch 8, fp32, at the scale our evaluation uses (native for both recipes; a recipe whose
  validation resizes would have the peer resize alike), so the peer trains at the scale it is tested at. Scored with
  :class:`~resdense.evaluation.SegmentationMetrics` on the recipe's own validation set (whole images, padded to a
  multiple of 32, padding ignored), as our evaluation does.
- peer, detection (raccoon): a plain torchvision loop in the style of ``references/detection``: Faster R-CNN on a
  ResNet-18 FPN from scratch (BatchNorm, all layers trainable), ``min_size=512, max_size=640``, batch 4, SGD 0.01
  with momentum 0.9, weight decay 1e-4 and the references' linear warm-up over the first epoch, random horizontal
  flips, fp32. Scored with :class:`~resdense.evaluation.DetectionEvaluator` (COCO AP) on the 40 validation images at
  their own size (the model resizes them itself).
- peer, instance segmentation (cells: the membrane images' cell regions as instances, about 115 per image): the
  same references/detection loop for Mask R-CNN, ``MaskRCNN(resnet_fpn_backbone("resnet18", weights=None,
  trainable_layers=5))`` from scratch with torchvision's anchors and heads, whole 512 px images at their own scale
  (``min_size = max_size = 512``), batch 2, SGD with momentum 0.9, weight decay 1e-4 and the warm-up, random
  horizontal flips, fp32, at the references' lr scaled to the batch (their 0.02 is for 8 GPUs x 2 images, so 0.0025
  for 2 images: at 0.02 the loss became NaN at iteration 10); ``box_detections_per_img`` as the recipe's (300), so that both sides are scored on as
  many detections per image (the recipe's ``eval.max_dets``: an image holds more than COCO's 100 cells). Scored
  with the same evaluator, ``segm`` and ``bbox``, on the 5 validation images.

Training time is counted as the Trainer counts it (``timings.train_s``): data loading and optimisation steps, not
evaluation. A side stops after the step during which its time passes the budget. Our recipe keeps its own
iteration count and schedule; if it finishes them before the budget, it stops there (the table says so) while the
peer, which has no iteration count, always trains for the whole budget.

Wall-clock budgets make the results depend on the machine and its load: read the table together with the CPU line
printed above it. On a machine where bf16 is native (AVX512-BF16/AMX) our recipe runs bf16 autocast, elsewhere fp32;
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` shows what an AVX2-only CPU gets.

Usage: ``python benchmarks/quality.py [--task membrane|camvid|raccoon|cells|all] [--minutes M] [--out DIR]
[--threads N] [--cells-coco FILE]`` (default: membrane, 5 min; CamVid, raccoon and cells 10 min each). Run it from the
repository root: the recipes read ``../shared/data``. The cells recipe reads instance masks derived from the membrane
masks (see its comment); ``--cells-coco FILE`` reads the same instances from a COCO file instead (RLE masks,
``file_name`` relative to the membrane images), with the recipe's split.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from resdense.config import Config, load_config
from resdense.data import CocoDetection, DetectionTransform, MaskDataset, SegmentationTransform, VocDetection
from resdense.engine import load_model, run_training
from resdense.engine.build import build_dataset
from resdense.evaluation import DetectionEvaluator, SegmentationMetrics
from resdense.hardware import cpu_capability, native_bf16


@dataclass(frozen=True)
class Benchmark:
    recipe: str
    minutes: float  # default budget
    metrics: tuple[str, ...]  # keys of our metrics.json "final" and of the peer's result, in table order


TASKS = {
    "membrane": Benchmark("configs/unet_r18_membrane_cpu.yaml", 5.0, ("mIoU",)),
    "camvid": Benchmark("configs/unet_r18_camvid_cpu.yaml", 10.0, ("mIoU",)),
    "raccoon": Benchmark("configs/fasterrcnn_r18_fpn_raccoon_cpu.yaml", 10.0, ("bbox/AP50", "bbox/AP")),
    "cells": Benchmark("configs/maskrcnn_r18_fpn_cells_cpu.yaml", 10.0, ("segm/AP", "segm/AP50", "bbox/AP")),
}


# ---- shared helpers: the training clock and the evaluation ---------------------------------------------------------
def train_for(budget_s: float, loader: DataLoader, step: Callable[[object], float]) -> dict:
    """Call ``step(batch)`` (returns the loss) over epochs of ``loader`` until the training time (data loading and
    steps, as the Trainer's ``timings.train_s``) passes ``budget_s``, or a loss is not finite."""
    train_s, iters = 0.0, 0
    while True:
        tic = time.perf_counter()
        for batch in loader:
            loss = step(batch)
            iters += 1
            train_s += time.perf_counter() - tic
            if not math.isfinite(loss) or train_s > budget_s:
                return {"iterations": iters, "train_s": round(train_s, 3), "final_loss": loss,
                        "diverged": not math.isfinite(loss)}
            tic = time.perf_counter()


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset, num_classes: int, ignore_index: int,
                          class_names: list[str]) -> dict:
    """mIoU and per-class IoU over ``dataset`` (``(image [3, H, W], mask [H, W])``, already padded to a multiple of
    32 with ``ignore_index`` in the mask), one whole image at a time, in fp32."""
    metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index, class_names=class_names)
    model.eval()
    for image, mask in dataset:
        metrics.update(model(image[None]), mask[None])
    out = metrics.compute()
    return {"mIoU": out["mIoU"], **{f"IoU/{n}": float(v) for n, v in zip(class_names, out["IoU"], strict=True)},
            "table": metrics.format_table(out)}


def _lists(batch):
    return tuple(zip(*batch, strict=True))


@torch.no_grad()
def evaluate_detection(model: nn.Module, dataset: VocDetection | CocoDetection, cfg: Config) -> dict:
    """COCO AP of a torchvision detector over ``dataset`` (its ``coco`` ground truth), in fp32, as the recipe's
    evaluation counts it: box AP, and mask AP for a Mask R-CNN; ``eval.max_dets`` detections per image."""
    masks = cfg.model["arch"] == "mask_rcnn"
    evaluator = DetectionEvaluator(dataset.coco, dataset.label_to_cat_id, ("bbox", "segm") if masks else ("bbox",),
                                   max_dets=cfg.eval.max_dets)
    model.eval()
    # one image at a time with masks: 300 pasted [512, 512] float masks are 300 MB per image
    for images, targets in DataLoader(dataset, batch_size=1 if masks else 4, collate_fn=_lists):
        evaluator.update(model(list(images)), targets)
    return {k: v for k, v in evaluator.compute().items() if k.endswith(("/AP", "/AP50", "/AP75"))}


# ---- ours -----------------------------------------------------------------------------------------------------------
def ours(cfg: Config, minutes: float, run_dir: Path) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.train.max_minutes, cfg.train.output_dir = minutes, str(run_dir)
    cfg.train.resume = cfg.train.progress = False
    result = run_training(cfg)
    return {"final": result["final"], "iterations": result["iterations"], "train_s": result["timings"]["train_s"],
            "precision": result["precision"]["amp"], "stopped": result["stopped"], "run_dir": str(run_dir)}


def rescore(cfg: Config, run_dir: Path) -> dict:
    """Our final weights scored by this script's fp32 evaluation on the recipe's val set, as the peer's are: a check
    that the two sides' scores compare (the run's own score above is in its training precision)."""
    model, _ = load_model(run_dir / "last.pt", device="cpu")
    val_set = build_dataset(cfg.data, cfg.task, "val")
    if cfg.task == "detection":
        return evaluate_detection(model, val_set, cfg)
    out = evaluate_segmentation(model, val_set, val_set.num_classes, val_set.ignore_index, val_set.class_names)
    return {k: v for k, v in out.items() if k != "table"}


# ---- peers: a user's plain loops ----------------------------------------------------------------------------------
def peer_segmentation(cfg: Config, budget_s: float) -> dict:
    """The plain smp loop of issue 14, on the recipe's train split, scored on the recipe's val set."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    ignore = cfg.data["train"].get("ignore_index", 255)
    size = (cfg.data.get("val_transforms") or {}).get("size")
    aug = [A.LongestMaxSize(max_size=size)] if size else []  # train at the scale we evaluate at
    aug += [A.PadIfNeeded(256, 256, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore),
            A.RandomCrop(256, 256), A.HorizontalFlip()]
    if "membrane" in cfg.name:  # microscopy has no up and down: any orientation
        aug += [A.VerticalFlip(), A.RandomRotate90()]
    train_set = MaskDataset(**cfg.data["train"], transforms=SegmentationTransform(aug, seed=0))
    loader = DataLoader(train_set, batch_size=8, shuffle=True, drop_last=True, num_workers=cfg.train.num_workers)
    model = smp.Unet("resnet18", encoder_weights=None, classes=train_set.num_classes, in_channels=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step(batch) -> float:
        images, masks = batch
        loss = F.cross_entropy(model(images), masks, ignore_index=ignore)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    run = train_for(budget_s, loader, step)
    val_set = build_dataset(cfg.data, "segmentation", "val")  # the set our run was scored on
    run.update(evaluate_segmentation(model, val_set, val_set.num_classes, val_set.ignore_index, val_set.class_names))
    return {**run, "split": [len(train_set), len(val_set)]}


def references_loop(model: nn.Module, loader: DataLoader, budget_s: float, lr: float) -> dict:
    """torchvision's references/detection training loop for ``budget_s`` of training: SGD at ``lr`` with momentum
    0.9 and weight decay 1e-4, the summed losses, fp32."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    # references/detection: linear warm-up from lr/1000 over the first epoch (at most 1000 iterations), then constant
    # here (its step decays come at epochs 16 and 22 of 26, far beyond a CPU budget).
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, total_iters=min(1000, len(loader) - 1))
    model.train()

    def step(batch) -> float:
        images, targets = batch
        loss = sum(model(list(images), list(targets)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        warmup.step()
        return loss.item()

    return train_for(budget_s, loader, step)


def _r18_fpn() -> nn.Module:
    """torchvision's ResNet-18 FPN from scratch: BatchNorm, every layer trainable."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    return resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5, norm_layer=nn.BatchNorm2d)


def peer_detection(cfg: Config, budget_s: float) -> dict:
    """A plain torchvision loop in the style of references/detection, scored with resdense's COCO evaluation."""
    from torchvision.models.detection import FasterRCNN

    torch.manual_seed(0)
    train_set = VocDetection(**cfg.data["train"], transforms=DetectionTransform([A.HorizontalFlip()], seed=0))
    loader = DataLoader(train_set, batch_size=4, shuffle=True, drop_last=True, collate_fn=_lists,
                        num_workers=cfg.train.num_workers)
    model = FasterRCNN(_r18_fpn(), num_classes=train_set.num_classes + 1, min_size=512, max_size=640)
    run = references_loop(model, loader, budget_s, lr=0.01)
    val_set = VocDetection(**cfg.data["val"])  # images at their own size, as the model resizes them itself
    if not run["diverged"]:
        run.update(evaluate_detection(model, val_set, cfg))
    return {**run, "split": [len(train_set), len(val_set)]}


def cells_data(cfg: Config, coco_file: str | None) -> dict:
    """The cells' data section: the recipe's own (instance-mask folders), or with ``coco_file`` the same images,
    instances and split read through ``dataset: coco``. The one place both sides get their data from."""
    data = copy.deepcopy(cfg.data)
    if coco_file is not None:
        data["dataset"] = "coco"
        for part in ("train", "val"):
            data[part] = {"images_dir": data[part]["images_dir"], "ann_file": coco_file, "masks": True,
                          "split": data[part]["split"]}
    return data


def peer_instances(cfg: Config, budget_s: float) -> dict:
    """The references/detection loop for Mask R-CNN (R18-FPN from scratch), scored with resdense's COCO evaluation."""
    from torchvision.models.detection import MaskRCNN

    torch.manual_seed(0)
    flips = {"size": None, "hflip": 0.5, "color_jitter": 0.0}  # the references' only augmentation, whole images
    train_set = build_dataset({**cfg.data, "train_transforms": flips}, "detection", "train")
    loader = DataLoader(train_set, batch_size=2, shuffle=True, drop_last=True, collate_fn=_lists,
                        num_workers=cfg.train.num_workers)
    side = cfg.model["max_size"]  # the images' own scale, which the evaluation uses too
    model = MaskRCNN(_r18_fpn(), num_classes=train_set.num_classes + 1, min_size=side, max_size=side,
                     box_detections_per_img=cfg.model["box_detections_per_img"])
    run = references_loop(model, loader, budget_s, lr=0.02 * loader.batch_size / 16)  # references: 0.02 for 16 images
    val_set = build_dataset(cfg.data, "detection", "val")  # the set our run was scored on, whole images
    if not run["diverged"]:
        run.update(evaluate_detection(model, val_set, cfg))
    return {**run, "split": [len(train_set), len(val_set)]}


# ---- one benchmark, and the report -----------------------------------------------------------------------------
def run_task(name: str, minutes: float, out: Path, cells_coco: str | None = None) -> dict:
    bench = TASKS[name]
    cfg = load_config(bench.recipe)
    if name == "cells":
        cfg.data = cells_data(cfg, cells_coco)
    data_dir = Path(cfg.data["train"]["images_dir"])
    if not data_dir.is_dir():
        print(f"{name}: skipped, {data_dir} not found (run from the repository root, next to ../shared/data)")
        return {"task": name, "skipped": f"{data_dir} not found"}
    print(f"\n{name}: ours ({bench.recipe}), budget {minutes:g} min of training ...", flush=True)
    mine = ours(cfg, minutes, out / name / "ours")
    mine["fp32_rescore"] = rescore(cfg, out / name / "ours")
    print(f"{name}: ours done, {mine['iterations']} iterations in {mine['train_s']:.1f} s ({mine['precision']}); "
          f"peer, same budget ...", flush=True)
    peers = {"segmentation": peer_segmentation, "detection": peer_detection, "cells": peer_instances}
    peer = peers["cells" if name == "cells" else cfg.task](cfg, 60.0 * minutes)
    print(f"{name}: peer done, {peer['iterations']} iterations in {peer['train_s']:.1f} s", flush=True)
    result = {"task": name, "recipe": bench.recipe, "budget_min": minutes, "split": peer["split"], "ours": mine,
              "peer": peer, "metrics": list(bench.metrics)}
    if name == "camvid":
        print(_class_table(result))
    return result


def _value(side: dict, key: str) -> float:
    return float(side.get("final", side).get(key, math.nan))


def _class_table(result: dict) -> str:
    keys = [k for k in result["peer"] if k.startswith("IoU/")]
    lines = [f"\n{result['task']}: per-class IoU (%)", f"  {'class':<12} {'ours':>6} {'peer':>6} {'diff':>6}"]
    for k in keys:
        a, b = 100 * _value(result["ours"], k), 100 * _value(result["peer"], k)
        lines.append(f"  {k[4:]:<12} {a:6.1f} {b:6.1f} {a - b:+6.1f}")
    return "\n".join(lines)


def machine() -> dict:
    return {"cpu_capability": cpu_capability(), "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "native_bf16": native_bf16(), "torch": torch.__version__, "threads": torch.get_num_threads()}


def print_report(results: list[dict], info: dict) -> None:
    print(f"\nCPU capability {info['cpu_capability']}, torch.ops.mkldnn._is_mkldnn_bf16_supported() "
          f"{info['mkldnn_bf16']}, native bf16 {info['native_bf16']}, torch {info['torch']}, {info['threads']} threads")
    head = ("| dataset  | train/val | budget  | metric    |   ours | ours iters | ours train s | ours precision |"
            "   peer | peer iters | peer train s | ours - peer |")
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for r in results:
        if "skipped" in r:
            print(f"| {r['task']:<8} | skipped: {r['skipped']}")
            continue
        o, p = r["ours"], r["peer"]
        for key in r["metrics"]:
            a, b = _value(o, key), _value(p, key)
            print(f"| {r['task']:<8} | {r['split'][0]:>4}/{r['split'][1]:<4} | {r['budget_min']:5g} m | {key:<9} |"
                  f" {a:6.3f} | {o['iterations']:10d} | {o['train_s']:12.1f} | {o['precision']:<14} |"
                  f" {b:6.3f} | {p['iterations']:10d} | {p['train_s']:12.1f} | {a - b:+11.3f} |")
    for r in results:
        if "skipped" in r:
            continue
        if (r["ours"]["stopped"] or {}).get("reason") != "max_minutes":
            print(f"note: {r['task']}: ours finished its recipe's {r['ours']['iterations']} iterations before the "
                  "budget; the peer trained for the whole budget")
        again = ", ".join(f"{k} {_value(r['ours']['fp32_rescore'], k):.3f}" for k in r["metrics"])
        print(f"note: {r['task']}: ours re-scored by this script's fp32 evaluation (the peer's): {again}")
        if r["peer"]["diverged"]:
            print(f"note: {r['task']}: the peer's loss became non-finite at iteration {r['peer']['iterations']}")
    print("ours: the shipped CPU recipe (train.amp: auto); peer: smp.Unet('resnet18') / torchvision FasterRCNN / "
          "MaskRCNN R18-FPN plain loops in fp32; same split, budget and metric code")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=[*TASKS, "all"], default="membrane")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training budget per side (default: 5 for membrane, 10 for camvid, raccoon and cells)")
    parser.add_argument("--cells-coco", default=None,
                        help="cells: read the cell instances from this COCO file (RLE masks, file names relative to "
                             "the membrane images) instead of the recipe's instance-mask folders")
    parser.add_argument("--out", default="runs/quality", help="run directories and quality.json go here")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the engine's log")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    names = list(TASKS) if args.task == "all" else [args.task]
    results = [run_task(n, args.minutes or TASKS[n].minutes, out, args.cells_coco) for n in names]
    print_report(results, info)
    path = out / "quality.json"
    path.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
