"""``resdense new``: a recipe from a user's own folder -> ``train`` -> ``eval``, with folders named as users name
them; and split files that a copied recipe still finds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from resdense.cli import main
from resdense.engine import load_config
from resdense.errors import DataError

QUICK = ["--set", "train.iterations=2", "--set", "train.max_minutes=null", "--set", "train.schedule_by=iterations", "--set", "train.batch_size=2",
         "--set", "eval.every_iters=0", "--set", "train.progress=false"]


def _mask_folder(root: Path, images: str, masks: str, n: int = 10, suffix: str = ".jpg") -> None:
    rng = np.random.default_rng(0)
    (root / images).mkdir(parents=True)
    (root / masks).mkdir(parents=True)
    for i in range(n):
        img = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
        m = np.zeros((70, 90), np.uint8)
        m[10:40, 20:60] = 1 + i % 2
        m[:3] = 255  # a band of "don't care"
        Image.fromarray(img).save(root / images / f"frame {i:03d}{suffix}")
        Image.fromarray(m).save(root / masks / f"frame {i:03d}.png")


def _train_and_eval(recipe: Path, capsys, run: Path) -> dict:
    assert main(["train", str(recipe), "--out", str(run), *QUICK]) == 0
    capsys.readouterr()
    assert main(["eval", str(recipe), "--checkpoint", str(run / "last.pt"), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_segmentation_from_folders_named_otherwise(tmp_path, capsys, monkeypatch):
    data = tmp_path / "my data"
    _mask_folder(data, "test", "testannot_png")
    (data / "classes.txt").write_text("sky\nroad\ncar\n")
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipes" / "mine.yaml"
    assert main(["new", "segmentation", "--images", str(data / "test"), "--masks", str(data / "testannot_png"),
                 "--out", str(recipe)]) == 0
    printed = capsys.readouterr().out
    assert "3 classes (sky, road, car)" in printed and "255" in printed
    cfg = load_config(recipe)
    train, val = cfg.data["train"], cfg.data["val"]
    assert train["classes"] == ["sky", "road", "car"] and train["ignore_index"] == 255
    assert cfg.data["train_transforms"]["ignore_index"] == 255
    names = [Path(train["split"]).read_text().splitlines(), Path(val["split"]).read_text().splitlines()]
    assert Path(train["split"]).is_absolute() and Path(train["split"]).parent == tmp_path / "recipes" / "mine_splits"
    listed = [[n for n in ns if n and not n.startswith("#")] for ns in names]
    assert len(listed[0]) == 8 and len(listed[1]) == 2 and not set(listed[0]) & set(listed[1])
    metrics = _train_and_eval(recipe, capsys, tmp_path / "run")
    assert 0.0 <= metrics["mIoU"] <= 1.0
    # the recipe, copied elsewhere, still trains: its split files are named by absolute path
    copy = tmp_path / "elsewhere" / "copy.yaml"
    copy.parent.mkdir()
    shutil.copy(recipe, copy)
    assert load_config(copy).data["train"]["split"] == train["split"]


def test_segmentation_from_segnet_folders_uses_their_split(tmp_path, capsys):
    data = tmp_path / "CamVid"
    _mask_folder(data, "train", "trainannot", n=6, suffix=".png")
    _mask_folder(data, "val", "valannot", n=4, suffix=".png")
    recipe = tmp_path / "camvid.yaml"
    assert main(["new", "segmentation", str(data), "--out", str(recipe)]) == 0
    assert "the data's own folders" in capsys.readouterr().out
    cfg = load_config(recipe)
    assert cfg.data["train"]["images_dir"] == str((data / "train").resolve()) and "split" not in cfg.data["train"]
    assert cfg.data["val"]["masks_dir"] == str((data / "valannot").resolve())
    assert not (tmp_path / "camvid_splits").exists()
    _train_and_eval(recipe, capsys, tmp_path / "run")


def test_binary_masks_become_two_classes(tmp_path, capsys):
    data = tmp_path / "cells"
    _mask_folder(data, "images", "masks", n=6)
    for p in (data / "masks").iterdir():
        m = np.asarray(Image.open(p)).copy()
        Image.fromarray(np.where(m == 1, 255, 0).astype(np.uint8)).save(p)
    recipe = tmp_path / "cells.yaml"
    assert main(["new", "segmentation", str(data), "--out", str(recipe)]) == 0
    cfg = load_config(recipe)
    assert cfg.data["train"]["value_map"] == {0: 0, 255: 1} and cfg.model["num_classes"] == 2


def test_detection_from_a_coco_file(tmp_path, capsys):
    from resdense.data import make_shapes

    shapes = make_shapes(tmp_path / "shapes", n_train=10, n_val=2, size=64, seed=0)
    odd = tmp_path / "exports" / "annotations (final).json"
    odd.parent.mkdir()
    shutil.copy(shapes.train.instances, odd)
    recipe = tmp_path / "det.yaml"
    assert main(["new", "detection", str(odd), "--images", str(shapes.train.images), "--out", str(recipe)]) == 2
    assert "--images / --masks name a mask folder" in capsys.readouterr().err
    shutil.copytree(shapes.train.images, odd.parent / "images")
    assert main(["new", "detection", str(odd), "--out", str(recipe)]) == 0
    cfg = load_config(recipe)
    assert cfg.task == "detection" and cfg.data["dataset"] == "coco"
    categories = [c["name"] for c in json.loads(odd.read_text())["categories"]]
    assert "classes (" + ", ".join(categories) + ")" in capsys.readouterr().out
    assert cfg.data["train"]["images_dir"] == str((odd.parent / "images").resolve())
    metrics = _train_and_eval(recipe, capsys, tmp_path / "run")
    assert "bbox/AP" in metrics


def test_detection_from_a_voc_folder(tmp_path, capsys):
    """VOC sizes are text: the median of an even number of them is taken of numbers."""
    voc = tmp_path / "voc"
    (voc / "images").mkdir(parents=True)
    (voc / "annotations").mkdir()
    for i, (w, h) in enumerate([(64, 48), (80, 64), (96, 64), (72, 56)]):
        Image.new("RGB", (w, h)).save(voc / "images" / f"{i}.jpg")
        size = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
        (voc / "annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename>{size}<object><name>thing</name><bndbox><xmin>5</xmin>"
            f"<ymin>5</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object></annotation>")
    assert main(["new", "detection", str(voc), "--out", str(tmp_path / "det.yaml")]) == 0
    assert "classes (thing)" in capsys.readouterr().out
    assert load_config(tmp_path / "det.yaml").data["dataset"] == "voc"


def test_no_data_found_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["new", "segmentation", str(tmp_path / "empty"), "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "found no mask folder (" in err and "--images DIR --masks DIR" in err
    with pytest.raises(DataError):
        from resdense.engine.scaffold import new_recipe

        new_recipe("segmentation", tmp_path / "empty", tmp_path / "x.yaml")


def test_a_copied_shipped_recipe_keeps_its_split_files(tmp_path):
    from resdense.recipes import shipped_recipes_dir

    shipped = shipped_recipes_dir() / "unet_r18_membrane_cpu.yaml"
    copy = tmp_path / "my_membrane.yaml"
    shutil.copy(shipped, copy)
    raw = yaml.safe_load(copy.read_text())
    cfg = load_config(copy)  # the split files are found in the shipped recipes' folder
    assert Path(cfg.data["train"]["split"]) == shipped.parent / raw["data"]["train"]["split"]
    # a split file beside the copy wins
    (tmp_path / "splits" / "membrane").mkdir(parents=True)
    (tmp_path / "splits" / "membrane" / "train.txt").write_text("0.png\n")
    assert Path(load_config(copy).data["train"]["split"]) == tmp_path / "splits" / "membrane" / "train.txt"
