"""Packages (``resdense export CKPT --format package``): what they hold, the round trip (the same metrics and the same
predictions as the checkpoint, with no checkpoint and no ``torch.load``), one-line refusals of bad packages, and the
CLI commands on them. Tiny recipes: 64 px shapes, a few iterations."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from resdense.cli import main
from resdense.data import IMAGENET_MEAN, IMAGENET_STD
from resdense.engine import load_checkpoint, run_evaluation, run_training
from resdense.errors import ConfigError, WeightsError
from resdense.export import export_package
from resdense.inference import Predictor

from ..engine.recipes import det_recipe, seg_recipe, write

FILES = {"model.safetensors", "config.yaml", "resdense.json", "README.md"}


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """A trained segmentation run that kept a weight average, and its package."""
    tmp = tmp_path_factory.mktemp("seg")
    recipe = write(seg_recipe(tmp / "shapes", tmp / "run", progress=False, ema_decay=0.5, iterations=3), tmp / "seg.yaml")
    run_training(recipe)
    export_package(tmp / "run" / "best.pt", tmp / "pkg")
    return recipe, tmp


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    recipe = write(det_recipe(tmp / "shapes", tmp / "run", progress=False, iterations=2), tmp / "det.yaml")
    run_training(recipe)
    return recipe, tmp


def val_images(tmp: Path, n: int = 2) -> list[Path]:
    return sorted((tmp / "shapes" / "val" / "images").glob("*.jpg"))[:n]


def assert_same_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), key  # NaN == NaN here


def no_torch_load(*args, **kwargs):
    raise AssertionError("torch.load called while loading a package")


# ---- what a package holds -------------------------------------------------------------------------------------------
def test_the_package_holds_the_evaluated_weights_in_safetensors_and_describes_them(seg):
    _, tmp = seg
    pkg, ckpt = tmp / "pkg", load_checkpoint(tmp / "run" / "best.pt")
    assert {p.name for p in pkg.iterdir()} == FILES
    for path in pkg.iterdir():  # no pickle anywhere: no torch zip archive, no pickle protocol header
        head = path.read_bytes()[:2]
        assert not zipfile.is_zipfile(path) and head != b"\x80\x04" and head != b"\x80\x02", path.name
    weights = load_file(pkg / "model.safetensors")
    ema, trained = ckpt["ema"]["weights"], ckpt["model"]
    assert weights.keys() == ema.keys() and all(torch.equal(weights[k], ema[k]) for k in ema)  # the EMA, exactly
    assert any(not torch.equal(weights[k], trained[k]) for k in trained)  # not the trained weights
    info = json.loads((pkg / "resdense.json").read_text())
    stored = dict(ckpt["config"])
    assert info["format_version"] == 1 and info["task"] == "segmentation" and info["torch_version"] == torch.__version__
    assert info["class_names"] == stored.pop("class_names") == ["background", "square", "circle", "triangle"]
    assert info["architecture"]["arch"] == "unet" and info["architecture"]["backbone"] == "resnet18"
    assert info["metrics"] == ckpt["metrics"] and info["training"]["evaluated_weights"] == "ema"
    assert info["training"]["hardware"] == ckpt["hardware"]
    assert info["weights"]["sha256"] == hashlib.sha256((pkg / "model.safetensors").read_bytes()).hexdigest()
    assert info["preprocessing"]["mean"] == list(IMAGENET_MEAN) and info["preprocessing"]["std"] == list(IMAGENET_STD)
    assert info["preprocessing"]["resize_longer_side"] is None  # the recipe's val_transforms: {size: null}
    assert yaml.safe_load((pkg / "config.yaml").read_text()) == stored  # the resolved recipe, paths as they were
    card = (pkg / "README.md").read_text()
    assert "background, square, circle, triangle" in card and f"{ckpt['metrics']['mIoU']:.4f}" in card
    assert 'Predictor.from_pretrained("pkg")' in card and "resdense predict pkg" in card
    assert ckpt["hardware"]["machine"] in card and ckpt["hardware"]["precision"]["amp"] in card
    assert str(tmp / "shapes") in card  # the data the recipe names


def test_hardware_of_an_older_checkpoint_comes_from_its_runs_metrics_json(seg, tmp_path):
    ckpt = load_checkpoint(seg[1] / "run" / "best.pt")
    del ckpt["hardware"]  # as checkpoints written before they recorded it
    torch.save(ckpt, tmp_path / "best.pt")
    export_package(tmp_path / "best.pt", tmp_path / "bare")
    info = json.loads((tmp_path / "bare" / "resdense.json").read_text())
    assert info["training"]["hardware"] == {}
    assert "| precision | not recorded |" in (tmp_path / "bare" / "README.md").read_text()
    recorded = {"device": "cuda:0", "precision": {"amp": "fp16", "reason": "train.amp = 'fp16'"},
                "memory_format": {"channels_last": True, "reason": "train.channels_last = true"}, "processes": 4,
                "machine": "a 4-GPU machine"}
    (tmp_path / "metrics.json").write_text(json.dumps({"final": {}, **recorded}))
    export_package(tmp_path / "best.pt", tmp_path / "pkg")
    assert json.loads((tmp_path / "pkg" / "resdense.json").read_text())["training"]["hardware"] == recorded
    card = (tmp_path / "pkg" / "README.md").read_text()
    assert "| machine | a 4-GPU machine |" in card and "| device | cuda:0, 4 process(es) |" in card
    assert "| precision | fp16 (train.amp = 'fp16') |" in card


# ---- the round trip ---------------------------------------------------------------------------------------------
def test_package_evaluates_and_predicts_as_the_checkpoint_did_without_it(seg, tmp_path, monkeypatch):
    recipe, tmp = seg
    ckpt = tmp_path / "best.pt"
    shutil.copy(tmp / "run" / "best.pt", ckpt)
    export_package(ckpt, tmp_path / "pkg")
    images = val_images(tmp)
    want_metrics = run_evaluation(recipe, ckpt)
    want = [Predictor.from_checkpoint(ckpt)(im) for im in images]
    ckpt.unlink()
    monkeypatch.setattr(torch, "load", no_torch_load)
    assert_same_metrics(run_evaluation(tmp_path / "pkg"), want_metrics)
    got = [Predictor.from_pretrained(tmp_path / "pkg")(im) for im in images]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g["logits"], w["logits"]) and torch.equal(g["mask"], w["mask"])


def test_detection_package_round_trip(det, tmp_path, monkeypatch):
    recipe, tmp = det
    ckpt = tmp / "run" / "last.pt"
    export_package(ckpt, tmp_path / "pkg")
    info = json.loads((tmp_path / "pkg" / "resdense.json").read_text())
    assert info["task"] == "detection" and info["class_names"] == ["square", "circle", "triangle"]
    assert info["preprocessing"]["min_size"] == [64] and info["preprocessing"]["max_size"] == 64  # the recipe's
    want_metrics = run_evaluation(recipe, ckpt)
    want = [Predictor.from_checkpoint(ckpt, score_threshold=0.0)(im) for im in val_images(tmp)]
    assert any(len(w["boxes"]) for w in want)  # something to compare
    monkeypatch.setattr(torch, "load", no_torch_load)
    assert_same_metrics(run_evaluation(tmp_path / "pkg"), want_metrics)
    got = [Predictor.from_pretrained(tmp_path / "pkg", score_threshold=0.0)(im) for im in val_images(tmp)]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys() and all(torch.equal(g[k], w[k]) for k in w)


# ---- bad packages: one line naming the file -------------------------------------------------------------------------
def copy_package(seg, dest: Path) -> Path:
    shutil.copytree(seg[1] / "pkg", dest)
    return dest


def rewrite_weights(pkg: Path, change) -> None:
    """Replace model.safetensors by ``change(tensors)`` and record its sha256, as a consistent package would."""
    tensors = change(load_file(pkg / "model.safetensors"))
    save_file(tensors, pkg / "model.safetensors")
    info = json.loads((pkg / "resdense.json").read_text())
    info["weights"]["sha256"] = hashlib.sha256((pkg / "model.safetensors").read_bytes()).hexdigest()
    (pkg / "resdense.json").write_text(json.dumps(info))


def test_another_format_version_is_refused_naming_both(seg, tmp_path):
    pkg = copy_package(seg, tmp_path / "pkg")
    info = json.loads((pkg / "resdense.json").read_text())
    (pkg / "resdense.json").write_text(json.dumps({**info, "format_version": 2}))
    with pytest.raises(WeightsError, match=rf"^{pkg}/resdense.json: package format_version 2 \(.*\); this resdense "
                                           r"reads format_version 1"):
        Predictor.from_pretrained(pkg)


def test_a_tampered_weight_file_is_refused_by_its_sha256(seg, tmp_path):
    pkg = copy_package(seg, tmp_path / "pkg")
    data = bytearray((pkg / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    (pkg / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=rf"^{pkg}/model.safetensors: sha256 [0-9a-f]{{64}} differs from the "
                                           r"[0-9a-f]{64} recorded in resdense.json"):
        Predictor.from_pretrained(pkg)


@pytest.mark.parametrize("name", ["resdense.json", "config.yaml", "model.safetensors"])
def test_a_missing_file_is_named(seg, tmp_path, name):
    pkg = copy_package(seg, tmp_path / "pkg")
    (pkg / name).unlink()
    with pytest.raises(WeightsError, match=rf"^{pkg}/{name}: missing; a resdense package folder holds"):
        Predictor.from_pretrained(pkg)


def test_not_a_folder_is_refused(seg, tmp_path):
    with pytest.raises(WeightsError, match=f"^{tmp_path}/nowhere: package folder not found$"):
        Predictor.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(WeightsError, match="best.pt: not a package folder; .*Predictor.from_checkpoint"):
        Predictor.from_pretrained(seg[1] / "run" / "best.pt")


def test_tensors_that_do_not_fit_the_architecture_name_the_first_key(seg, tmp_path):
    pkg = copy_package(seg, tmp_path / "pkg")
    head = "segmentation_head.0.weight"  # [4 classes, 16, 3, 3]
    rewrite_weights(pkg, lambda t: {**t, head: torch.zeros(3, *t[head].shape[1:])})
    with pytest.raises(WeightsError, match=rf"^{pkg}/model.safetensors: does not fit the unet model of {pkg}/config.yaml: "
                                           rf"'{head}' has shape \[3, 16, 3, 3\] in the file but \[4, 16, 3, 3\] in the "
                                           r"model \(1 shape-mismatched keys in all\)$"):
        Predictor.from_pretrained(pkg)
    rewrite_weights(pkg, lambda t: {k: v for k, v in t.items() if k != head})
    with pytest.raises(WeightsError, match=rf"'{head}' is missing from the file \(1 missing keys in all\)$"):
        Predictor.from_pretrained(pkg)
    rewrite_weights(pkg, lambda t: {**t, head: torch.zeros(4, 16, 3, 3), "extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"'extra.weight' is not a key of the model \(1 unexpected keys in all\)$"):
        Predictor.from_pretrained(pkg)


# ---- the command line -----------------------------------------------------------------------------------------------
def test_cli_export_predict_and_eval_a_package(seg, tmp_path, capsys):
    recipe, tmp = seg
    best, pkg = tmp / "run" / "best.pt", tmp_path / "pkg"
    assert main(["export", str(best), "--format", "package", "--out", str(pkg)]) == 0
    assert {Path(line).name for line in capsys.readouterr().out.split()} == FILES
    image = val_images(tmp, 1)[0]
    assert main(["predict", str(pkg), str(image), "--out", str(tmp_path / "a")]) == 0
    assert main(["predict", str(recipe), str(image), "--checkpoint", str(best), "--out", str(tmp_path / "b")]) == 0
    picture = f"{image.stem}.png"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / picture)), np.asarray(Image.open(tmp_path / "b" / picture)))
    capsys.readouterr()
    assert main(["eval", str(recipe), "--checkpoint", str(best), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    moved = tmp_path / "moved_shapes"  # --set points the package's recipe at data elsewhere
    assert main(["eval", str(pkg), "--json", "--set", f"data.shapes.root={moved}"]) == 0
    assert json.loads(capsys.readouterr().out) == want and (moved / "val" / "images").is_dir()


def test_cli_refusals_are_one_line(seg, tmp_path, capsys):
    recipe, tmp = seg
    cases = [
        (["eval", str(recipe)], "resdense eval: error: " + f"{recipe}: no checkpoint given; pass --checkpoint PATH"),
        (["predict", str(recipe), "x.png", "--out", str(tmp_path)], f"resdense predict: error: {recipe}: no checkpoint"),
        (["export", str(tmp / "pkg"), "--format", "package", "--out", str(tmp_path / "p")],
         f"resdense export: error: {tmp / 'pkg'}: already a package folder"),
        (["export", str(tmp / "run" / "best.pt"), "--format", "package", "--out", str(tmp_path / "p"), "--size", "64",
          "64"], "resdense export: error: --size: options of the graph formats"),
    ]
    for argv, start in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(start) and "\n" not in err, err
    with pytest.raises(ConfigError, match="no checkpoint given"):
        run_evaluation(recipe)
