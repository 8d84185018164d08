"""The training loop on stand-ins (a tiny conv net, an in-memory dataset): it learns, stops on a planted NaN with
the promised message, evaluates, keeps the best checkpoint and writes its run directory."""

from __future__ import annotations

import hashlib
import json
import os
import signal

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from resdense.config import NOT_SET, EvalConfig, TrainConfig, first_difference
from resdense.engine import NonFiniteLossError, ResumableSampler, SegmentationTask, Trainer, load_checkpoint
from resdense.errors import ConfigError, ResdenseError, TrainingInterrupted

from .recipes import AfterStep, tensorboard_scalars


class Stripes(Dataset):
    """Class 1 where the red channel is positive: a rule a 1x1 conv learns in a few dozen steps."""

    def __init__(self, n: int, seed: int = 0, nan_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.y = (self.x[:, 0] > 0).long()
        if nan_at is not None:
            self.x[nan_at, :, 3, 3] = float("nan")
        self.image_paths = [f"img_{i:03d}.png" for i in range(n)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1))


def make(tmp_path, train_set, **kw) -> Trainer:
    cfg = TrainConfig(**{"iterations": 60, "batch_size": 4, "lr": 0.05, "warmup_iters": 5, "log_every": 5,
                         "progress": False, **kw})
    return Trainer(tiny_net(), SegmentationTask(2, class_names=["bg", "red"]), train_set, Stripes(8, seed=1),
                   cfg, EvalConfig(every_iters=20, batch_size=4), run_dir=tmp_path / "run", config={"name": "t"})


def test_learns_and_writes_the_run_directory(tmp_path):
    result = make(tmp_path, Stripes(32)).fit()
    run = tmp_path / "run"
    assert result["final"]["mIoU"] > 0.9
    assert result["best"]["metric"] == "mIoU" and result["best"]["value"] >= result["final"]["mIoU"] - 1e-9
    for name in ("log.csv", "eval.csv", "last.pt", "best.pt", "metrics.json", "curves.png"):
        assert (run / name).exists(), name
    assert json.loads((run / "metrics.json").read_text())["iterations"] == 60
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,epoch,lr,loss_ce,loss") and len(rows) == 1 + 60 // 5
    evals = (run / "eval.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in evals[1:]] == ["20", "40", "60"]
    # TensorBoard holds the same rows (float32 there, 6 significant digits in the CSV)
    tb = tensorboard_scalars(run)
    csv_loss = [(int(r.split(",")[0]), float(r.split(",")[3])) for r in rows[1:]]
    assert [(s, pytest.approx(v, rel=1e-5)) for s, v in tb["train/loss_ce"]] == csv_loss
    header = evals[0].split(",")
    assert [s for s, _ in tb["eval/mIoU"]] == [20, 40, 60]
    assert tb["eval/mIoU"][-1][1] == pytest.approx(float(evals[-1].split(",")[header.index("mIoU")]), rel=1e-5)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["iteration"] == 60 and ckpt["config"] == {"name": "t"}
    first_loss = float(rows[1].split(",")[3])
    last_loss = float(rows[-1].split(",")[3])
    assert last_loss < 0.5 * first_loss


def test_planted_nan_stops_with_iteration_losses_and_image_ids(tmp_path):
    n, bs, bad = 16, 4, 9
    order = ResumableSampler(n, seed=0).order(0)
    expected_it = order.index(bad) // bs + 1
    hashes = {}

    def after_step(trainer, it, losses):
        last = trainer.run_dir / "last.pt"
        if last.exists():
            hashes[it] = hashlib.sha256(last.read_bytes()).hexdigest()

    trainer = make(tmp_path, Stripes(n, nan_at=bad), checkpoint_every=1)
    trainer.register_hooks([AfterStep(after_step)])
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    msg = str(err.value)
    assert isinstance(err.value, ResdenseError) and "\n" not in msg
    assert msg.startswith(f"iteration {expected_it}: non-finite loss (")
    assert "loss_ce=nan" in msg and "img_009.png" in msg
    batch = order[(expected_it - 1) * bs: expected_it * bs]
    assert all(f"img_{i:03d}.png" in msg for i in batch)
    last = tmp_path / "run" / "last.pt"
    if expected_it > 1:
        assert "is untouched" in msg
        assert hashlib.sha256(last.read_bytes()).hexdigest() == hashes[expected_it - 1]
        assert load_checkpoint(last)["iteration"] == expected_it - 1
    else:
        assert not last.exists()


def test_tolerated_nonfinite_steps_are_skipped(tmp_path):
    trainer = make(tmp_path, Stripes(16, nan_at=9), max_nonfinite=10, iterations=8)
    result = trainer.fit()
    assert result["iterations"] == 8
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_schedule_warmup_then_cosine(tmp_path):
    trainer = make(tmp_path, Stripes(16), iterations=20, warmup_iters=4, warmup_factor=0.1, lr=1.0)
    lrs = []
    for _ in range(20):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(1.0)
    assert lrs[12] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 8 / 16)).item()))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_step_schedule_and_sgd(tmp_path):
    trainer = make(tmp_path, Stripes(16), iterations=10, optimizer="sgd", schedule="step", milestones=[0.5, 8],
                   gamma=0.1, lr=1.0, warmup_iters=0)
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    lrs = []
    for _ in range(10):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert lrs == pytest.approx([1.0] * 5 + [0.1] * 3 + [0.01] * 2)


