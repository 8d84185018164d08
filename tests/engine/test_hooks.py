"""User hooks from a recipe's ``train.hooks``: a registered hook (tests/hook_toy.py, imported as a recipe's
``imports:`` would import it) trains through run_training, is killed, resumes with its saved state restored exactly,
and an unknown name is refused with one line."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resdense.engine import load_checkpoint, run_training
from resdense.errors import ConfigError
from resdense.registry import HOOKS

from .recipes import seg_recipe, write

ROOT = Path(__file__).resolve().parents[2]
KILLER = """
import os, signal, sys
import tests.hook_toy
from resdense.engine import HookBase, run_training
class Kill(HookBase):
    def after_step(self):
        if self.trainer.iteration == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
run_training(sys.argv[1], hooks=[Kill()])
"""


@pytest.fixture
def hook_toy():
    """The module imported in this process (it registers ``iterations_seen``), unregistered afterwards."""
    yield importlib.import_module("tests.hook_toy")
    HOOKS.remove("iterations_seen")
    sys.modules.pop("tests.hook_toy", None)


def test_a_recipe_hook_trains_is_killed_and_resumes_with_its_state(tmp_path, hook_toy):
    shapes = tmp_path / "shapes"
    common = {"iterations": 8, "checkpoint_every": 2, "hooks": [{"iterations_seen": {"every": 1}}]}
    ref = run_training(write(seg_recipe(shapes, tmp_path / "ref", **common), tmp_path / "ref.yaml"))
    cfg = write(seg_recipe(shapes, tmp_path / "killed", **common), tmp_path / "killed.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(cfg), "5"], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == -9, proc.stderr[-2000:]
    saved = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert saved["iteration"] == 4 and saved["iterations_seen"] == {"seen": [1, 2, 3, 4], "count": 4}
    resumed = run_training(cfg)
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("ref", "killed"))
    assert a["iterations_seen"] == b["iterations_seen"] == {"seen": list(range(1, 9)), "count": 8}
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert resumed["final"] == ref["final"]


def test_an_unknown_hook_is_one_line_naming_the_recipe_and_the_registered_hooks(tmp_path, hook_toy):
    recipe = write(seg_recipe(tmp_path / "shapes", tmp_path / "run", hooks=["iterations_sen"]), tmp_path / "r.yaml")
    with pytest.raises(ConfigError) as err:
        run_training(recipe)
    assert str(err.value) == f"{recipe}: train.hooks = 'iterations_sen' is not a registered hook (did you mean 'iterations_seen'?); one of " \
        f"{', '.join(HOOKS.names())}"
    assert "iterations_seen" in HOOKS.names()


def test_hook_entries_are_names_or_one_mapping_each():
    from resdense.config import TrainConfig

    with pytest.raises(ConfigError, match=r"^train.hooks: \{'a': \{\}, 'b': \{\}\} must be a name or one"):
        TrainConfig(iterations=1, hooks=[{"a": {}, "b": {}}])
