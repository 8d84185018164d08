"""Every shipped recipe validates on images it does not train on: the real-data recipes through the split files in
configs/splits/ (built here on ../shared/data), the shapes demos through separate folders, the COCO and ImageFolder
recipes through separate train/val sources."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resdense.data import make_split
from resdense.engine import load_config
from resdense.engine.build import build_datasets

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))
SHARED = "../shared/data/"
# membrane 25 / 5 (images 0-24 / 25-29), raccoon 160 / 40.
# CamVid: the standard SegNet split, two folders (camvid/train/: 367 frames; camvid/: the 101 validation frames).
SIZES = {"membrane": (25, 5), "camvid": (367, 101), "raccoon": (160, 40)}
# Instance masks a recipe derives from a semantic mask folder (its comment says how): derived here into tmp_path.
DERIVED = {"runs/.cache/membrane_cells/masks": SHARED + "membrane/masks"}


def _sources(section: dict) -> dict:
    return {k: v for k, v in section.items() if k in ("images_dir", "masks_dir", "ann_file", "annotations_dir", "root")}


def _files(ds) -> set[str]:
    return {os.path.realpath(p) for p in ds.image_paths}


def test_recipes_are_found():
    names = {p.stem for p in RECIPES}
    assert {"unet_r18_membrane_cpu", "unet_r18_camvid_cpu", "fasterrcnn_r18_fpn_raccoon_cpu"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_train_and_val_are_disjoint(path, request, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name their data relative to the repository root
    cfg = load_config(path)
    data = cfg.data
    assert "allow_overlap" not in data, "a shipped recipe must not validate on its training images"
    if data["dataset"] == "shapes":  # separate train/ and val/ folders; made small here
        cfg = load_config(path, [f"data.shapes.root={tmp_path}", "data.shapes.n_train=6", "data.shapes.n_val=3"])
        sets = build_datasets(cfg.data, cfg.task, source=cfg.source)
        assert not _files(sets["train"]) & _files(sets["val"]) and len(sets["val"]) == 3
        return
    train, val = data["train"], data["val"]
    if not any(str(v).startswith(SHARED) for v in _sources(train).values()):
        # External data (COCO 2017, an ImageFolder): not on this machine; its train and val are other files.
        assert "split" not in train and "split" not in val
        assert set(_sources(train).values()).isdisjoint(_sources(val).values()), (train, val)
        return
    request.getfixturevalue("shared_data")  # skips, with the reason, where ../shared/data is absent
    if train.get("masks_dir") in DERIVED:
        from resdense.data import derive_instance_folder

        derived = derive_instance_folder(train["images_dir"], DERIVED[train["masks_dir"]], tmp_path / "derived")
        train, val = ({**part, "masks_dir": str(derived.masks)} for part in (train, val))
        data = {**data, "train": train, "val": val}
    for section in (train, val):
        if "split" in section:  # a split file lives beside the recipe
            split = Path(section["split"])
            assert split.is_relative_to(REPO / "configs" / "splits") and split.is_file(), split
        else:  # no split: train and val are other folders
            assert _sources(train) != _sources(val)
    sets = build_datasets(data, cfg.task, source=cfg.source)  # refuses shared images itself; checked again here
    a, b = _files(sets["train"]), _files(sets["val"])
    assert a and b and not a & b
    dataset = next(part for part in Path(next(iter(_sources(train).values()))).parts if part in SIZES)
    assert (len(a), len(b)) == SIZES[dataset]
    if dataset == "membrane":
        assert sorted(int(Path(p).stem) for p in b) == list(range(25, 30))


@pytest.mark.parametrize("dataset,args", [("raccoon", {})])
def test_committed_split_files_are_the_tools_output(dataset, args, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    make_split(SHARED + dataset, val=0.2, seed=0, **args).write(tmp_path)
    for name in ("train.txt", "val.txt"):
        assert (tmp_path / name).read_text() == (REPO / "configs" / "splits" / dataset / name).read_text()
