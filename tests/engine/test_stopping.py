"""Stopping before train.iterations: early stopping (eval.patience) and the wall-clock budget (train.max_minutes),
each ending with a final checkpoint and a metrics.json that says where and why; a resumed run after such a stop
continues exactly where the uninterrupted one would be."""

from __future__ import annotations

import json

import pytest
import torch

import resdense.engine.trainer as trainer_module
from resdense.config import EvalConfig, TrainConfig
from resdense.engine import SegmentationTask, load_checkpoint
from resdense.errors import ConfigError

from .recipes import AfterStep
from .test_ema import make


class ScriptedTask(SegmentationTask):
    """Segmentation whose evaluations report the scripted mIoU values in turn."""

    def __init__(self, values, key: str = "mIoU") -> None:
        super().__init__(2, class_names=["bg", "red"])
        self.values = list(values)
        self.key = key
        self.calls = 0

    def evaluate(self, model, loader, device, **kwargs):
        metrics = super().evaluate(model, loader, device, **kwargs)
        metrics[self.key] = self.values[self.calls]
        self.calls += 1
        return metrics


class Clock:
    """A fake ``perf_counter``: every reading is ``step`` seconds after the previous one."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def _eval_rows(run_dir):
    return [int(r.split(",")[0]) for r in (run_dir / "eval.csv").read_text().splitlines()[1:]]


def _steps(trainer):
    done = []
    trainer.register_hooks([AfterStep(lambda t, it, losses: done.append(it))])
    return done


def test_patience_stops_after_n_evaluations_without_improvement(tmp_path):
    run = tmp_path / "run"
    # evaluations every 4 iterations: 0.5 (best), 0.6 (best), 0.6 (equal: no improvement), 0.55 -> patience 2 stops
    trainer = make(run, iterations=40, eval_kw={"patience": 2})
    trainer.task = ScriptedTask([0.5, 0.6, 0.6, 0.55])
    result = trainer.fit()
    assert result["stopped"] == {"reason": "patience", "iteration": 16} == _metrics(run)["stopped"]
    assert result["iterations"] == 16 and _eval_rows(run) == [4, 8, 12, 16]  # no second evaluation at the stop
    assert result["best"]["iteration"] == 8 and result["best"]["value"] == 0.6
    assert load_checkpoint(run / "last.pt")["iteration"] == 16
    assert load_checkpoint(run / "best.pt")["iteration"] == 8
    assert int((run / "log.csv").read_text().splitlines()[-1].split(",")[0]) == 16

    # run again: the stored count says stop, so nothing trains and metrics.json is the same
    again = make(run, iterations=40, eval_kw={"patience": 2})
    again.task = ScriptedTask([])
    steps = _steps(again)
    assert again.fit()["stopped"] == {"reason": "patience", "iteration": 16} and steps == []
    assert _metrics(run)["final"] == result["final"]
    # more patience: training continues from iteration 16, and the count goes on from the stored 2
    more = make(run, iterations=40, eval_kw={"patience": 3})
    more.task = ScriptedTask([0.58])
    steps = _steps(more)
    assert more.fit()["stopped"] == {"reason": "patience", "iteration": 20} and steps == [17, 18, 19, 20]


def test_val_loss_selects_the_lowest_validation_loss(tmp_path):
    # real training and evaluation: best.pt holds the evaluation with the lowest val_loss that eval.csv shows
    run = tmp_path / "run"
    result = make(run, iterations=16, eval_kw={"metric": "val_loss"}).fit()
    rows = [r.split(",") for r in (run / "eval.csv").read_text().splitlines()]
    column = rows[0].index("val_loss")
    losses = {int(r[0]): float(r[column]) for r in rows[1:]}
    lowest = min(losses, key=losses.get)
    assert len(set(losses.values())) == len(losses) == 4 and lowest != min(losses)  # it learns: not the first
    assert result["best"]["mode"] == "min" and result["best"]["iteration"] == lowest
    assert result["best"]["value"] == pytest.approx(losses[lowest], rel=1e-5)
    assert load_checkpoint(run / "best.pt")["iteration"] == lowest


@pytest.mark.parametrize("eval_kw,best,stop", [
    # lower is better: 0.9, 0.5 (best), 0.5 (equal: no improvement), 0.7 -> patience 2 stops at 16
    ({"metric": "val_loss", "patience": 2}, (8, 0.5), 16),
    # eval.mode overrides the name: the highest loss is kept, and the two lower ones are stalls
    ({"metric": "val_loss", "mode": "max", "patience": 2}, (4, 0.9), 12),
])
def test_metric_direction_drives_best_and_patience(tmp_path, eval_kw, best, stop):
    run = tmp_path / "run"
    trainer = make(run, iterations=40, eval_kw=eval_kw)
    trainer.task = ScriptedTask([0.9, 0.5, 0.5, 0.7], key="val_loss")
    result = trainer.fit()
    assert result["stopped"] == {"reason": "patience", "iteration": stop}
    assert (result["best"]["iteration"], result["best"]["value"]) == best
    assert load_checkpoint(run / "best.pt")["iteration"] == best[0]


@pytest.mark.parametrize("metric,mode", [("val_loss", "min"), ("loss", "min"), ("top1_error", "min"),
                                         ("mae", "min"), ("mIoU", "max"), ("bbox/AP", "max"), ("top1", "max"),
                                         ("segm/AR100", "max")])
def test_metric_mode_from_the_name(metric, mode):
    from resdense.engine.tasks import metric_mode

    assert metric_mode(metric) == mode
    assert metric_mode(metric, "max") == "max" and metric_mode(metric, "min") == "min"


def test_eval_mode_is_checked():
    with pytest.raises(ConfigError, match=r"eval.mode = 'lowest' is not one of 'max', 'min'"):
        EvalConfig(mode="lowest")


def test_budget_stops_after_the_step_that_exceeds_it(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(trainer_module, "_now", Clock(10.0))  # each training step takes 10 s
    trainer = make(run, iterations=40, max_minutes=0.6)  # 36 s: exceeded during step 4
    steps = _steps(trainer)
    result = trainer.fit()
    assert steps == [1, 2, 3, 4]
    stopped = {"reason": "max_minutes", "iteration": 4, "train_s": 40.0}
    assert result["stopped"] == stopped == _metrics(run)["stopped"]
    assert _eval_rows(run) == [4]  # the final evaluation (its time is eval_s, outside the budget)
    assert result["timings"]["train_s"] == 40.0 and result["timings"]["eval_s"] > 0
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["iteration"] == 4 and ckpt["timings"]["train_s"] == 40.0
    # resumed with the same budget: the stored training time has spent it, so it stops at once
    again = make(run, iterations=40, max_minutes=0.6)
    steps = _steps(again)
    assert again.fit()["stopped"] == stopped and steps == []
    # a larger budget continues on the cumulative time: 40 s + 3 steps > 1 min
    more = make(run, iterations=40, max_minutes=1.0)
    steps = _steps(more)
    assert more.fit()["stopped"] == {"reason": "max_minutes", "iteration": 7, "train_s": 70.0} and steps == [5, 6, 7]


def test_budget_reached_on_the_last_iteration_is_no_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "_now", Clock(10.0))
    result = make(tmp_path / "run", iterations=4, max_minutes=0.5).fit()
    assert result["iterations"] == 4 and result["stopped"] is None


def test_stopped_then_resumed_equals_uninterrupted_with_ema_and_freeze(tmp_path, monkeypatch):
    common = {"iterations": 12, "ema_decay": 0.8, "ema_warmup_iters": 2, "freeze_backbone_iters": 5}
    ref = make(tmp_path / "ref", **common)
    ref.fit()
    run = tmp_path / "run"
    monkeypatch.setattr(trainer_module, "_now", Clock(10.0))
    assert make(run, max_minutes=0.5, **common).fit()["stopped"]["iteration"] == 4   # frozen still
    assert make(run, max_minutes=1.0, **common).fit()["stopped"]["iteration"] == 7   # unfrozen after 5
    resumed = make(run, **common)
    assert resumed.fit()["stopped"] is None
    for ours, theirs in ((resumed.model, ref.model), (resumed.ema.module, ref.ema.module)):
        a, b = ours.state_dict(), theirs.state_dict()
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        assert not diff, diff
    assert int(resumed.ema.n_averaged) == int(ref.ema.n_averaged) == 12


@pytest.mark.parametrize("section,key,value", [("train", "max_minutes", 0), ("train", "max_minutes", -1.0),
                                               ("eval", "patience", 0)])
def test_bad_stop_values(section, key, value):
    cls = TrainConfig if section == "train" else EvalConfig
    kwargs = {"iterations": 1} if section == "train" else {}
    with pytest.raises(ConfigError, match=rf"^{section}\.{key} = {value!r} must"):
        cls(**kwargs, **{key: value})


def test_time_schedule_runs_the_cosine_over_the_budget(tmp_path, monkeypatch):
    from resdense.engine.schedule import lr_factor

    monkeypatch.setattr(trainer_module, "_now", Clock(5.0))  # each training step takes 5 s
    run = tmp_path / "run"
    trainer = make(run, val=False, iterations=1000, max_minutes=1.0, schedule_by="time")
    lrs = []
    trainer.register_hooks([AfterStep(lambda t, it, losses: lrs.append(t.optimizer.param_groups[0]["lr"]))])
    result = trainer.fit()
    # 60 s of 5 s steps: the budget is passed during step 13; the schedule ends with it, not at iteration 1000
    assert result["stopped"] == {"reason": "max_minutes", "iteration": 13, "train_s": 65.0}
    cfg = trainer.cfg
    # the rate set after step k is the one of step k + 1, at the time the schedule had seen: 5 (k - 1) s
    expected = [0.05 * lr_factor(k, 1000, cfg, 5.0 * (k - 1) / 60.0) for k in range(1, 14)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[-1] < 0.05 * 0.02  # the cosine's end, where an iteration schedule over 1000 would still be at 1
    assert lr_factor(12, 1000, cfg) > 0.99


def test_time_schedule_needs_a_budget():
    with pytest.raises(ConfigError, match="train.schedule_by = 'time' runs the schedule over train.max_minutes"):
        TrainConfig(iterations=10, schedule_by="time")
    with pytest.raises(ConfigError, match="train.schedule_by = 'epochs' is not one of"):
        TrainConfig(iterations=10, schedule_by="epochs")
