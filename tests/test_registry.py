"""The registry: every name a recipe holds in ``model.arch`` / ``data.dataset`` is a registered entry, and a user's
module named in a recipe's ``imports:`` adds architectures and datasets the library has never seen, which the CLI
then trains, resumes, evaluates and predicts with (tests/extension_toy.py is that module)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import resdense
from resdense.cli import main
from resdense.engine import config_from_dict, load_config
from resdense.errors import ConfigError
from resdense.registry import ARCHITECTURES, DATASETS

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).with_name("extension_toy.py")


def toy_recipe(tmp: Path, imports: list[str], **train) -> dict:
    return {
        "imports": imports,
        "model": {"arch": "toy_segnet", "width": 8},
        "data": {"dataset": "toy_squares",
                 "train": {"root": str(tmp / "data" / "train"), "n": 8},
                 "val": {"root": str(tmp / "data" / "val"), "n": 4, "seed": 1},
                 "train_transforms": {"size": None, "color_jitter": 0.0},
                 "val_transforms": {"size": None}},
        "train": {"output_dir": str(tmp / "run"), "iterations": 4, "batch_size": 4, "lr": 0.01, "log_every": 1,
                  "loggers": ["csv"], "progress": False, **train},
        "eval": {"every_iters": 2, "batch_size": 4},
    }


def write(recipe: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def resdense_cli(*args: str, cwd: Path) -> str:
    """``python -m resdense ARGS`` in a fresh process (so the user's module is imported again, as in a new shell)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "resdense", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, f"resdense {' '.join(args)} exited {out.returncode}:\n{out.stdout[-3000:]}\n" \
                                f"{out.stderr[-3000:]}"
    return out.stdout


def test_the_shipped_names_are_registered_once_with_what_their_consumers_need():
    from resdense.heads import KINDS, smp_architectures

    assert {"unet", "classifier", *KINDS, *(f"smp.{a}" for a in smp_architectures())} == set(ARCHITECTURES)
    assert set(DATASETS) == {"mask", "coco_semantic", "coco", "voc", "instance_masks", "imagefolder", "shapes"}
    assert [ARCHITECTURES.get(k).task for k in ("unet", "classifier", "fcos")] == [
        "segmentation", "classification", "detection"]
    assert ARCHITECTURES.get("smp.Unet").classes_key == "classes" and ARCHITECTURES.get("unet").classes_key == "num_classes"
    assert "pt2" not in ARCHITECTURES.get("mask_rcnn").exports and "pt2" in ARCHITECTURES.get("unet").exports
    assert DATASETS.get("shapes").tasks == ("segmentation", "detection")
    # smp's names keep their case-insensitive spelling in recipes
    cfg = config_from_dict({"model": {"arch": "smp.deeplabv3plus", "backbone": "resnet18", "classes": 4,
                                      "decoder_channels": 16},
                            "data": {"dataset": "mask"}, "train": {"iterations": 1}})
    assert cfg.task == "segmentation"
    with pytest.raises(ConfigError, match="already registered"):
        resdense.register_architecture("unet", ARCHITECTURES.get("unet").builder, task="segmentation")


def test_a_registered_backbone_is_a_name_of_create_backbone_and_of_the_heads():
    from resdense.backbones import ResNet, create_backbone, list_backbones
    from resdense.backbones.blocks import BasicBlock
    from resdense.registry import BACKBONES

    def slim18(**kwargs):  # a user's factory: any FeatureExtractor, here a narrow ResNet-18
        kwargs.pop("weights", None)
        return ResNet(BasicBlock, (1, 1, 1, 1), **kwargs)

    assert set(BACKBONES) >= {"resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"}
    resdense.register_backbone("slim18", slim18)
    try:
        assert "slim18" in list_backbones()
        assert len(create_backbone("slim18").layer1) == 1
        unet = resdense.UNet("slim18", num_classes=3, decoder_channels=(16, 16, 16, 16, 16))
        assert unet(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
        with pytest.raises(ConfigError, match="already registered"):
            resdense.register_backbone("slim18", slim18)
    finally:
        BACKBONES.remove("slim18")
    with pytest.raises(ConfigError, match="unknown backbone 'slim18'"):
        create_backbone("slim18")


def test_the_task_comes_from_the_architecture_when_the_recipe_leaves_it_out(tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "demo_shapes_frcnn_r18_fpn.yaml").read_text())
    del raw["task"]
    assert load_config(write(raw, tmp_path / "no_task.yaml")).task == "detection"
    raw["task"] = "segmentation"
    with pytest.raises(ConfigError, match=r"mixed\.yaml: task = 'segmentation' but model\.arch = 'faster_rcnn' is a "
                                          r"detection architecture"):
        load_config(write(raw, tmp_path / "mixed.yaml"))


def test_a_registered_architecture_and_dataset_are_recipe_names_with_their_keys_checked(tmp_path):
    path = write(toy_recipe(tmp_path, ["tests.extension_toy"]), tmp_path / "toy.yaml")
    cfg = load_config(path)
    assert cfg.task == "segmentation" and "toy_segnet" in ARCHITECTURES and "toy_squares" in DATASETS
    assert (cfg.eval.metric, cfg.eval.mode) == ("mDice", "max")  # the architecture's default metric
    assert cfg.imports_from == str(tmp_path) and cfg.to_dict()["imports"] == ["tests.extension_toy"]
    with pytest.raises(ConfigError, match=r"toy\.yaml \(with --set model\.widht=4\): unknown key 'model\.widht' \(did you mean 'width'"):
        load_config(path, ["model.widht=4"])
    with pytest.raises(ConfigError, match=r"toy\.yaml \(with --set data\.train\.n=many\): data\.train\.n = 'many' is not an int"):
        load_config(path, ["data.train.n=many"])


@pytest.mark.parametrize("key,value,close,shipped", [
    ("model.arch", "toy_segnett", "toy_segnet", "unet"),
    ("data.dataset", "toy_square", "toy_squares", "coco"),
])
def test_an_unknown_name_names_the_recipe_the_key_and_the_registered_names(tmp_path, key, value, close, shipped):
    path = write(toy_recipe(tmp_path, ["tests.extension_toy"]), tmp_path / "toy.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(path, [f"{key}={value}"])
    msg = str(err.value)
    assert str(path) in msg and f"{key} = {value!r}" in msg and f"did you mean {close!r}" in msg
    assert shipped in msg and close in msg and "\n" not in msg


def test_a_module_that_cannot_be_imported_is_one_line_naming_the_recipe_and_the_module(tmp_path, capsys):
    (tmp_path / "broken_toys.py").write_text("import resdense\nraise RuntimeError('no GPU\\nat all')\n")
    for module, why in (("no_such_toys", "ModuleNotFoundError"), ("broken_toys", "RuntimeError: no GPU")):
        path = write(toy_recipe(tmp_path, [module]), tmp_path / f"{module}.yaml")
        with pytest.raises(ConfigError) as err:
            load_config(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: imports: cannot import {module!r}") and why in msg and "\n" not in msg
        assert main(["train", str(path)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "imports" in lines[0] and module in lines[0]
    with pytest.raises(ConfigError, match=r"imports = 'tests\.extension_toy' must be a list of module names"):
        resdense.load_config(write({**toy_recipe(tmp_path, []), "imports": "tests.extension_toy"}, tmp_path / "s.yaml"))


def test_resdense_list_shows_the_registrations_of_a_users_module(tmp_path):
    shutil.copy(TOY, tmp_path / "my_toys.py")
    out = resdense_cli("list", "--imports", "my_toys", cwd=tmp_path)
    sections = {}
    for line in out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = sections.setdefault(line[:-1], [])
        elif line.strip():
            current.append(line.split()[0])
    assert {"toy_segnet", "unet", "mask_rcnn"} <= set(sections["heads"])
    assert {"toy_squares", "mask"} <= set(sections["datasets"])
    assert sections["hooks"] == ["toy_steps"]  # the shipped hooks come from train keys, not names
    assert resdense_cli("list", "hooks", cwd=tmp_path).strip() == "hooks:"
    with pytest.raises(AssertionError, match="cannot import 'nowhere_toys'"):
        resdense_cli("list", "--imports", "nowhere_toys", cwd=tmp_path)


def test_what_a_detector_is_scored_on_and_rebuilt_with_comes_from_its_entry(tmp_path):
    """A user's detector registered with ``iou_types=("bbox", "segm")`` is scored on masks as Mask R-CNN is, and
    ``pretrained_norm`` is the norm its checkpoint is rebuilt with when the recipe downloaded weights."""
    from resdense.engine.build import build_task
    from resdense.engine.loading import _build_for_checkpoint
    from resdense.heads import build_detector

    seen = []

    def my_detector(num_classes: int = 2, norm: str | None = None, weights_backbone: str | None = None):
        seen.append(norm)
        return build_detector("mask_rcnn", num_classes=num_classes, backbone="resnet18", norm=norm or "bn",
                              min_size=64, max_size=64)

    resdense.register_architecture("my_instances", my_detector, task="detection", iou_types=("bbox", "segm"),
                                   pretrained_norm="frozen_bn")
    try:
        cfg = config_from_dict({"model": {"arch": "my_instances", "num_classes": 2},
                                "data": {"dataset": "coco"}, "train": {"iterations": 1}})
        assert build_task("detection", ["a", "b"], cfg).iou_types == ("bbox", "segm")
        assert ARCHITECTURES.get("faster_rcnn").iou_types == ("bbox",)
        assert ARCHITECTURES.get("mask_rcnn").iou_types == ("bbox", "segm")
        _build_for_checkpoint({"arch": "my_instances", "num_classes": 2, "weights_backbone": "imagenet"}, "t.yaml")
        _build_for_checkpoint({"arch": "my_instances", "num_classes": 2}, "t.yaml")
        assert seen == ["frozen_bn", None]
    finally:
        ARCHITECTURES.remove("my_instances")


@pytest.mark.slow
def test_the_cli_trains_resumes_evaluates_and_predicts_a_model_the_library_never_saw(tmp_path):
    recipes, elsewhere = tmp_path / "recipes", tmp_path / "elsewhere"
    elsewhere.mkdir()
    recipes.mkdir()
    shutil.copy(TOY, recipes / "my_toys.py")  # a module beside the recipe, as a user keeps one
    recipe = write(toy_recipe(tmp_path, ["my_toys"], hooks=["toy_steps"]), recipes / "toy.yaml")
    run = tmp_path / "run"

    printed = json.loads(resdense_cli("train", str(recipe), cwd=elsewhere))
    assert printed["metric"] == "mDice" and "mDice" in printed["final"]
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["imports"] == ["my_toys"] and resolved["imports_from"] == str(recipes)
    assert resolved["model"] == {"arch": "toy_segnet", "width": 8} and resolved["task"] == "segmentation"

    resdense_cli("train", str(recipe), "--set", "train.iterations=6", cwd=elsewhere)  # resumes from last.pt
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iterations"] == 6 and metrics["best"]["mode"] == "max"
    steps = [int(row.split(",")[0]) for row in (run / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 7))  # 4 iterations, then 2 more: continued, not restarted
    assert (run / "steps.txt").read_text() == "6"  # the user's hook: its count restored from last.pt, then 2 more

    # the run's own config.yaml, from another folder: the module is imported again from beside the recipe
    other = tmp_path / "other"
    other.mkdir()
    scored = json.loads(resdense_cli("eval", str(run / "config.yaml"), "--checkpoint", str(run / "last.pt"),
                                     "--json", cwd=other))
    assert scored["mDice"] == pytest.approx(metrics["final"]["mDice"], abs=1e-6)
    image = tmp_path / "data" / "val" / "images" / "000.png"
    written = resdense_cli("predict", str(run / "config.yaml"), str(image), "--checkpoint", str(run / "best.pt"),
                           "--out", str(tmp_path / "pred"), cwd=other).split()
    assert written == [str(tmp_path / "pred" / "000.png")] and Path(written[0]).stat().st_size > 0
