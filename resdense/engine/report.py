"""Evaluation reports a person can read: what ``resdense eval RECIPE --checkpoint C --out DIR`` writes.

``DIR`` gets ``metrics.json`` (the scalar metrics, what ``resdense eval --json`` prints), ``report.md`` (everything
below on one page) and, per task:

* segmentation: ``per_class_iou.md`` / ``.csv`` (IoU, Dice, accuracy = recall, pixel counts per class),
  ``confusion_matrix.csv`` (the counts, rows ground truth, columns prediction) and ``confusion_matrix.png`` (rows
  normalised: recall per true class);
* detection, for each IoU type ``t`` (``bbox``, ``segm``): ``t_per_class_ap.md`` / ``.csv`` (AP, AP50, AP75 per
  category) and ``t_pr_curves.png`` (precision-recall per category at IoU 0.5 and averaged over 0.50:0.95).

Everything is drawn from :func:`~resdense.engine.evaluate.evaluate`'s ``report=True`` metrics, which are computed
after the processes' shards are gathered, so a report under ``torchrun`` is the whole split's. Markdown tables show
percentages (``-``: no ground truth, or excluded by the IoU convention); CSV files hold fractions in [0, 1] with an
empty cell there.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resdense.errors import EvaluationError
from resdense.evaluation import CocoEvaluation, scalar_metrics
from resdense.files import atomic_open, make_dir, write_json, write_text
from resdense.visualize import plot_confusion_matrix, plot_pr_curves

__all__ = ["check_report_folder", "markdown_table", "scalar_metrics", "write_report"]

# (CSV column, Markdown header, kind): kind "pct" is a fraction shown in percent, "int" a count, "str" text.
_SEG_COLUMNS = (("class", "class", "str"), ("IoU", "IoU %", "pct"), ("Dice", "Dice %", "pct"),
                ("Acc", "Acc (recall) %", "pct"), ("gt_pixels", "GT pixels", "int"),
                ("pred_pixels", "predicted pixels", "int"))
_DET_COLUMNS = (("category_id", "id", "int"), ("name", "class", "str"), ("AP", "AP %", "pct"),
                ("AP50", "AP50 %", "pct"), ("AP75", "AP75 %", "pct"))


def check_report_folder(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path, refused (before any evaluation runs) when it names an existing file."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"{out}: the report folder is a file; pass a folder for --out")
    return out


def write_report(metrics: Mapping[str, Any], class_names: Sequence[str], out_dir: str | os.PathLike, *,
                 title: str = "evaluation") -> list[Path]:
    """Write the report of one evaluation into ``out_dir`` (created); returns the files written.

    Args:
        metrics: a task's metrics from ``evaluate(..., report=True)``: with ``confusion_matrix`` (segmentation)
            or ``coco`` (detection) a per-class table and a picture are written; any task gets ``metrics.json``.
        class_names: the run's class names (segmentation: one per confusion-matrix row).
        title: the heading of ``report.md`` (e.g. the recipe and checkpoint).
    """
    out = check_report_folder(out_dir)
    make_dir(out, "report folder")
    scalars = scalar_metrics(metrics)
    write_json(out / "metrics.json", scalars)
    written, sections = [out / "metrics.json"], []
    if "confusion_matrix" in metrics:
        files, section = _segmentation(metrics, list(class_names), out)
        written += files
        sections.append(section)
    for iou_type, evaluation in (metrics.get("coco") or {}).items():
        files, section = _detection(evaluation, iou_type, out)
        written += files
        sections.append(section)
    summary = markdown_table(["metric", "value"], [[k, f"{v:.4f}"] for k, v in scalars.items() if "/" not in k or
                                                   k.rsplit("/", 1)[1] in ("AP", "AP50", "AP75", "AR100")])
    page = [f"# {title}", "", summary, "", *sections]
    write_text(out / "report.md", "\n".join(page).rstrip() + "\n")
    return [*written, out / "report.md"]


def _segmentation(metrics: Mapping[str, Any], names: list[str], out: Path) -> tuple[list[Path], str]:
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    if cm.shape != (len(names), len(names)):
        raise EvaluationError(f"write_report: confusion matrix {list(cm.shape)} for {len(names)} class names")
    rows = [{"class": name, "IoU": float(metrics["IoU"][i]), "Dice": float(metrics["Dice"][i]),
             "Acc": float(metrics["Acc"][i]), "gt_pixels": int(cm[i].sum()), "pred_pixels": int(cm[:, i].sum())}
            for i, name in enumerate(names)]
    means = (f"mIoU {_pct(metrics.get('mIoU'))} %, mDice {_pct(metrics.get('mDice'))} %, mean accuracy "
             f"{_pct(metrics.get('mean_accuracy'))} %, pixel accuracy {_pct(metrics.get('pixel_accuracy'))} %. `-`: left "
             "out of the means (a class in neither ground truth nor prediction, or the ignored class).")
    md = _write_table(rows, _SEG_COLUMNS, out / "per_class_iou", means)
    with atomic_open(out / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        writer.writerows([name, *(int(v) for v in cm[i])] for i, name in enumerate(names))
    png = plot_confusion_matrix(cm, names, out / "confusion_matrix.png")
    section = "\n".join(["## Per-class IoU", "", md, "", "## Confusion matrix", "",
                         "Counts in [confusion_matrix.csv](confusion_matrix.csv).", "",
                         "![confusion matrix](confusion_matrix.png)", ""])
    return [out / "per_class_iou.md", out / "per_class_iou.csv", out / "confusion_matrix.csv", png], section


def _detection(evaluation: CocoEvaluation, iou_type: str, out: Path) -> tuple[list[Path], str]:
    rows = evaluation.per_class()
    stats = evaluation.stats
    means = (f"All categories: AP {_pct(stats.get('AP'))} %, AP50 {_pct(stats.get('AP50'))} %, AP75 "
             f"{_pct(stats.get('AP75'))} % (area all, maxDets {evaluation.arrays.max_dets[-1]}). `-`: no ground truth.")
    stem = f"{iou_type}_per_class_ap"
    md = _write_table(rows, _DET_COLUMNS, out / stem, means)
    curves = evaluation.pr_curves()
    png = plot_pr_curves(curves["recall"], {"IoU 0.50": curves["iou50"], "mean over IoU 0.50:0.95": curves["mean"]},
                         [r["name"] for r in rows], out / f"{iou_type}_pr_curves.png", title=iou_type)
    section = "\n".join([f"## Per-class AP ({iou_type})", "", md, "", f"## Precision-recall curves ({iou_type})", "",
                         f"![{iou_type} precision-recall curves]({png.name})", ""])
    return [out / f"{stem}.md", out / f"{stem}.csv", png], section


def _defined(value: Any) -> bool:
    # NaN: a class the IoU convention leaves out; -1: COCO's "no ground truth".
    return value is not None and not (isinstance(value, float) and (math.isnan(value) or value < 0))


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if _defined(value) else "-"


def _cell(value: Any, kind: str) -> str:
    if kind == "pct":
        return _pct(value)
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (no trailing newline): ``headers`` then one line per row of already formatted cells."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _write_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]], stem: Path, note: str) -> str:
    """``stem.csv`` (fractions, empty where undefined) and ``stem.md`` (percent, ``-``); returns the Markdown."""
    with atomic_open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([key for key, _, _ in columns])
        writer.writerows([row[key] if kind != "pct" or _defined(row[key]) else "" for key, _, kind in columns]
                         for row in rows)
    md = markdown_table([header for _, header, _ in columns],
                        [[_cell(row[key], kind) for key, _, kind in columns] for row in rows]) + "\n\n" + note
    write_text(stem.with_suffix(".md"), md + "\n")
    return md
