"""A recipe whose training and validation sets share images is refused when its datasets are built, naming the
count and the first shared images; ``data.allow_overlap: true`` permits it."""

from __future__ import annotations

import pytest

from resdense.cli import main
from resdense.engine import load_config
from resdense.engine.runner import build_run
from resdense.errors import ConfigError
from tests.data.conftest import make_mask_folder

from .recipes import write


def _recipe(tmp_path, train: dict, val: dict, **data) -> dict:
    images, masks = make_mask_folder(tmp_path / "d", [[0, 1]] * 10)
    base = {"images_dir": str(images), "masks_dir": str(masks), "classes": 2}
    return {
        "task": "segmentation",
        "model": {"arch": "unet", "backbone": "resnet18", "decoder_channels": [8, 8, 8, 8, 8]},
        "data": {"dataset": "mask", "train": {**base, **train}, "val": {**base, **val},
                 "train_transforms": None, "val_transforms": None, **data},
        "train": {"output_dir": str(tmp_path / "run"), "iterations": 1, "batch_size": 2},
        "eval": {"batch_size": 2},
    }


def _split(tmp_path, name: str, indices) -> str:
    path = tmp_path / f"{name}.txt"
    path.write_text("".join(f"{i:03d}\n" for i in indices))
    return str(path)


def test_shared_images_refused_with_count_and_first_names(tmp_path):
    raw = _recipe(tmp_path, {"split": _split(tmp_path, "train", range(7))},
                  {"split": _split(tmp_path, "val", range(5, 10))})
    path = write(raw, tmp_path / "overlap.yaml")
    with pytest.raises(ConfigError) as err:
        build_run(load_config(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: data.train and data.val share 2 image(s) (2 of the 5 validation images are "
                          "training images: 005.png, 006.png); ")
    assert "data.allow_overlap: true" in msg and "\n" not in msg


def test_one_folder_for_both_is_refused_and_the_cli_says_so_in_one_line(tmp_path, capsys):
    path = write(_recipe(tmp_path, {}, {}), tmp_path / "same.yaml")
    with pytest.raises(ConfigError, match=r"share 10 image\(s\) \(10 of the 10 validation images .*: 000\.png, "
                                          r"001\.png, 002\.png, 003\.png, 004\.png, \.\.\.\)"):
        build_run(load_config(path))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resdense train: error: ") and "share 10 image(s)" in err and "\n" not in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_same_folder_spelled_differently_is_still_the_same_images(tmp_path):
    raw = _recipe(tmp_path, {}, {})
    raw["data"]["val"]["images_dir"] = str(tmp_path / "d" / ".." / "d" / "images")
    (tmp_path / "link").symlink_to(tmp_path / "d", target_is_directory=True)
    raw["data"]["train"]["images_dir"] = str(tmp_path / "link" / "images")
    with pytest.raises(ConfigError, match=r"share 10 image\(s\)"):
        build_run(load_config(write(raw, tmp_path / "x.yaml")))


def test_allow_overlap_permits_it(tmp_path):
    raw = _recipe(tmp_path, {"split": _split(tmp_path, "train", range(7))},
                  {"split": _split(tmp_path, "val", range(5, 10))}, allow_overlap=True)
    run = build_run(load_config(write(raw, tmp_path / "smoke.yaml")))
    assert len(run.train_set) == 7 and len(run.val_set) == 5


def test_disjoint_splits_build(tmp_path):
    raw = _recipe(tmp_path, {"split": _split(tmp_path, "train", range(7))},
                  {"split": _split(tmp_path, "val", range(7, 10))})
    run = build_run(load_config(write(raw, tmp_path / "ok.yaml")))
    assert [p.name for p in run.val_set.image_paths] == ["007.png", "008.png", "009.png"]
    assert not {p.name for p in run.train_set.image_paths} & {p.name for p in run.val_set.image_paths}


def test_allow_overlap_is_a_known_boolean_key(tmp_path):
    path = write(_recipe(tmp_path, {}, {}), tmp_path / "x.yaml")
    assert load_config(path, ["data.allow_overlap=true"]).data["allow_overlap"] is True
    with pytest.raises(ConfigError, match=r"data\.allow_overlap = 'sure' is not a bool$"):
        load_config(path, ["data.allow_overlap=sure"])
    with pytest.raises(ConfigError, match=r"unknown key 'data\.allow_overlaps' \(did you mean 'allow_overlap'\?\)"):
        load_config(path, ["data.allow_overlaps=true"])