def test_norm_and_bias_parameters_get_no_weight_decay(tmp_path):
    trainer = make(tmp_path, Stripes(16), weight_decay=0.05)
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert sum(p.numel() for p in groups[1]["params"]) == 8 + 2  # the two biases


def test_grad_clip_and_bf16_autocast_on_cpu(tmp_path):
    result = make(tmp_path, Stripes(32), grad_clip=0.5, amp="bf16", iterations=40).fit()
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert "grad_norm" in rows[0]
    assert result["final"]["mIoU"] > 0.8


def test_resuming_with_another_model_or_data_section_is_refused(tmp_path):
    recipe = {"model": {"arch": "unet", "backbone": "resnet18", "decoder_channels": [16, 8]},
              "data": {"dataset": "mask", "train": {"images_dir": "a"}}}
    first = make(tmp_path, Stripes(16), iterations=3)
    first.config = recipe
    first.fit()
    changes = [("model", {**recipe["model"], "decoder_channels": [16, 4]}, "model.decoder_channels[1] = 8, this "
                "recipe has 4"),
               ("data", {"dataset": "mask", "train": {"images_dir": "a", "size": 64}}, "data.train.size = <not set>, "
                "this recipe has 64")]
    for section, value, said in changes:
        again = make(tmp_path, Stripes(16), iterations=6)
        again.config = {**recipe, section: value}
        with pytest.raises(ConfigError) as err:
            again.fit()
        last = tmp_path / "run" / "last.pt"
        assert str(err.value) == f"{last}: resuming refused: the checkpoint was trained with {said}; use another " \
            "train.output_dir, or --set train.resume=false to start afresh"
    # the same recipe with another train section resumes; train.resume=false starts afresh
    again = make(tmp_path, Stripes(16), iterations=6)
    again.config = recipe
    assert again.maybe_resume() and again.iteration == 3
    fresh = make(tmp_path, Stripes(16), iterations=6, resume=False)
    fresh.config = {**recipe, "model": changes[0][1]}
    assert fresh.fit()["iterations"] == 6


def test_first_difference_walks_keys_in_order():
    a = {"x": 1, "y": {"z": [1, 2, {"w": "a"}]}}
    assert first_difference(a, a, "s") is None
    assert first_difference(a, {"x": 1, "y": {"z": [1, 2, {"w": "b"}]}}, "s") == ("s.y.z[2].w", "a", "b")
    assert first_difference(a, {"x": 2, "y": {}}, "s") == ("s.x", 1, 2)
    assert first_difference(a, {**a, "v": 0}, "s") == ("s.v", NOT_SET, 0)
    assert first_difference({"l": [1]}, {"l": [1, 2]}, "s") == ("s.l", [1], [1, 2])


def test_eval_max_images_scores_the_first_images(tmp_path):
    # a Subset inside SeededDataset: the loader must still fetch (index, sample) pairs, not Subset.__getitems__'s
    trainer = make(tmp_path, Stripes(16), iterations=2)
    trainer.eval_cfg = EvalConfig(batch_size=4, max_images=3)
    loader = trainer.val_loader()
    batches = list(loader)
    assert [b.indices for b in batches] == [[0, 1, 2]]
    assert torch.equal(batches[0].inputs, torch.stack([Stripes(8, seed=1)[i][0] for i in range(3)]))
    assert 0.0 <= trainer.evaluate()["mIoU"] <= 1.0


def test_sigterm_finishes_the_step_writes_last_pt_and_resumes_exactly(tmp_path):
    def trainer(name, **kw):
        t = make(tmp_path / name, Stripes(16), iterations=10, **kw)
        t.eval_cfg = EvalConfig(every_iters=4, batch_size=4)
        return t

    ref = trainer("ref")
    ref.fit()
    stopped = trainer("run")
    # the signal arrives after iteration 3: iteration 4 (an evaluation is due there) is finished, then last.pt
    stopped.register_hooks([AfterStep(lambda t, it, losses: it == 3 and os.kill(os.getpid(), signal.SIGTERM))])
    with pytest.raises(TrainingInterrupted) as err:
        stopped.fit()
    last = tmp_path / "run" / "run" / "last.pt"
    assert str(err.value) == f"SIGTERM received: stopped after iteration 4 of 10, {last} holds it; the same " \
        "command resumes from there"
    assert err.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler lived as long as fit()
    ckpt = load_checkpoint(last)
    assert ckpt["iteration"] == 4 and set(ckpt["pending"]) == {"row", "logged"}
    assert not (tmp_path / "run" / "run" / "eval.csv").exists()  # iteration 4's evaluation waits for the resume
    trainer("run").fit()
    a, b = load_checkpoint(tmp_path / "ref" / "run" / "last.pt"), load_checkpoint(last)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and "pending" not in b
    for name in ("log.csv", "eval.csv"):
        rows = [(tmp_path / d / "run" / name).read_text().splitlines() for d in ("ref", "run")]
        assert [r.rsplit(",", 1)[0] for r in rows[1]] == [r.rsplit(",", 1)[0] for r in rows[0]], name
