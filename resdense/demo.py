"""The one-command demo: synthetic shapes -> U-Net-ResNet18 and Faster R-CNN ResNet18-FPN, trained from scratch on
a CPU in minutes -> mIoU and COCO mAP on the validation split -> ``report.md`` with tables, timings and pictures.

The two recipes are the shipped ``configs/demo_shapes_unet_r18.yaml`` and ``configs/demo_shapes_frcnn_r18_fpn.yaml``
(the demo only redirects their output into ``out``), so what the demo shows is what ``resdense train`` does.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from resdense.data import read_image
from resdense.engine import load_config, run_evaluation, run_training
from resdense.engine.build import build_dataset
from resdense.engine.report import markdown_table
from resdense.errors import ConfigError
from resdense.files import make_dir, write_json, write_text
from resdense.hardware import cpu_capability, machine_summary, native_bf16
from resdense.inference import Predictor
from resdense.visualize import draw_boxes, overlay_mask, save_image, side_by_side

__all__ = ["run_demo", "DEMO_CONFIGS", "HEADLINE"]

log = logging.getLogger(__name__)

DEMO_CONFIGS = {"segmentation": "demo_shapes_unet_r18", "detection": "demo_shapes_frcnn_r18_fpn"}
# The metric each task's report line shows first.
HEADLINE = {"segmentation": "mIoU", "detection": "bbox/AP50"}
_PICTURES = 6


def _demo_config(task: str, out: Path, overrides: Sequence[str]):
    sets = [f"data.shapes.root={out / 'shapes'}", f"train.output_dir={out / task}", "train.resume=false"]
    if task == "detection":
        # The detector's backbone starts from the demo U-Net's encoder (see the recipe's comment).
        seg = out / "segmentation" / "best.pt"
        if not seg.exists():
            raise ConfigError(f"{seg}: the detection demo starts from the segmentation demo's encoder; run "
                              "`resdense demo` without --only, or --only segmentation first")
        sets.append(f"model.weights_backbone={seg}")
    return load_config(DEMO_CONFIGS[task], [*sets, *overrides])


def run_demo(out: str | os.PathLike = "demo_out", *, only: str | None = None,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the demo into ``out``; returns ``{"metrics": ..., "report": <markdown text>}``.

    Args:
        out: output folder: ``shapes/`` (the dataset), ``segmentation/`` and ``detection/`` (run directories,
            each with the evaluation report of its ``last.pt`` in ``report/``), ``overlays/``, ``report.md``,
            ``metrics.json``.
        only: ``"segmentation"`` or ``"detection"`` to run one task.
        overrides: ``key=value`` overrides applied to both recipes (e.g. ``train.iterations=20`` for a smoke run).
    """
    out = Path(out)
    make_dir(out)
    tasks = [only] if only else ["segmentation", "detection"]
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for task in tasks:
        config = _demo_config(task, out, overrides)
        tic = time.perf_counter()
        result = run_training(config)
        result["wall_s"] = round(time.perf_counter() - tic, 1)
        result["config"] = f"configs/{DEMO_CONFIGS[task]}.yaml"
        result["pictures"] = _pictures(task, config, out)
        result["report"] = _evaluation_report(task, config, out)
        results[task] = result
        log.info("demo %s: %s = %.4f in %.0f s (%s)", task, HEADLINE[task],
                 result["final"].get(HEADLINE[task], float("nan")), result["wall_s"], result["precision"]["amp"])
    total = time.perf_counter() - start
    summary = {
        "machine": machine_summary(),
        "cpu_capability": cpu_capability(),
        "native_bf16": native_bf16(),
        "total_s": round(total, 1),
        "tasks": results,
    }
    write_json(out / "metrics.json", summary)
    report = _report(summary, out)
    write_text(out / "report.md", report)
    return {"metrics": summary, "report": report}


# ---- pictures ------------------------------------------------------------------------------------------------------
def _pictures(task: str, config, out: Path) -> list[str]:
    run_dir = config.output_dir
    ckpt = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    predictor = Predictor.from_checkpoint(ckpt, config)
    val = build_dataset(config.data, config.task, "val")
    names = predictor.class_names
    paths = []
    for i in range(min(_PICTURES, len(val))):
        raw = read_image(val.image_paths[i])
        _, target = val[i]
        pred = predictor(raw)
        if task == "segmentation":
            gt = overlay_mask(raw, target.numpy(), names, legend=False)
            pr = overlay_mask(raw, pred["mask"].numpy(), names)
            panel = side_by_side([_up(raw), _up(gt), _up(pr, legend=True)], ["image", "ground truth", "prediction"])
        else:
            gt = draw_boxes(raw, target["boxes"], target["labels"], None, names)
            pr = draw_boxes(raw, pred["boxes"], pred["labels"], pred["scores"], names,
                            score_threshold=config.eval.score_threshold)
            panel = side_by_side([gt, pr], ["ground truth", f"prediction (score >= {config.eval.score_threshold})"])
        paths.append(str(save_image(panel, out / "overlays" / f"{task}_{i:02d}.png").relative_to(out)))
    return paths


