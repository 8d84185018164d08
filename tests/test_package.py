"""The installed package: a wheel built from this tree carries every module and the recipes, and its CLI finds them
from any folder; ``import resdense`` gives the entry points a user types."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """This tree built into a wheel (no network: --no-deps, --no-build-isolation with the venv's setuptools) and
    installed into a bare folder. The build runs on a copy so that build/ and *.egg-info stay out of the tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("resdense", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    wheel = next((tmp / "dist").glob("resdense-*.whl"))
    _run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], cwd=tmp)
    return tmp


def test_wheel_holds_every_module_and_recipe(installed):
    names = set(zipfile.ZipFile(next((installed / "dist").glob("resdense-*.whl"))).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "resdense").rglob("*.py")}
    recipes = {f"resdense/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    splits = {f"resdense/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.txt")}
    assert len(recipes) >= 8 and "resdense/configs/demo_shapes_unet_r18.yaml" in recipes
    assert "resdense/configs/splits/membrane/val.txt" in splits
    assert modules - names == set() and recipes - names == set() and splits - names == set()
    import resdense

    assert f"resdense-{resdense.__version__}.dist-info/METADATA" in names  # the version has one source


@pytest.mark.slow
def test_installed_cli_lists_and_trains_a_shipped_recipe_from_another_folder(installed):
    work = installed / "elsewhere"  # no configs/ here: recipes can only come from the installed package
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed / "site")}
    where = _run([sys.executable, "-c", "import importlib.resources as r, resdense; "
                  "print(resdense.__file__); print(r.files('resdense.configs'))"], cwd=work, env=env).split()
    assert all(Path(p).is_relative_to(installed / "site") for p in where), where
    listed = _run([sys.executable, "-m", "resdense", "list", "configs"], cwd=work, env=env)
    shipped = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert [line.split()[0] for line in listed.splitlines()[1:]] == shipped
    _run([sys.executable, "-m", "resdense", "train", "demo_shapes_unet_r18", "--set", "train.iterations=2",
          "--set", "data.shapes.n_train=16", "--set", "data.shapes.n_val=4", "--set", "train.batch_size=4",
          "--set", "eval.batch_size=4", "--out", "run"], cwd=work, env=env)
    for name in ("config.yaml", "last.pt", "metrics.json"):
        assert (work / "run" / name).exists(), name
    # a real-data recipe's split files are found beside the installed recipe, not in the working directory
    split = _run([sys.executable, "-c", "import resdense.config as c; "
                  "print(c.parse_recipe('unet_r18_membrane_cpu').data['val']['split'])"], cwd=work, env=env).strip()
    assert Path(split).is_relative_to(installed / "site") and Path(split).read_text().split() == [
        line for line in (ROOT / "configs/splits/membrane/val.txt").read_text().split()]


EXPORTS = {
    "create_backbone": "resdense.backbones", "create_classifier": "resdense.heads",
    "optimize_for_inference": "resdense.backbones", "build_detector": "resdense.heads", "UNet": "resdense.heads",
    "FPN": "resdense.heads", "smp_model": "resdense.heads", "load_config": "resdense.engine",
    "Predictor": "resdense.inference", "TTA": "resdense.inference", "register_architecture": "resdense.registry",
    "register_dataset": "resdense.registry", "register_backbone": "resdense.registry", "register_hook": "resdense.registry",
}
ALIASES = {"train": ("resdense.engine", "run_training"), "evaluate": ("resdense.engine", "run_evaluation"),
           "predict": ("resdense.inference", "run_prediction")}


def test_top_level_names_are_the_library_objects():
    import importlib

    import resdense

    assert set(resdense.__all__) == {"__version__", *EXPORTS, *ALIASES} == {"__version__", *resdense._EXPORTS}
    for name, module in EXPORTS.items():
        assert getattr(resdense, name) is getattr(importlib.import_module(module), name), name
    for name, (module, target) in ALIASES.items():
        assert getattr(resdense, name) is getattr(importlib.import_module(module), target), name
    assert set(resdense.__all__) <= set(dir(resdense))
    assert isinstance(resdense.__version__, str) and resdense.__version__.count(".") == 2
    with pytest.raises(AttributeError, match="no attribute 'create_backbon'"):
        resdense.create_backbon  # noqa: B018


def test_top_level_names_build_working_models():
    import torch

    import resdense
    from resdense.errors import ConfigError

    feats = resdense.create_backbone("resnet18", out_features=("c3", "c5"))(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"c3": (1, 128, 8, 8), "c5": (1, 512, 2, 2)}
    assert resdense.UNet("resnet18", num_classes=2).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(ConfigError, match="unknown key 'model.decoder_chanels'"):
        resdense.load_config("demo_shapes_unet_r18", ["model.decoder_chanels=[8, 8, 8, 8, 8]"])
