"""The weight average (train.ema_decay): it follows the documented rule, evaluation and best.pt use it, and
load_model / run_evaluation load it from the checkpoint as the model."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from resdense.config import EvalConfig, TrainConfig
from resdense.engine import (
    SegmentationTask,
    Trainer,
    evaluated_weights,
    load_checkpoint,
    load_model,
    run_evaluation,
    run_training,
)
from resdense.errors import ConfigError

from .recipes import AfterStep, seg_recipe, write
from .test_trainer import Stripes


class TinySeg(nn.Module):
    """A 1x1-conv segmenter with a BatchNorm'd ``backbone``, so that buffers and the freeze schedule have a subject."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.backbone(x))


def make(run_dir, val=True, eval_kw=None, **kw) -> Trainer:
    cfg = TrainConfig(**{"iterations": 12, "batch_size": 4, "lr": 0.05, "warmup_iters": 2, "log_every": 1,
                         "progress": False, **kw})
    return Trainer(TinySeg(), SegmentationTask(2, class_names=["bg", "red"]), Stripes(32), Stripes(8, seed=1) if val
                   else None, cfg, EvalConfig(**{"every_iters": 4, "batch_size": 4, **(eval_kw or {})}),
                   run_dir=run_dir, config={"name": "t"})


def _clone(state):
    return {k: v.detach().clone() for k, v in state.items()}


@pytest.mark.parametrize("warmup", [0, 3])
def test_average_follows_the_documented_rule(tmp_path, warmup):
    decay = 0.8
    seen = []
    trainer = make(tmp_path / "run", val=False, ema_decay=decay, ema_warmup_iters=warmup, iterations=7)
    trainer.register_hooks([AfterStep(lambda t, it, losses: seen.append(_clone(t.model.state_dict())))])
    trainer.fit()
    # by hand: the first update copies; update t lerps floating-point tensors with d_t, copies integer ones
    expected = _clone(seen[0])
    for t, weights in enumerate(seen[1:], start=2):
        d = decay * (1 - math.exp(-t / warmup)) if warmup else decay
        for k, w in weights.items():
            expected[k] = d * expected[k] + (1 - d) * w if w.is_floating_point() else w.clone()
    got = trainer.ema.module.state_dict()
    assert got.keys() == expected.keys() and int(trainer.ema.n_averaged) == 7
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], msg=k)
    assert int(got["backbone.1.num_batches_tracked"]) == 7
    # BatchNorm statistics are averaged, not copied: they differ from the trained model's
    assert not torch.equal(got["backbone.1.running_mean"], seen[-1]["backbone.1.running_mean"])
    assert all(not p.requires_grad for p in trainer.ema.module.parameters())


def test_evaluation_and_best_checkpoint_use_the_average(tmp_path):
    trainer = make(tmp_path / "run", ema_decay=0.9)
    result = trainer.fit()
    val = trainer.val_loader()
    on_ema = trainer.task.evaluate(trainer.ema.module.eval(), val, trainer.device, autocast=trainer.autocast)
    on_model = trainer.task.evaluate(trainer.model.eval(), val, trainer.device, autocast=trainer.autocast)
    assert result["final"]["val_loss"] == on_ema["val_loss"] != on_model["val_loss"]
    assert result["evaluated_weights"] == "ema"
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(tmp_path / "run" / name)
        assert ckpt["ema"]["updates"] == ckpt["iteration"]
        assert evaluated_weights(ckpt) is ckpt["ema"]["weights"]
        assert ckpt["model"].keys() == ckpt["ema"]["weights"].keys()
        assert any(not torch.equal(ckpt["model"][k], ckpt["ema"]["weights"][k]) for k in ckpt["model"])
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.equal(v, trainer.ema.module.state_dict()[k]) for k, v in last["ema"]["weights"].items())
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in last["model"].items())
    # best.pt was chosen by the average's metric, as eval.csv recorded it
    with open(tmp_path / "run" / "eval.csv", newline="") as f:
        rows = {int(r["iteration"]): float(r["mIoU"]) for r in csv.DictReader(f)}
    best = json.loads((tmp_path / "run" / "metrics.json").read_text())["best"]
    assert best["value"] == pytest.approx(max(rows.values()), rel=1e-6)


def test_load_model_and_run_evaluation_use_the_average_of_best_pt(tmp_path):
    recipe = seg_recipe(tmp_path / "shapes", tmp_path / "run", ema_decay=0.7, progress=False)
    path = write(recipe, tmp_path / "seg.yaml")
    run_training(path)
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    model, _ = load_model(tmp_path / "run" / "best.pt", device="cpu")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt["ema"]["weights"].items())
    assert any(not torch.equal(state[k], v) for k, v in ckpt["model"].items())
    metrics = run_evaluation(path, tmp_path / "run" / "best.pt")
    with open(tmp_path / "run" / "eval.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if int(r["iteration"]) == ckpt["iteration"])
    assert metrics["mIoU"] == pytest.approx(ckpt["best"]["value"], rel=1e-6)
    assert metrics["val_loss"] == pytest.approx(float(row["val_loss"]), rel=1e-5)


def test_resume_without_a_stored_average_starts_one(tmp_path):
    make(tmp_path / "run", iterations=4).fit()
    trainer = make(tmp_path / "run", iterations=6, ema_decay=0.5)
    trainer.fit()
    assert int(trainer.ema.n_averaged) == 2  # iterations 5 and 6


@pytest.mark.parametrize("key,value", [("ema_decay", 1.0), ("ema_decay", 0.0), ("ema_warmup_iters", -1)])
def test_bad_ema_values(key, value):
    with pytest.raises(ConfigError, match=rf"^train\.{key} = {value!r} must"):
        TrainConfig(iterations=1, **{key: value})
