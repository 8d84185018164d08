"""Exact resume: a CPU run SIGKILLed at a random iteration and resumed ends with the weights of an uninterrupted
run, bit for bit (data order, augmentation, RPN sampling and optimizer state all continue where they were)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch

from resdense.engine import load_checkpoint, run_training

from .recipes import det_recipe, seg_recipe, tensorboard_scalars, write

KILLER = """
import os, signal, sys
from resdense.engine import HookBase, run_training
kill_at = int(sys.argv[2])
class Kill(HookBase):
    def after_step(self):
        if self.trainer.iteration == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
run_training(sys.argv[1], hooks=[Kill()])
"""


def _weights(run_dir):
    """The trained weights and, for a run with train.ema_decay, the average's (prefixed ``ema/``)."""
    ckpt = load_checkpoint(run_dir / "last.pt")
    ema = ckpt.get("ema") or {"weights": {}, "updates": 0}
    return {**ckpt["model"], **{f"ema/{k}": v for k, v in ema["weights"].items()},
            "ema/updates": torch.tensor(ema["updates"])}


def _kill_and_resume(tmp_path, recipe_fn, iterations, checkpoint_every, kill_at=None, **train):
    shapes = tmp_path / "shapes"
    kill_at = kill_at or random.Random().randint(1, iterations - 1)
    common = {"iterations": iterations, "checkpoint_every": checkpoint_every, **train}
    ref = run_training(write(recipe_fn(shapes, tmp_path / "ref", **common), tmp_path / "ref.yaml"))
    cfg = write(recipe_fn(shapes, tmp_path / "killed", **common), tmp_path / "killed.yaml")
    # OMP_NUM_THREADS=1: the child runs on one thread like this process (see conftest.one_thread).
    proc = subprocess.run([sys.executable, "-c", KILLER, str(cfg), str(kill_at)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, f"the child was not SIGKILLed at iteration {kill_at}: {proc.stderr[-2000:]}"
    saved = load_checkpoint(tmp_path / "killed" / "last.pt")["iteration"] if (tmp_path / "killed" / "last.pt").exists() else 0
    assert saved <= kill_at
    resumed = run_training(cfg)  # finds killed/last.pt and continues
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"killed at iteration {kill_at} (resumed from {saved}): {len(diff)} tensors differ, e.g. {diff[:3]}"
    assert resumed["final"] == ref["final"]
    # the resumed log reads like the uninterrupted one (rows after the checkpoint were dropped, then re-written)
    strip = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731  (last column is wall time)
    assert strip((tmp_path / "killed" / "log.csv").read_text().splitlines()) == \
        strip((tmp_path / "ref" / "log.csv").read_text().splitlines())
    # and so does TensorBoard: the killed run's events past the checkpoint are purged, the rest are the same numbers
    ref_tb = tensorboard_scalars(tmp_path / "ref")
    assert "train/loss" in ref_tb and any(tag.startswith("eval/") for tag in ref_tb)
    assert tensorboard_scalars(tmp_path / "killed") == ref_tb
    return kill_at


def test_segmentation_kill_and_resume_is_exact(tmp_path):
    # 12 images, batch 4: 3 iterations per epoch, so the run crosses epochs and mid-epoch resumes happen.
    _kill_and_resume(tmp_path, seg_recipe, iterations=8, checkpoint_every=2)


@pytest.mark.parametrize("kill_at", [3, 7])
def test_segmentation_with_ema_and_backbone_freeze_kill_and_resume_is_exact(tmp_path, kill_at):
    # killed while the backbone is frozen (resumed from iteration 2) and after it was released at 4 (from 6): the
    # trained weights and the weight average both end bit-identical to the uninterrupted run's
    _kill_and_resume(tmp_path, seg_recipe, iterations=8, checkpoint_every=2, kill_at=kill_at, ema_decay=0.9,
                     ema_warmup_iters=2, freeze_backbone_iters=4)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["ema"]["updates"] == 8


@pytest.mark.parametrize("checkpoint_every", [3])
def test_detection_kill_and_resume_is_exact(tmp_path, checkpoint_every):
    # Faster R-CNN samples RPN anchors and RoIs with torch's global generator: its state must be restored too.
    _kill_and_resume(tmp_path, det_recipe, iterations=7, checkpoint_every=checkpoint_every)
