"""`resdense eval RECIPE --checkpoint C --out DIR` end to end: tiny shapes recipes trained for 2 iterations, then
the report folder: files present, PNGs readable, one table row per class of the run, numbers equal to --json's."""

from __future__ import annotations

import csv
import json
import math

import pytest
from PIL import Image

from resdense.cli import main
from resdense.engine import load_model
from tests.engine.recipes import det_recipe, seg_recipe, write


def _train(tmp_path_factory, name: str, recipe) -> tuple:
    tmp = tmp_path_factory.mktemp(name)
    cfg = write(recipe(tmp / "shapes", tmp / "run", iterations=2), tmp / f"{name}.yaml")
    assert main(["train", str(cfg), "--set", "eval.every_iters=0"]) == 0
    return cfg, tmp / "run" / "last.pt", tmp


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _is_png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()  # decodes the whole file, not only its header
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return _train(tmp_path_factory, "seg", seg_recipe)


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    return _train(tmp_path_factory, "det", det_recipe)


def test_segmentation_eval_writes_a_report(seg, capsys):
    cfg, ckpt, tmp = seg
    capsys.readouterr()
    out = tmp / "report"
    assert main(["eval", str(cfg), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out}/report.md" in printed and "mean" in printed  # the table is still printed
    for name in ("metrics.json", "report.md", "per_class_iou.md", "per_class_iou.csv", "confusion_matrix.csv",
                 "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert min(_is_png(out / "confusion_matrix.png")) > 100
    class_names = load_model(ckpt)[1].class_names
    assert len(class_names) >= 2
    rows = _rows(out / "per_class_iou.csv")
    assert [r["class"] for r in rows] == class_names  # one row per class, named as in the run
    metrics = json.loads((out / "metrics.json").read_text())
    ious = [float(r["IoU"]) for r in rows if r["IoU"]]
    assert metrics["mIoU"] == pytest.approx(sum(ious) / len(ious), rel=1e-12)
    for r in rows:
        iou = metrics[f"IoU/{r['class']}"]
        assert (r["IoU"] == "") if math.isnan(iou) else float(r["IoU"]) == iou
    # the confusion matrix counts every non-ignored validation pixel (4 images of 64 x 64 in the tiny recipe)
    with open(out / "confusion_matrix.csv", newline="") as f:
        counts = [[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]]
    assert len(counts) == len(class_names) and sum(map(sum, counts)) == sum(int(r["gt_pixels"]) for r in rows)
    assert main(["eval", str(cfg), "--checkpoint", str(ckpt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == metrics


def test_detection_eval_writes_a_report(det, capsys):
    cfg, ckpt, tmp = det
    capsys.readouterr()
    out = tmp / "report"
    assert main(["eval", str(cfg), "--checkpoint", str(ckpt), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # --json output stays pure JSON
    for name in ("metrics.json", "report.md", "bbox_per_class_ap.md", "bbox_per_class_ap.csv", "bbox_pr_curves.png"):
        assert (out / name).is_file(), name
    width, height = _is_png(out / "bbox_pr_curves.png")
    assert width > height > 100
    rows = _rows(out / "bbox_per_class_ap.csv")
    class_names = load_model(ckpt)[1].class_names
    assert len(rows) == len(class_names) and {r["name"] for r in rows} == set(class_names)
    assert json.loads((out / "metrics.json").read_text()) == printed
    defined = [float(r["AP"]) for r in rows if r["AP"]]
    if defined:  # the overall AP is the mean of the per-class APs of categories with ground truth
        assert printed["bbox/AP"] == pytest.approx(sum(defined) / len(defined), abs=1e-12)
    report = (out / "report.md").read_text()
    assert "![bbox precision-recall curves](bbox_pr_curves.png)" in report
    assert sum(line.startswith("| ") for line in (out / "bbox_per_class_ap.md").read_text().splitlines()) == \
        1 + len(class_names)


def test_out_that_is_a_file_is_one_line_and_exit_code_2(seg, capsys):
    cfg, ckpt, tmp = seg
    (tmp / "taken").write_text("")
    assert main(["eval", str(cfg), "--checkpoint", str(ckpt), "--out", str(tmp / "taken")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the report folder is a file" in err[0]
