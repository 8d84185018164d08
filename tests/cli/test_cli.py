"""Every subcommand on tiny recipes (64 px shapes, a few iterations), and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from resdense.cli import main
from tests.engine.recipes import det_recipe, seg_recipe, write


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    cfg = write(seg_recipe(tmp / "shapes", tmp / "run", iterations=4), tmp / "seg.yaml")
    assert main(["train", str(cfg)]) == 0
    return cfg, tmp / "run"


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    cfg = write(det_recipe(tmp / "shapes", tmp / "run", iterations=3), tmp / "det.yaml")
    assert main(["train", str(cfg), "--set", "eval.every_iters=0"]) == 0
    return cfg, tmp / "run"


def test_train_writes_the_run_directory(seg_run, capsys):
    cfg, run = seg_run
    for name in ("config.yaml", "log.csv", "eval.csv", "last.pt", "best.pt", "metrics.json", "curves.png"):
        assert (run / name).exists(), name
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["iterations"] == 4 and resolved["train"]["optimizer"] == "adamw"
    assert json.loads((run / "metrics.json").read_text())["metric"] == "mIoU"


def test_train_set_override_and_out(seg_run, tmp_path, capsys):
    cfg, _ = seg_run
    assert main(["train", str(cfg), "--out", str(tmp_path / "o"), "--set", "train.iterations=2",
                 "--set", "eval.every_iters=0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metric"] == "mIoU" and "mIoU" in printed["final"]
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["iterations"] == 2


def test_eval_prints_the_table_and_json(seg_run, capsys):
    cfg, run = seg_run
    assert main(["eval", str(cfg), "--checkpoint", str(run / "last.pt")]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "background" in out and "triangle" in out
    assert main(["eval", str(cfg), "--checkpoint", str(run / "last.pt"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    stored = json.loads((run / "metrics.json").read_text())["final"]
    assert metrics["mIoU"] == pytest.approx(stored["mIoU"], abs=1e-9)  # same weights, same data, same score


def test_predict_writes_segmentation_overlays(seg_run, tmp_path, capsys):
    cfg, run = seg_run
    images = sorted((run.parent / "shapes" / "val" / "images").glob("*.jpg"))[:2]
    assert main(["predict", str(cfg), *map(str, images), "--checkpoint", str(run / "best.pt"),
                 "--out", str(tmp_path / "pred")]) == 0
    pngs = sorted((tmp_path / "pred").glob("*.png"))
    assert [p.stem for p in pngs] == [p.stem for p in images]
    pic = np.asarray(Image.open(pngs[0]))
    assert pic.shape[0] >= 64 and pic.shape[1] > 64  # the image plus its legend strip


def test_detection_eval_and_predict(det_run, tmp_path, capsys):
    cfg, run = det_run
    assert main(["eval", str(cfg), "--checkpoint", str(run / "last.pt"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"bbox/AP", "bbox/AP50", "bbox/AR100"} <= set(metrics)
    images = sorted((run.parent / "shapes" / "val" / "images").glob("*.jpg"))[:2]
    gt = run.parent / "shapes" / "val" / "instances.json"
    assert main(["predict", str(cfg), *map(str, images), "--checkpoint", str(run / "last.pt"), "--out",
                 str(tmp_path / "p"), "--score-threshold", "0.0", "--json", str(tmp_path / "p" / "dets.json"),
                 "--coco", str(gt), "--set", "model.box_score_thresh=0.0"]) == 0
    assert all((tmp_path / "p" / f"{image.stem}.png").exists() for image in images)
    # COCO results with the ground truth's ids (by file name and class name), which pycocotools reads and scores
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = json.loads((tmp_path / "p" / "dets.json").read_text())
    truth = json.loads(gt.read_text())
    ids = {im["file_name"]: im["id"] for im in truth["images"]}
    assert results and {r["image_id"] for r in results} == {ids[im.name] for im in images}
    assert {r["category_id"] for r in results} <= {c["id"] for c in truth["categories"]}
    coco = COCO(str(gt))
    ev = COCOeval(coco, coco.loadRes(str(tmp_path / "p" / "dets.json")), "bbox")
    ev.params.imgIds = sorted(ids[im.name] for im in images)
    ev.evaluate()
    ev.accumulate()
    assert ev.eval["precision"].shape[2] == len(truth["categories"])
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(images[0].read_bytes())
    assert main(["predict", str(cfg), str(elsewhere), "--checkpoint", str(run / "last.pt"), "--out",
                 str(tmp_path / "q"), "--json", str(tmp_path / "q.json"), "--coco", str(gt)]) == 2
    assert "no file_name 'elsewhere.jpg'" in capsys.readouterr().err and not (tmp_path / "q.json").exists()


def test_classify_and_classifier_training(tmp_path, capsys):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, channel in (("red", 0), ("blue", 2)):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(4):
                img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                img[..., channel] = 220
                Image.fromarray(img).save(d / f"{i}.png")
    recipe = {
        "task": "classification",
        "model": {"arch": "classifier", "backbone": "resnet18", "freeze_backbone": False},
        "data": {"dataset": "imagefolder", "train": {"root": str(root / "train")}, "val": {"root": str(root / "val")},
                 "train_transforms": {"size": 32, "scale": [0.5, 1.0]}, "val_transforms": {"size": 32, "resize": 32}},
        "train": {"output_dir": str(tmp_path / "run"), "iterations": 3, "batch_size": 4},
        "eval": {"batch_size": 8},
    }
    cfg = write(recipe, tmp_path / "cls.yaml")
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["classify", str(root / "val" / "red" / "0.png"), "--checkpoint", str(tmp_path / "run" / "last.pt")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("1. ") and {ln.split()[1] for ln in lines} == {"red", "blue"}
    assert sum(float(ln.split()[-1].rstrip("%")) for ln in lines) == pytest.approx(100, abs=0.05)


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for needle in ("backbones:", "resnet50", "heads:", "faster_rcnn", "unet", "configs:", "demo_shapes_unet_r18"):
        assert needle in out
    assert main(["list", "configs"]) == 0
    assert "resnet50" not in capsys.readouterr().out.split("configs:")[0]


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    sets = ["train.iterations=2", "eval.every_iters=0", "data.shapes.n_train=8", "data.shapes.n_val=2",
            "data.shapes.size=64"]
    args = ["demo", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "| segmentation |" in report and "| detection |" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"segmentation", "detection"}
    for rel in metrics["tasks"]["segmentation"]["pictures"] + metrics["tasks"]["detection"]["pictures"]:
        assert (out / rel).exists()
    assert (out / "segmentation" / "curves.png").exists() and (out / "detection" / "curves.png").exists()
    # the evaluation reports: per-class tables embedded, their pictures linked and on disk
    for task, table, picture in (("segmentation", "per_class_iou.md", "confusion_matrix.png"),
                                 ("detection", "bbox_per_class_ap.md", "bbox_pr_curves.png")):
        assert (out / task / "report" / table).read_text().strip() in report
        assert f"]({task}/report/{picture})" in report and (out / task / "report" / picture).is_file()


@pytest.mark.parametrize("argv,needle", [
    (["train", "{cfg}", "--set", "train.lrr=1"], "unknown key 'train.lrr'"),
    (["train", "{cfg}", "--set", "train.lr=fast"], "train.lr = 'fast' is not a float"),
    (["train", "{missing}"], "config file not found"),
    (["eval", "{cfg}", "--checkpoint", "{missing}"], "checkpoint not found"),
    (["classify", "{missing}", "--checkpoint", "{missing}"], "image file not found"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, needle):
    cfg = write(seg_recipe(tmp_path / "shapes", tmp_path / "run"), tmp_path / "x.yaml")
    argv = [a.format(cfg=cfg, missing=tmp_path / "missing.pt") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith(f"resdense {argv[0]}: error: ")


def test_bad_config_file_names_the_file(tmp_path, capsys):
    raw = seg_recipe(tmp_path / "shapes", tmp_path / "run")
    raw["model"]["decoder_chanels"] = [8, 8]
    cfg = write(raw, tmp_path / "typo.yaml")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{cfg}: unknown key 'model.decoder_chanels' (did you mean 'decoder_channels'?)" in err


def test_training_stopped_by_sigterm_exits_143_with_one_line(tmp_path):
    """A real SIGTERM to a real ``resdense train`` (test_faults.py does Ctrl-C and the exact resume)."""
    import signal
    import subprocess
    import sys
    import time

    cfg = write(seg_recipe(tmp_path / "shapes", tmp_path / "run", iterations=40), tmp_path / "x.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "resdense", "train", str(cfg)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    log_csv, deadline = tmp_path / "run" / "log.csv", time.monotonic() + 300
    while (not log_csv.exists() or len(log_csv.read_text().splitlines()) < 3) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]  # 128 + SIGTERM, as a shell reports a signal
    last = tmp_path / "run" / "last.pt"
    assert re.fullmatch(rf"resdense train: error: SIGTERM received: stopped after iteration \d+ of 40, "
                        rf"{re.escape(str(last))} holds it; the same command resumes from there",
                        err.strip().splitlines()[-1])
    assert "Traceback" not in err


def test_a_stop_raised_on_every_rank_is_printed_by_rank_0_alone(capsys, monkeypatch):
    import resdense.engine
    from resdense.errors import TrainingInterrupted

    def preempted(*args, **kwargs):
        raise TrainingInterrupted("SIGTERM received: stopped after iteration 4 of 8, runs/x/last.pt holds it")

    monkeypatch.setattr(resdense.engine, "run_training", preempted)
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "anything.yaml"]) == 143
    assert capsys.readouterr().err == ""
