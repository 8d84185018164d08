"""Learning quality at equal budget: our CPU recipe against a user's plain loop, over seeds.

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

One run's margin is not a result (single runs moved by up to 0.06 mIoU): ``--seeds N`` trains both sides N times
(``train.seed`` and the peer's seed = seed0 .. seed0 + N - 1). Every finished (task, seed) run appends one line to
``benchmarks/results/quality.jsonl`` (task, seed, both scores, iterations, precision, machine, commit, and the
recipe's version: a hash of the recipe file and its split files), so the seeds of a task can be run hours apart;
``--summary`` prints the mean ± std of each side and the per-seed margins over the runs of the current recipe
versions and budgets only. A seed run again (say, because the machine was busy the first time) counts once, by its
latest run; the summary says how many runs were replaced so, and the file keeps them all.

Usage: ``python benchmarks/quality.py [--task membrane|camvid|raccoon|cells|all] [--seeds N] [--seed0 S]
[--minutes M] [--out DIR] [--threads N] [--cells-coco FILE]`` (default: membrane, 5 min; CamVid, raccoon and cells
10 min each), or ``--summary``. Run it from the repository root: the recipes read ``../shared/data``. The cells recipe
reads instance masks derived from the membrane masks (see its comment); ``--cells-coco FILE`` reads the same
instances from a COCO file instead (RLE masks, ``file_name`` relative to the membrane images), with the recipe's split.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import statistics
import subprocess
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

from resdense.config import Config
from resdense.data import CocoDetection, DetectionTransform, MaskDataset, SegmentationTransform, VocDetection
from resdense.engine import load_config, load_model, run_training
from resdense.engine.build import build_dataset
from resdense.evaluation import DetectionEvaluator, SegmentationMetrics
from resdense.files import append_text, make_dir, write_json
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
def ours(cfg: Config, minutes: float, run_dir: Path, seed: int) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.train.max_minutes, cfg.train.output_dir, cfg.train.seed = minutes, str(run_dir), seed
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
def peer_segmentation(cfg: Config, budget_s: float, seed: int) -> dict:
    """The plain smp loop, on the recipe's training set, scored on the recipe's validation set."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    ignore = cfg.data["train"].get("ignore_index", 255)
    size = (cfg.data.get("val_transforms") or {}).get("size")
    aug = [A.LongestMaxSize(max_size=size)] if size else []  # train at the scale we evaluate at
    aug += [A.PadIfNeeded(256, 256, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore),
            A.RandomCrop(256, 256), A.HorizontalFlip()]
    if "membrane" in cfg.name:  # microscopy has no up and down: any orientation
        aug += [A.VerticalFlip(), A.RandomRotate90()]
    train_set = MaskDataset(**cfg.data["train"], transforms=SegmentationTransform(aug, seed=seed))
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


def peer_detection(cfg: Config, budget_s: float, seed: int = 0) -> dict:
    """A plain torchvision loop in the style of references/detection, scored with resdense's COCO evaluation."""
    from torchvision.models.detection import FasterRCNN

    torch.manual_seed(seed)
    train_set = VocDetection(**cfg.data["train"], transforms=DetectionTransform([A.HorizontalFlip()], seed=seed))
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


def peer_instances(cfg: Config, budget_s: float, seed: int = 0) -> dict:
    """The references/detection loop for Mask R-CNN (R18-FPN from scratch), scored with resdense's COCO evaluation."""
    from torchvision.models.detection import MaskRCNN

    torch.manual_seed(seed)
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
def run_task(name: str, minutes: float, out: Path, seed: int, cells_coco: str | None = None) -> dict:
    bench = TASKS[name]
    cfg = load_config(bench.recipe)
    if name == "cells":
        cfg.data = cells_data(cfg, cells_coco)
    data_dir = Path(cfg.data["train"]["images_dir"])
    if not data_dir.is_dir():
        print(f"{name}: skipped, {data_dir} not found (run from the repository root, next to ../shared/data)")
        return {"task": name, "skipped": f"{data_dir} not found"}
    print(f"\n{name}, seed {seed}: ours ({bench.recipe}), budget {minutes:g} min of training ...", flush=True)
    mine = ours(cfg, minutes, out / name / f"ours_seed{seed}", seed)
    mine["fp32_rescore"] = rescore(cfg, out / name / f"ours_seed{seed}")
    print(f"{name}: ours done, {mine['iterations']} iterations in {mine['train_s']:.1f} s ({mine['precision']}); "
          f"peer, same budget ...", flush=True)
    peers = {"segmentation": peer_segmentation, "detection": peer_detection, "cells": peer_instances}
    peer = peers["cells" if name == "cells" else cfg.task](cfg, 60.0 * minutes, seed)
    print(f"{name}: peer done, {peer['iterations']} iterations in {peer['train_s']:.1f} s", flush=True)
    result = {"task": name, "seed": seed, "recipe": bench.recipe, "budget_min": minutes, "split": peer["split"],
              "ours": mine, "peer": peer, "metrics": list(bench.metrics)}
    if cfg.task == "segmentation":
        print(_class_table(result))
    return result