def _evaluation_report(task: str, config, out: Path) -> list[str]:
    """``resdense eval --out <run>/report`` of the final weights (those of the metrics above): per-class table and
    confusion matrix / PR curves; the files' paths relative to ``out``."""
    metrics = run_evaluation(config, config.output_dir / "last.pt", out=config.output_dir / "report")
    return [str(Path(f).relative_to(out)) for f in metrics["report_files"]]


def _up(img: np.ndarray, legend: bool = False, target: int = 256) -> np.ndarray:
    """Nearest-neighbour upscaling of a small picture so it reads on screen (the legend strip keeps its size)."""
    h = img.shape[0]
    k = max(1, target // h)
    if k == 1:
        return img
    if legend:
        w = h  # the image part is square in the demo; the legend to its right is not scaled
        left = np.asarray(Image.fromarray(img[:, :w]).resize((w * k, h * k), Image.NEAREST))
        right = np.full((h * k, img.shape[1] - w, 3), 255, np.uint8)
        right[:h] = img[:, w:]
        return np.concatenate([left, right], axis=1)
    return np.asarray(Image.fromarray(img).resize((img.shape[1] * k, h * k), Image.NEAREST))


# ---- report --------------------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    # COCO reports -1 for an area range without ground truth: shown as "-".
    if v is None or (isinstance(v, float) and v < 0):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _report_section(task: str, files: list[str], out: Path) -> list[str]:
    """The per-class tables (embedded) and the report's pictures of one task."""
    if not files:
        return []
    page = next(f for f in files if f.endswith("report.md"))
    lines = [f"Per-class results of the final weights (`resdense eval --out`; full page: [{page}]({page})):", ""]
    for f in files:
        if "per_class" in f and f.endswith(".md"):
            lines += [(out / f).read_text().strip(), ""]
        elif f.endswith(".png"):
            lines += [f"![{task} {Path(f).stem.replace('_', ' ')}]({f})", ""]
    return lines


def _report(summary: dict[str, Any], out: Path) -> str:
    lines = ["# resdense demo: synthetic shapes, no downloaded weights", "",
             "A U-Net with a ResNet-18 encoder is trained from scratch on the synthetic shapes set; a Faster R-CNN "
             "ResNet-18 FPN then starts from that encoder (FPN and heads from scratch) and is trained on the same "
             "images. Metrics are on the validation split.", "",
             f"Machine: {summary['machine']}. Total wall time: {summary['total_s'] / 60:.1f} min.", ""]
    rows = []
    for task, r in summary["tasks"].items():
        key = HEADLINE[task]
        model = "U-Net ResNet-18" if task == "segmentation" else "Faster R-CNN ResNet-18 FPN"
        rows.append([task, model, f"`{Path(r['config']).name}`", str(r["precision"]["amp"]), str(r["iterations"]),
                     f"{r['timings']['train_s']:.0f}", f"{r['timings']['eval_s']:.0f}", f"{r['wall_s']:.0f}", key,
                     f"**{_fmt(r['final'].get(key))}**"])
    lines.append(markdown_table(["task", "model", "recipe", "precision", "iterations", "train s", "eval s", "wall s",
                                 "metric", "value"], rows))
    lines += [""] + [f"Precision of the {task} run: {r['precision']['amp']} ({r['precision']['reason']})."
                     for task, r in summary["tasks"].items()]
    for task, r in summary["tasks"].items():
        lines += ["", f"## {task}", ""]
        f = r["final"]
        if task == "segmentation":
            keys = ["mIoU", "mDice", "pixel_accuracy"] + [k for k in f if k.startswith("IoU/")]
        else:
            keys = [k for k in ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl",
                                "bbox/AR100") if k in f]
        lines += [markdown_table(keys, [[_fmt(f.get(k)) for k in keys]]), ""]
        lines.append(f"Best checkpoint: {r['metric']} = {_fmt(r['best'].get('value'))} at iteration "
                     f"{r['best'].get('iteration')}; run directory `{task}/` (config.yaml, log.csv, eval.csv, "
                     "last.pt, best.pt, metrics.json).")
        lines += ["", f"![{task} curves]({task}/curves.png)", ""]
        lines += _report_section(task, r.get("report", []), out)
        lines += [f"![{task} example {i}]({p})" for i, p in enumerate(r["pictures"])]
    return "\n".join(lines) + "\n"