# ---- the results file: one line per (task, seed) run, and the distribution over seeds ---------------------------
RESULTS = Path(__file__).resolve().parent / "results" / "quality.jsonl"


def recipe_version(recipe: str) -> str:
    """sha256 of the recipe file and the split files it names: runs of another version of a recipe do not count."""
    cfg = load_config(recipe)
    digest = hashlib.sha256(Path(recipe).read_bytes())
    for section in ("train", "val"):
        split = (cfg.data.get(section) or {}).get("split")
        if split:
            digest.update(Path(split).read_bytes())
    return digest.hexdigest()[:16]


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(result: dict, info: dict) -> dict:
    """The line appended to :data:`RESULTS` for one finished (task, seed) run."""
    return {
        "task": result["task"], "seed": result["seed"], "recipe": result["recipe"],
        "recipe_version": recipe_version(result["recipe"]), "budget_min": result["budget_min"],
        "scores": {k: {"ours": _value(result["ours"], k), "peer": _value(result["peer"], k)}
                   for k in result["metrics"]},
        "iterations": {"ours": result["ours"]["iterations"], "peer": result["peer"]["iterations"]},
        "ours_precision": result["ours"]["precision"], "machine": info, "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def summary(path: Path = RESULTS) -> str:
    """Mean ± std per side and the per-seed margins of every task, over the recorded runs of the current recipe
    versions and budgets (runs of older recipe versions are counted and left out)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    lines = [f"{len(rows)} runs recorded in {path}"]
    for name, bench in TASKS.items():
        version = recipe_version(bench.recipe) if Path(bench.recipe).is_file() else None
        current = [r for r in rows if r["task"] == name and r["recipe_version"] == version
                   and r["budget_min"] == bench.minutes]
        runs = list({r["seed"]: r for r in current}.values())  # the latest run of each seed
        stale = sum(r["task"] == name for r in rows) - len(current)
        rerun = f", {len(current) - len(runs)} replaced by a later run of their seed" if len(current) > len(runs) else ""
        if not runs:
            lines.append(f"{name}: no run of the current recipe ({version}, {bench.minutes:g} min)"
                         + (f"; {stale} of other versions or budgets left out" if stale else ""))
            continue
        machines = sorted({_machine_line(r["machine"]) for r in runs})
        lines.append(f"{name} ({bench.recipe}, version {version}, {bench.minutes:g} min, seeds "
                     f"{sorted(r['seed'] for r in runs)}; {stale} runs of other versions left out{rerun})")
        for key in bench.metrics:
            ours_v = [r["scores"][key]["ours"] for r in runs]
            peer_v = [r["scores"][key]["peer"] for r in runs]
            margins = [a - b for a, b in zip(ours_v, peer_v, strict=True)]
            lines.append(f"  {key:<9} ours {_mean_std(ours_v)}  peer {_mean_std(peer_v)}  ours - peer "
                         f"{_mean_std(margins, signed=True)}  per seed: "
                         + ", ".join(f"{m:+.3f}" for m in margins))
        lines += [f"  machine: {m}" for m in machines]
    return "\n".join(lines)


def _mean_std(values: list[float], signed: bool = False) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{mean:{'+' if signed else ''}.3f} ± {std:.3f} (n={len(values)})"


def _machine_line(info: dict) -> str:
    return (f"CPU capability {info['cpu_capability']}, mkldnn bf16 {info['mkldnn_bf16']}, native bf16 "
            f"{info['native_bf16']}, torch {info['torch']}, {info['threads']} threads")


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
    parser.add_argument("--seeds", type=int, default=1, help="train both sides this many times (seeds seed0..)")
    parser.add_argument("--seed0", type=int, default=0, help="the first seed")
    parser.add_argument("--summary", action="store_true",
                        help=f"print mean ± std and margins over the runs recorded in {RESULTS.name}, train nothing")
    parser.add_argument("--no-record", action="store_true", help=f"do not append the runs to {RESULTS.name}")
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
    if args.summary:
        print(summary())
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    info = machine()
    names = list(TASKS) if args.task == "all" else [args.task]
    results = []
    make_dir(RESULTS.parent)
    for name in names:
        for seed in range(args.seed0, args.seed0 + args.seeds):
            result = run_task(name, args.minutes or TASKS[name].minutes, out, seed, args.cells_coco)
            results.append(result)
            if "skipped" not in result and not args.no_record:
                append_text(RESULTS, json.dumps(record(result, info)) + "\n", "results file")
    print_report(results, info)
    path = write_json(out / "quality.json", {"machine": info, "results": results})
    print(f"written {path}" + ("" if args.no_record else f"; runs appended to {RESULTS}"))
    if not args.no_record:
        print(summary())


if __name__ == "__main__":
    main()
